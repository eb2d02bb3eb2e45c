"""One LeaderWorkerSet group on this machine: `start_group` / `stop_group`.

Each "pod" of the group runs the real launcher (`python -m steps.launcher leader|worker`) with the
chart's flags and LWS's environment. Isolation `netns`: every pod is a network namespace with
its LWS hostname and FQDN (steps.localgroup.netns), workers run sshd, the leader's mpirun reaches
them over ssh, and the host reaches the leader's address through its own veth on the bridge.
Isolation `processes` (no root, or namespaces refused, or asked for): the pods are plain local
processes; workers' sshd listen on 127.0.0.1 on free ports, the leader runs every rank on this
host (`--colocated-ssh-ports`) and rank 0 binds 127.0.0.1. Which one ran is logged and recorded.

State (RUN_DIR/deploy/<release>/state.json) lists everything started or created, so `stop_group`
works from another process (the teardown task) and is idempotent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from steps.localgroup.keys import write_release_keys
from steps.localgroup.launch import leader_args, lws_env, replace_option, worker_args
from steps.localgroup.netns import NetnsUnavailable, PodNetwork, remove_resources
from steps.tritonenv import REPO_ROOT
from workflows.chart_values import chart_values, release_fullname
from workflows.spec import Spec

log = logging.getLogger("megapod.localgroup")

ISOLATION_VAR = "MEGAPOD_LOCAL_ISOLATION"  # auto (default) | netns | processes
NETNS, PROCESSES, AUTO = "netns", "processes", "auto"
MARKER_VAR = "MEGAPOD_LOCAL_GROUP"  # inherited by every process of the group: finds strays
STATE_FILE, STOPPED_STATE_FILE = "state.json", "state.stopped.json"
LOOPBACK = "127.0.0.1"
READY_POLL_S = 0.5
STOP_MARGIN_S = 10.0  # beyond the grace period: the launcher's own mpirun stop and exit
LOG_TAIL_LINES = 5
TAG = re.compile(r"\[\d+,\d+\]<std(?:out|err)>:")  # mpirun --tag-output prefixes
ERROR_LINE = re.compile(r"^E\d{4} |\berror\b", re.IGNORECASE)
# Errors every CPU-only tritonserver logs at start (no GPU driver): never the reason it failed.
CPU_NOISE = re.compile(r"CUDA|NVML|DCGM|CudaDriverHelper")
VOLUMES_DIR = "volumes"  # the local executor's RUN_DIR/volumes/<claimName>/

# Popen objects of processes started by this interpreter, so they are reaped (not zombies).
_children: dict[int, subprocess.Popen] = {}


class LocalGroupError(RuntimeError):
    """The local group could not be started; the message says why (with the pods' last log lines)."""


@dataclass
class PodProcess:
    """One launcher process: the pod it stands for, its role, pid (= process group) and identity."""

    pod: str
    role: str
    pid: int
    start_time: str
    log: str


@dataclass
class GroupInfo:
    """What a started group offers and where its state lives."""

    release: str
    isolation: str
    endpoint: str
    grpc_endpoint: str
    metrics_endpoint: str
    leader_fqdn: str
    state_file: Path
    processes: list[PodProcess] = field(default_factory=list)


def group_dir(run_dir: Path, release: str) -> Path:
    """Where one release's keys, logs and state live inside the run folder."""
    return Path(run_dir) / "deploy" / release


def pod_names(lws: str, size: int, group_index: int = 0) -> list[str]:
    """LWS pod names of one group: leader `<lws>-<g>`, workers `<lws>-<g>-<i>`."""
    leader = f"{lws}-{group_index}"
    return [leader, *(f"{leader}-{index}" for index in range(1, size))]


def pod_volume_path(values: dict, path: Path, run_dir: Path) -> Path:
    """Where a path the pods see on the model volume lives locally.

    The chart mounts PVC `model.volumeClaim` at `model.mountPath` in every pod; the local executor
    keeps each claim at RUN_DIR/volumes/<claim>/ (workflows/local/engine.py). Paths elsewhere, or
    without that folder, are returned unchanged.
    """
    model = values["model"]
    local_volume = Path(run_dir) / VOLUMES_DIR / str(model["volumeClaim"])
    mount = PurePosixPath(str(model["mountPath"]))
    if not local_volume.is_dir() or not PurePosixPath(str(path)).is_relative_to(mount):
        return Path(path)
    return local_volume / PurePosixPath(str(path)).relative_to(mount)


def requested_isolation(isolation: str | None) -> str:
    """`isolation` or $MEGAPOD_LOCAL_ISOLATION or auto; ValueError naming the valid values."""
    value = (isolation or os.environ.get(ISOLATION_VAR) or AUTO).strip().lower()
    if value not in (AUTO, NETNS, PROCESSES):
        raise ValueError(f"isolation {value!r} is not one of {AUTO}, {NETNS}, {PROCESSES} (${ISOLATION_VAR})")
    return value


# --- processes -----------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (None if gone or a zombie): guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(process: PodProcess) -> bool:
    child = _children.get(process.pid)
    if child is not None and child.poll() is not None:
        return False
    return _start_time(process.pid) == process.start_time


def _marked_pids(token: str) -> list[int]:
    """Every process carrying this group's marker in its environment (strays after a crash)."""
    needle = f"{MARKER_VAR}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _children[process.pid] = process
    return process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0


# --- state ---------------------------------------------------------------------------------------


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)


