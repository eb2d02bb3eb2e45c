"""Network namespaces as pods: an LWS-style group on one machine (TESTING.md "Multi-node without nodes").

`PodNetwork` creates one namespace holding a bridge, and one namespace per pod joined to it by
a veth pair (the pod end is `eth0`, with one 10.x address). Each pod resolves every pod's LWS
FQDN through `/etc/netns/<ns>/hosts` (bind-mounted over /etc/hosts by `ip netns exec`), and
its processes run under `unshare --uts` with the pod's short hostname, as in Kubernetes.
Everything created (namespaces, hosts files, processes) is removed in `close()`, which is safe
to call after any partial setup. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_ETC = Path("/etc/netns")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Pod:
    """One 'pod': its namespace, short hostname, FQDN and address."""

    netns: str
    hostname: str
    fqdn: str
    address: str


@dataclass
class PodNetwork:
    """A bridge namespace plus pods named like one LWS group (`<lws>-<g>`, `<lws>-<g>-<i>`)."""

    lws: str = "mp"
    namespace: str = "test"
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}{random.randrange(100)}")
    pods: dict[str, Pod] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A random 10.x.y.0/24 (inside namespaces only) so concurrent runs do not share a subnet.
        self.subnet = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
        self.bridge_ns = f"mpbr{self.tag}"
        self._namespaces: list[str] = []

    # --- setup -----------------------------------------------------------------------------------

    def start(self, pod_names: list[str]) -> PodNetwork:
        """Create the bridge and the given pods (short names such as `mp-0`, `mp-0-1`)."""
        self._add_netns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for index, name in enumerate(pod_names):
            self.add_pod(name, index)
        for pod in self.pods.values():
            self._write_hosts(pod)
        return self

    def fqdn(self, short: str) -> str:
        """The LWS FQDN of a pod: `<pod>.<lws service>.<namespace>`."""
        return f"{short}.{self.lws}.{self.namespace}"

    def add_pod(self, name: str, index: int) -> Pod:
        netns = f"mp{self.tag}-{index}"
        self._add_netns(netns)
        host_end, pod_end = f"v{self.tag}a{index}", f"v{self.tag}b{index}"
        _ip("link", "add", host_end, "type", "veth", "peer", "name", pod_end)
        _ip("link", "set", host_end, "netns", self.bridge_ns)
        _ip("link", "set", pod_end, "netns", netns)
        _ip("-n", self.bridge_ns, "link", "set", host_end, "master", "br0", "up")
        _ip("-n", netns, "link", "set", pod_end, "name", "eth0")
        address = f"{self.subnet}.{index + 2}"
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        pod = Pod(netns=netns, hostname=name, fqdn=self.fqdn(name), address=address)
        self.pods[name] = pod
        return pod

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def _write_hosts(self, pod: Pod) -> None:
        # Like a pod's /etc/hosts: its own FQDN and short name; others only by FQDN (cluster DNS).
        lines = ["127.0.0.1 localhost", f"{pod.address} {pod.fqdn} {pod.hostname}"]
        lines += [f"{other.address} {other.fqdn}" for other in self.pods.values() if other is not pod]
        directory = NETNS_ETC / pod.netns
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    # --- processes -------------------------------------------------------------------------------

    def command(self, pod: str, argv: list[str]) -> list[str]:
        """argv that runs `argv` inside the pod's namespace with the pod's hostname."""
        target = self.pods[pod]
        return [
            "ip", "netns", "exec", target.netns,
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', target.hostname, *argv,
        ]  # fmt: skip

    def spawn(self, pod: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start `argv` in the pod (its own process group, so it can be stopped as a unit)."""
        process = subprocess.Popen(self.command(pod, argv), start_new_session=True, **popen)
        self.processes.append(process)
        return process

    def run(self, pod: str, argv: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` in the pod to completion."""
        return subprocess.run(self.command(pod, argv), timeout=timeout, check=False, **kwargs)

    # --- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process started here, delete namespaces and hosts files. Idempotent."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        # Anything still inside our namespaces was started by us (daemonised children).
        for netns in self._namespaces:
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        time.sleep(0.1)
        for netns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
            shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
        self._namespaces.clear()
        self.processes.clear()

    def __enter__(self) -> PodNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inspection ------------------------------------------------------------------------------

    def pids(self, pod: str) -> list[int]:
        """Processes running inside the pod's namespace."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.pods[pod].netns], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def find_title(self, pod: str, text: str) -> list[int]:
        """Pids in the pod whose command line contains `text` (for retitled processes like sshd)."""
        found = []
        for pid in self.pids(pod):
            with contextlib.suppress(OSError):
                if text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(pid)
        return found

    def find(self, pod: str, *markers: str) -> list[int]:
        """Pids in the pod whose argv contains every marker (argv[0] compared by basename too)."""
        found = []
        for pid in self.pids(pod):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            words = {*argv, *(Path(a).name for a in argv[:1])}
            if all(marker in words for marker in markers):
                found.append(pid)
        return found


# --- a streaming client, run inside a namespace: python -m tests.support.netns stream URL TEXT N ---


def stream_generate(url: str, text: str, max_tokens: int, timeout: float = 60.0) -> None:
    """POST to Triton's generate_stream (SSE) and print one JSON line per event, then a final line."""
    import json
    import urllib.request

    body = json.dumps(
        {"text_input": text, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    ).encode()
    request = urllib.request.Request(
        f"http://{url}/v2/models/ensemble/generate_stream",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    print(json.dumps({"t": time.time(), **event}), flush=True)
    except Exception as exc:  # report any failure as data for the test to assert on
        print(json.dumps({"t": time.time(), "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({"t": time.time(), "done": True}), flush=True)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 5 or sys.argv[1] != "stream":
        sys.exit("usage: python -m tests.support.netns stream HOST:PORT TEXT MAX_TOKENS")
    stream_generate(sys.argv[2], sys.argv[3], int(sys.argv[4]))
