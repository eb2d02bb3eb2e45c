"""The gang barrier: wait until every worker's sshd answers, with fast backoff and a deadline.

The reference polled the API server every 2 s with no deadline and counted Running (not
ready) pods. Here each worker is probed directly the way mpirun will reach it (DNS, TCP to the
ssh port, the SSH banner), all workers at once, backing off from 50 ms to 500 ms, so the barrier
completes within one backoff step of the last sshd accepting.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

FIRST_DELAY_S = 0.05
MAX_DELAY_S = 0.5
CONNECT_TIMEOUT_S = 1.0
SSH_BANNER = b"SSH-"

# A probe returns None when the host is ready, else why not (for the error naming it).
Probe = Callable[[str], str | None]


@dataclass
class BarrierResult:
    """Outcome of the barrier: workers ready, and for each missing worker the last reason."""

    ready: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing and not self.stopped

    def describe_missing(self) -> str:
        """One line naming every missing worker and why it is not reachable."""
        return "; ".join(f"{host} ({reason})" for host, reason in sorted(self.missing.items()))


def backoff_delays(first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S):
    """Delays between probes of one host: doubling from `first`, capped at `cap`."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def ssh_probe(port: int, timeout: float = CONNECT_TIMEOUT_S) -> Probe:
    """A probe that resolves the host, connects to `port` and reads an SSH banner."""

    def probe(host: str) -> str | None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return f"does not resolve: {exc.strerror}"
        reason = "no address"
        for family, kind, proto, _, address in infos:
            try:
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(timeout)
                    sock.connect(address)
                    banner = sock.recv(len(SSH_BANNER))
            except OSError as exc:
                reason = f"{address[0]}:{port} {exc.strerror or type(exc).__name__}"
                continue
            if banner.startswith(SSH_BANNER):
                return None
            reason = f"{address[0]}:{port} answered without an SSH banner"
        return reason

    return probe


LOOPBACK = "127.0.0.1"


def colocated_probe(ports: Mapping[str, int], timeout: float = CONNECT_TIMEOUT_S) -> Probe:
    """For pods sharing this host (no pod network): each worker's sshd on loopback at its own port."""

    def probe(host: str) -> str | None:
        return ssh_probe(ports[host], timeout)(LOOPBACK)

    return probe


def _wait_for_host(
    host: str,
    probe: Probe,
    deadline: float,
    stop: threading.Event,
    result: BarrierResult,
    lock: threading.Lock,
    clock: Callable[[], float],
) -> None:
    reason = "not probed yet"
    for delay in backoff_delays():
        reason = probe(host) or ""
        if not reason:
            with lock:
                result.ready.append(host)
                result.missing.pop(host, None)
            return
        with lock:
            result.missing[host] = reason
        remaining = deadline - clock()
        if remaining <= 0 or stop.wait(min(delay, remaining)):
            return


def wait_for_workers(
    hosts: list[str],
    probe: Probe,
    timeout: float,
    *,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BarrierResult:
    """Probe every host in parallel until all are ready, `timeout` passes, or `stop` is set."""
    stop = stop or threading.Event()
    result = BarrierResult(missing=dict.fromkeys(hosts, "not probed yet"))
    lock = threading.Lock()
    deadline = clock() + timeout
    threads = [
        threading.Thread(
            target=_wait_for_host,
            args=(host, probe, deadline, stop, result, lock, clock),
            name=f"barrier-{host}",
            daemon=True,
        )
        for host in hosts
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.stopped = stop.is_set() and bool(result.missing)
    return result