def read_state(run_dir: Path, release: str) -> dict | None:
    """The running group's state, or None when none was started (or it was stopped)."""
    path = group_dir(run_dir, release) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


# --- start ---------------------------------------------------------------------------------------


def _http_ready(endpoint: str) -> bool:
    # No proxy: the leader is on loopback or on our own bridge, never behind $http_proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{endpoint}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: str) -> str:
    """Why a pod failed, on one line: its error lines (Triton's E-lines too), then its last lines."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    # mpirun can interleave two ranks' output on one physical line: split at every rank tag.
    lines = [piece.strip() for line in text.splitlines() for piece in TAG.split(line)]
    telling = [line for line in lines if line and not line.startswith(("|", "+", "-"))]
    errors = [line for line in telling if ERROR_LINE.search(line) and not CPU_NOISE.search(line)]
    errors = errors[-LOG_TAIL_LINES:]
    last = [line for line in telling[-LOG_TAIL_LINES:] if line not in errors]
    return " | ".join([*errors, *last])


def _open_network(lws: str, spec: Spec, names: list[str], wanted: str) -> PodNetwork | None:
    """The pods' namespaces, or None for plain processes (logged clearly, with the reason)."""
    if wanted == PROCESSES:
        log.info("[isolation] processes (asked for): the pods run as plain local processes on %s", LOOPBACK)
        return None
    network = PodNetwork(lws=lws, namespace=spec.cluster.namespace)
    try:
        network.start(names, host_access=True)
    except NetnsUnavailable as exc:
        if wanted == NETNS:
            raise LocalGroupError(f"network namespaces were asked for but are unavailable: {exc}") from None
        log.warning(
            "[isolation] processes: network namespaces unavailable (%s); the pods run as plain local "
            "processes on %s and mpirun starts every rank on this host",
            exc,
            LOOPBACK,
        )
        return None
    log.info(
        "[isolation] netns: pods %s in %s.0/24, the host reaches them via %s (%s)",
        ", ".join(f"{p.hostname}={p.address}" for p in network.pods.values()),
        network.subnet,
        network.host_veth,
        network.host_address,
    )
    return network


