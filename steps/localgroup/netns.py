"""Network namespaces as pods: an LWS-style group on one machine (TESTING.md "Multi-node without nodes").

`PodNetwork` creates one namespace holding a bridge, and one namespace per pod joined to it by
a veth pair (the pod end is `eth0`, with one address in a random 10.x.y.0/24). Each pod resolves
every pod's LWS FQDN through `/etc/netns/<ns>/hosts` (bind-mounted over /etc/hosts by
`ip netns exec`), and its processes run under `unshare --uts` with the pod's short hostname, as
in Kubernetes. With `host_access`, one more veth joins the host to the bridge (address `.1`), so
host processes (load generator, benchmark, Prometheus) reach the pods like a node reaches pod IPs.

Everything created is listed in `resources()` (plain data, for a state file), and
`remove_resources()` deletes exactly that — idempotent, safe after any partial setup, and usable
from another process than the one that created it. Needs root (`NetnsUnavailable` otherwise).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
BRIDGE = "br0"
POD_INTERFACE = "eth0"
HOST_OFFSET = 1  # the host's address on the bridge: <subnet>.1
FIRST_POD_OFFSET = 2  # pods get <subnet>.2, .3, ...
SUBNET_ATTEMPTS = 50


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be created here (not root, or `ip netns add` refused)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["ip", *args], result.stdout, result.stderr)


def _host_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host already routes (so a new subnet does not shadow any of them)."""
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    networks = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        if word[:1].isdigit():
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.ip_network(word, strict=False))
    return networks


