"""Run processes that listen on every interface inside a network namespace of ours.

Argo's server and workflow-controller bind `:port` (server/apiserver/argoserver.go,
cmd/workflow-controller/main.go at v4.0.5: no bind-address option), which would expose them
beyond 127.0.0.1. They run instead in a namespace that has only a loopback interface
(`unshare --net --user --map-root-user`: no root needed, nothing to clean up, it ends with its
last process). Unix sockets under the cluster folder (a filesystem both namespaces share) join
the two loopbacks, one TCP port at a time:

  python3 relay.py host SPEC    in the host namespace: the host-side ends
  python3 relay.py netns SPEC   in the new namespace: lo up, namespace-side ends, the processes

SPEC (JSON): {"inbound": [LINK], "outbound": [LINK], "processes": [{"argv", "env", "log", "pidfile"}]}
with LINK = {"host": port, "netns": port, "socket": path}. `inbound` ports are served by a process
in the namespace and reached from the host; `outbound` ones are served on the host and reached
from the namespace (the apiserver). Ports are on 127.0.0.1 of each side.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# Argo v4.0.5 swallows SIGTERM and SIGINT (util/logging/init.go initSignalHandlers notifies a
# channel and never exits), so its processes end only by SIGKILL, as the kubelet's grace period
# ends them in a pod: keep that wait short.
STOP_TIMEOUT_S = 3.0


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), None when it is gone or a
    zombie (exited, not yet reaped by its parent).

    A pid file holds "pid start-time", so a stop never signals a recycled pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def write_pidfile(path: Path, pid: int) -> None:
    """Record `pid` with its start time."""
    path.write_text(f"{pid} {start_time(pid)}\n")


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (sink, source):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


def _join(client: socket.socket, connect) -> None:
    try:
        upstream = connect()
    except OSError:
        client.close()
        return
    threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()


def _serve(listener: socket.socket, connect) -> None:
    while True:
        client, _ = listener.accept()
        _join(client, connect)


def _tcp_listener(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    return listener


def _unix_listener(path: str) -> socket.socket:
    Path(path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    return listener


def _tcp_connect(port: int):
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=10)


def _unix_connect(path: str):
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock

    return connect


def _start(listener: socket.socket, connect) -> None:
    threading.Thread(target=_serve, args=(listener, connect), daemon=True).start()


def _stop_requested() -> threading.Event:
    """An event set by SIGTERM/SIGINT (handlers, not a blocked mask: children would inherit it)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def run_host(spec: dict) -> None:
    """Host side: TCP 127.0.0.1:port -> socket (inbound), socket -> TCP 127.0.0.1:port (outbound)."""
    stop = _stop_requested()
    for link in spec["inbound"]:
        _start(_tcp_listener(link["host"]), _unix_connect(link["socket"]))
    for link in spec["outbound"]:
        _start(_unix_listener(link["socket"]), _tcp_connect(link["host"]))
    stop.wait()


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_netns(spec: dict) -> None:
    """Namespace side: bring lo up, serve both directions, run the processes until SIGTERM."""
    stop = _stop_requested()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for link in spec["inbound"]:
        _start(_unix_listener(link["socket"]), _tcp_connect(link["netns"]))
    for link in spec["outbound"]:
        _start(_tcp_listener(link["netns"]), _unix_connect(link["socket"]))
    children = []
    for process in spec["processes"]:
        with open(process["log"], "ab") as log:
            child = subprocess.Popen(
                process["argv"],
                env={**os.environ, **process["env"]},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        write_pidfile(Path(process["pidfile"]), child.pid)
        children.append(child)
    # Stop on a signal, or when any process ends (the cluster's health checks then name it).
    while not stop.wait(0.5) and all(child.poll() is None for child in children):
        pass
    _stop(children)


def main(argv: list[str]) -> None:
    """Entry point: `relay.py host|netns SPEC`."""
    if len(argv) != 2 or argv[0] not in ("host", "netns"):
        sys.exit("usage: relay.py host|netns SPEC.json")
    spec = json.loads(Path(argv[1]).read_text())
    (run_host if argv[0] == "host" else run_netns)(spec)


if __name__ == "__main__":
    main(sys.argv[1:])