def start_group(
    spec: Spec,
    repository: Path,
    run_dir: Path,
    release: str,
    *,
    isolation: str | None = None,
    timeout_s: float | None = None,
) -> GroupInfo:
    """Start group 0 of `release` (leader + workers running the launcher) and wait until it serves.

    `isolation`: auto (namespaces if allowed, else plain processes), netns or processes; default
    from $MEGAPOD_LOCAL_ISOLATION. Raises LocalGroupError (everything started is stopped again).
    """
    wanted = requested_isolation(isolation)
    repository = Path(repository).resolve()
    if not (repository / "ensemble" / "config.pbtxt").is_file():
        raise LocalGroupError(f"{repository} is not a Triton model repository with an ensemble model")
    directory = group_dir(run_dir, release)
    previous = read_state(run_dir, release)
    if previous is not None:
        if any(_alive(PodProcess(**p)) for p in previous["processes"]):
            raise LocalGroupError(f"{directory / STATE_FILE} names a running group; stop it first (teardown)")
        stop_group(run_dir, release)  # leftovers of a crashed run
    directory.mkdir(parents=True, exist_ok=True)
    values = chart_values(spec)
    values["model"]["repository"] = str(repository)
    lws = release_fullname(release)
    names = pod_names(lws, spec.group_size)
    keys = write_release_keys(directory / "ssh")
    network = _open_network(lws, spec, names, wanted)
    state = {
        "release": release,
        "isolation": NETNS if network else PROCESSES,
        "token": secrets.token_hex(8),
        "lws": lws,
        "pods": names,
        "grace_s": float(values["launcher"]["terminationGracePeriodSeconds"]),
        "network": network.resources() if network else None,
        "processes": [],
    }
    state_path = directory / STATE_FILE
    _write_state(state_path, state)
    try:
        info = _launch(spec, values, keys, network, state, state_path, directory)
        _wait_ready(info, state, timeout_s or float(spec.serving.startup_timeout_s))
    except BaseException:
        stop_group(run_dir, release, grace_s=0)
        raise
    return info


def _launch(
    spec: Spec,
    values: dict,
    keys: dict[str, Path],
    network: PodNetwork | None,
    state: dict,
    state_path: Path,
    directory: Path,
) -> GroupInfo:
    """Start the workers, then the leader; record each process in the state file as it starts."""
    names = state["pods"]
    leader_fqdn = f"{names[0]}.{state['lws']}.{spec.cluster.namespace}"
    runtime = directory / "runtime"
    runtime.mkdir(exist_ok=True)
    ports = values["ports"]
    if network is None:
        for port in (ports["http"], ports["grpc"], ports["metrics"]):
            if _port_taken(port):
                raise LocalGroupError(
                    f"port {port} on {LOOPBACK} is in use; the leader needs it (spec ports)"
                )
    worker_ports = [_free_port() for _ in names[1:]]
    extra = ["--runtime-dir", str(runtime)]
    commands = []
    for index, name in enumerate(names[1:], start=1):
        args = [*worker_args(values, keys), *extra]
        if network is None:
            args = [
                *replace_option(args, "--ssh-port", str(worker_ports[index - 1])),
                "--listen-address",
                LOOPBACK,
            ]
        commands.append((name, "worker", index, args))
    leader = [*leader_args(values, keys), *extra]
    if network is None:
        leader += ["--colocated-ssh-ports", ",".join(map(str, worker_ports))]
    commands.append((names[0], "leader", 0, leader))
    python = [sys.executable, "-m", "steps.launcher"]
    for name, role, index, args in commands:
        env = {**os.environ, **lws_env(leader_fqdn, len(names), index), MARKER_VAR: state["token"]}
        argv = network.command(name, [*python, *args]) if network else [*python, *args]
        log_path = directory / f"{name}.log"
        process = _spawn(argv, env, log_path)
        started = _start_time(process.pid) or ""
        state["processes"].append(asdict(PodProcess(name, role, process.pid, started, str(log_path))))
        _write_state(state_path, state)
        log.info("[start] %s %s: pid %d, log %s", role, name, process.pid, log_path)
    host = network.pods[names[0]].address if network else LOOPBACK
    info = GroupInfo(
        release=state["release"],
        isolation=state["isolation"],
        endpoint=f"{host}:{ports['http']}",
        grpc_endpoint=f"{host}:{ports['grpc']}",
        metrics_endpoint=f"{host}:{ports['metrics']}",
        leader_fqdn=leader_fqdn,
        state_file=state_path,
        processes=[PodProcess(**p) for p in state["processes"]],
    )
    state.update(
        endpoint=info.endpoint, grpc_endpoint=info.grpc_endpoint, metrics_endpoint=info.metrics_endpoint
    )
    _write_state(state_path, state)
    return info