def pick_subnet(rng: random.Random | None = None) -> str:
    """A random 10.x.y (a /24) that overlaps no route of the host; concurrent runs rarely collide."""
    rng = rng or random.Random()
    taken = _host_networks()
    for _ in range(SUBNET_ATTEMPTS):
        prefix = f"10.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}"
        candidate = ipaddress.ip_network(f"{prefix}.0/24")
        if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
            return prefix
    raise NetnsUnavailable(f"no free 10.x.y.0/24 found in {SUBNET_ATTEMPTS} tries (host routes cover them)")


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
    subnet: str = ""
    host_veth: str | None = None
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"mpbr{self.tag}"

    @property
    def host_address(self) -> str:
        """The host's address on the bridge (only with host access)."""
        return f"{self.subnet}.{HOST_OFFSET}"

    # --- setup -----------------------------------------------------------------------------------

    def start(self, pod_names: list[str], *, host_access: bool = False) -> PodNetwork:
        """Create the bridge and the given pods (short names such as `mp-0`, `mp-0-1`).

        Raises NetnsUnavailable (nothing left behind) when the first namespace cannot be created.
        """
        if os.geteuid() != 0:
            raise NetnsUnavailable(f"network namespaces need root (running as uid {os.geteuid()})")
        self.subnet = self.subnet or pick_subnet()
        try:
            self._add_netns(self.bridge_ns)
        except subprocess.CalledProcessError as exc:
            raise NetnsUnavailable(f"`ip netns add` failed: {(exc.stderr or '').strip()}") from None
        try:
            _ip("-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", BRIDGE, "up")
            for index, name in enumerate(pod_names):
                self.add_pod(name, index)
            for pod in self.pods.values():
                self._write_hosts(pod)
            if host_access:
                self._add_host_veth()
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NetnsUnavailable(f"`{' '.join(exc.cmd)}` failed: {(exc.stderr or '').strip()}") from None
        except BaseException:
            self.close()
            raise
        return self

    def fqdn(self, short: str) -> str:
        """The LWS FQDN of a pod: `<pod>.<lws service>.<namespace>`."""
        return f"{short}.{self.lws}.{self.namespace}"

    def _join_bridge(self, bridge_end: str) -> None:
        _ip("link", "set", bridge_end, "netns", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", bridge_end, "master", BRIDGE, "up")

    def add_pod(self, name: str, index: int) -> Pod:
        """One pod namespace with `eth0` on the bridge and the next address."""
        netns = f"mp{self.tag}-{index}"
        self._add_netns(netns)
        bridge_end, pod_end = f"v{self.tag}a{index}", f"v{self.tag}b{index}"
        _ip("link", "add", bridge_end, "type", "veth", "peer", "name", pod_end)
        _ip("link", "set", pod_end, "netns", netns)
        self._join_bridge(bridge_end)
        _ip("-n", netns, "link", "set", pod_end, "name", POD_INTERFACE)
        address = f"{self.subnet}.{index + FIRST_POD_OFFSET}"
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", POD_INTERFACE)
        _ip("-n", netns, "link", "set", POD_INTERFACE, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        pod = Pod(netns=netns, hostname=name, fqdn=self.fqdn(name), address=address)
        self.pods[name] = pod
        return pod

    def _add_host_veth(self) -> None:
        """The host's leg on the bridge, so host processes reach pod addresses directly."""
        host_end, bridge_end = f"v{self.tag}h", f"v{self.tag}H"
        _ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
        self.host_veth = host_end  # recorded before anything else can fail
        self._join_bridge(bridge_end)
        _ip("addr", "add", f"{self.host_address}/24", "dev", host_end)
        _ip("link", "set", host_end, "up")

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)

    def _write_hosts(self, pod: Pod) -> None:
        # Like a pod's /etc/hosts: its own FQDN and short name; others only by FQDN (cluster DNS).
        lines = ["127.0.0.1 localhost", f"{pod.address} {pod.fqdn} {pod.hostname}"]
        lines += [f"{other.address} {other.fqdn}" for other in self.pods.values() if other is not pod]
        directory = NETNS_ETC / pod.netns
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    # --- processes -------------------------------------------------------------------------------

    def command(self, pod: str, argv: list[str]) -> list[str]:
        """argv that runs `argv` inside the pod's namespace with the pod's hostname.

        `ip netns exec` and `unshare` (without --fork) exec, so the started pid is argv's own.
        """
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

    # --- state and teardown ----------------------------------------------------------------------

    def resources(self) -> dict:
        """Everything created, as plain data (JSON-able) for `remove_resources` in any process."""
        return {
            "subnet": self.subnet,
            "bridge_namespace": self.bridge_ns,
            "namespaces": list(self.namespaces),
            "host_veth": self.host_veth,
            "host_address": self.host_address if self.host_veth else None,
            "pods": {name: asdict(pod) for name, pod in self.pods.items()},
        }

    def close(self) -> None:
        """Stop every process started here, delete namespaces, hosts files and the host veth. Idempotent."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        remove_resources(self.resources())
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.namespaces.clear()
        self.processes.clear()
        self.host_veth = None

    def __enter__(self) -> PodNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inspection ------------------------------------------------------------------------------

    def pids(self, pod: str) -> list[int]:
        """Processes running inside the pod's namespace."""
        return namespace_pids(self.pods[pod].netns)

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


def namespace_pids(netns: str) -> list[int]:
    """Processes whose network namespace is `netns` (empty if it does not exist)."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def existing_namespaces() -> set[str]:
    """Names of the network namespaces `ip netns` knows."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def remove_resources(resources: dict) -> None:
    """Kill what still runs in the listed namespaces, delete them, their hosts files and the host veth.

    Idempotent: anything already gone is skipped. Only names listed in `resources` are touched.
    """
    namespaces = resources.get("namespaces") or []
    # Anything still inside our namespaces was started by us (daemonised children included).
    for netns in namespaces:
        for pid in namespace_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if any(namespace_pids(netns) for netns in namespaces):
        time.sleep(0.1)
    for netns in reversed(namespaces):
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
    # Deleting the bridge namespace destroys the veth's peer and so the host end; this covers a
    # host veth whose peer never made it into the bridge namespace.
    if resources.get("host_veth"):
        subprocess.run(["ip", "link", "del", resources["host_veth"]], capture_output=True)
