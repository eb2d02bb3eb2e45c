"""Start and stop a real tritonserver for tests: loopback only, free ports, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from steps.tritonenv import find_tritonserver, stub_environment, tritonserver_args

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
PORT_ATTEMPTS = 3


class TritonStartError(RuntimeError):
    """tritonserver exited or never became ready; the message ends with the server log's tail."""


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class TritonProcess:
    """A running tritonserver started by start_triton()."""

    process: subprocess.Popen
    repository: Path
    log_path: Path
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with {self.process.returncode}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TritonStartError(f"tritonserver not ready after {timeout:.0f}s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server (it drains for --exit-timeout-secs), SIGKILL its process group if it hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # The server was started in its own session, so its group holds only it and its stubs.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)


def _launch(repository: Path, tmp_dir: Path, extra: tuple[str, ...]) -> TritonProcess:
    ports = [free_port() for _ in range(3)]
    log_path = Path(tmp_dir) / f"tritonserver-{ports[0]}.log"
    install = find_tritonserver()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            tritonserver_args(repository, *ports, extra=extra, install=install),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=stub_environment(install),
            cwd=tmp_dir,
            start_new_session=True,
        )
    return TritonProcess(process, Path(repository), log_path, *ports)


def start_triton(repository: Path, tmp_dir: Path, *, extra: tuple[str, ...] = ()) -> TritonProcess:
    """Start tritonserver on `repository` (ports on 127.0.0.1) and wait until /v2/health/ready.

    Retries with new ports when another process grabbed one between choosing and binding it.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server = _launch(repository, tmp_dir, extra)
        try:
            server.wait_ready()
            return server
        except TritonStartError:
            server.stop()
            if attempt == PORT_ATTEMPTS or "already in use" not in server.log_tail(200):
                raise
    raise AssertionError("unreachable")