def _wait_ready(info: GroupInfo, state: dict, timeout_s: float) -> None:
    """Poll the leader's /v2/health/ready (through the host veth in netns mode); fail fast on exits."""
    started = time.monotonic()
    log.info("[ready] waiting up to %.0fs for %s/v2/health/ready", timeout_s, info.endpoint)
    while not _http_ready(info.endpoint):
        dead = [p for p in info.processes if not _alive(p)]
        elapsed = time.monotonic() - started
        if dead or elapsed >= timeout_s:
            what = f"{', '.join(f'{p.role} {p.pod}' for p in dead)} exited" if dead else "not ready"
            # the leader's log says why (mpirun, rank 0); a dead worker's own log says why it died
            telling = [p for p in info.processes if p.role == "leader" or p in dead]
            tails = "; ".join(f"{p.pod}: {_tail(p.log)}" for p in telling)
            raise LocalGroupError(f"local group {what} after {elapsed:.0f}s ({state['isolation']}): {tails}")
        time.sleep(READY_POLL_S)
    log.info("[ready] %s serves at %s (isolation %s)", info.leader_fqdn, info.endpoint, info.isolation)


# --- stop ----------------------------------------------------------------------------------------


def _wait_gone(processes: list[PodProcess], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in processes):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(process: PodProcess, sig: int) -> None:
    if _alive(process):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _kill_leftovers(processes: list[PodProcess], token: str) -> int:
    """SIGKILL the recorded process groups and anything else carrying the group's marker."""
    killed = 0
    for process in processes:
        if _alive(process):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
                killed += 1
    for pid in _marked_pids(token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def stop_group(run_dir: Path, release: str, grace_s: float | None = None) -> bool:
    """Stop the group like LWS deleting it: SIGTERM the leader (drain), then workers, kill the rest.

    Waits up to `grace_s` (default: the state's grace period) plus a margin per role, then SIGKILLs
    leftovers and removes the namespaces. Returns True if anything was running. Idempotent.
    """
    state = read_state(run_dir, release)
    if state is None:
        return False
    processes = [PodProcess(**p) for p in state["processes"]]
    running = any(_alive(p) for p in processes)
    grace = state.get("grace_s", 30.0) if grace_s is None else grace_s
    leaders = [p for p in processes if p.role == "leader"]
    workers = [p for p in processes if p.role != "leader"]
    for group, what in ((leaders, "leader drains"), (workers, "workers stop")):
        for process in group:
            _signal(process, signal.SIGTERM)
        if any(_alive(p) for p in group):
            log.info("[stop] SIGTERM: %s (up to %.0fs)", what, grace + STOP_MARGIN_S)
            _wait_gone(group, grace + STOP_MARGIN_S if grace else 1.0)
    killed = _kill_leftovers(processes, state["token"])
    if killed:
        log.warning("[stop] killed %d leftover processes", killed)
    if state.get("network"):
        remove_resources(state["network"])
    for process in processes:
        child = _children.pop(process.pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
    directory = group_dir(run_dir, release)
    (directory / STATE_FILE).replace(directory / STOPPED_STATE_FILE)
    log.info("[stop] %s stopped (%s)", release, state["isolation"])
    return running
