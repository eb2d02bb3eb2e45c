"""CLI: `python -m steps.launcher worker ...` and `python -m steps.launcher leader ...`.

Exit codes: 0 after a SIGTERM shutdown; 1 when the group cannot serve (barrier deadline, a rank
or mpirun exiting, sshd dying, a failed start check); 2 for bad arguments or environment.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from steps.launcher import checks, sshd
from steps.launcher.barrier import LOOPBACK, Probe, colocated_probe, ssh_probe, wait_for_workers
from steps.launcher.command import LLMAPI_LAUNCH, LaunchPlan, Ports, mpirun_command
from steps.launcher.group import Group, GroupError, group_from_env
from steps.launcher.supervise import (
    Signals,
    descendants,
    drain_budget,
    find_process,
    reap,
    set_subreaper,
    signal_tree,
    wait_until,
)
from workflows.spec import Backend

log = logging.getLogger("launcher")
SSH_DIR = Path("/etc/megapod/ssh")  # where the chart mounts the release's SSH Secret
DEFAULT_SSH_PORT = 2222
RANK0_MARKER = "--id=rank0"  # rank 0's tritonserver, see command.server_args
SERVER_PROGRAM = "tritonserver"
MPIRUN_STOP_S = 5.0  # after the drain: how long mpirun gets to stop the ranks before SIGKILL


def _phase(name: str, message: str) -> None:
    log.info("[%s] %s", name, message)


def _user() -> str:
    """The container's user name; ssh and sshd both need the uid in /etc/passwd."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise sshd.SshSetupError(
            f"uid {os.getuid()} has no /etc/passwd entry; ssh and sshd need one "
            "(run as a user the image defines, e.g. triton-server = 1000 in the NGC Triton images)"
        ) from None


# --- worker --------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run sshd in the foreground; exit 1 if it dies, drain and exit 0 on SIGTERM."""
    set_subreaper()
    signals = Signals()
    user = _user()
    runtime = sshd.make_runtime_dir(args.runtime_dir)
    config = sshd.prepare_worker(
        args.host_key, args.authorized_keys, runtime, args.ssh_port, user, env, args.listen_address
    )
    _phase(
        "sshd", f"starting {args.sshd} on port {args.ssh_port} for user {user} (keys: {args.authorized_keys})"
    )
    server = subprocess.Popen([args.sshd, "-D", "-e", "-f", str(config)])
    while not signals.stop.is_set():
        exited = reap()
        if server.pid in exited:
            _phase("sshd", f"sshd exited with {exited[server.pid]}; the worker cannot take ranks, exiting")
            signal_tree(os.getpid(), signal.SIGKILL, include_root=False)
            return 1
        signals.wait(5.0)
    budget = drain_budget(args.grace_period)
    _phase("stopping", f"SIGTERM: closing the ssh listener; running ranks get {budget:.0f}s to be stopped")
    server.send_signal(signal.SIGTERM)
    me = os.getpid()
    if not wait_until(lambda: not descendants(me), time.monotonic() + budget, signals):
        left = signal_tree(me, signal.SIGKILL, include_root=False)
        _phase("stopping", f"grace over: killed {len(left)} leftover processes")
    _phase("stopped", "worker done")
    return 0


# --- leader --------------------------------------------------------------------------------------


ServerRuntime = tuple[str, dict[str, str], tuple[str, ...]]  # tritonserver, rank env, extra args


def server_runtime(args: argparse.Namespace) -> ServerRuntime | str:
    """What the ranks run, or why it cannot run (checked before the barrier, not after)."""
    if args.backend == Backend.CPU_PYTHON:
        from steps import tritonenv  # the local profile's CPU tritonserver and its stub environment

        try:
            install = tritonenv.find_tritonserver()
        except tritonenv.TritonNotFound as exc:
            return str(exc)
        env = tritonenv.stub_environment(install, base={})
        return str(install.binary), env, (f"--backend-directory={install.backend_dir}",)
    wanted = [args.tritonserver, *([LLMAPI_LAUNCH] if args.backend == Backend.TRTLLM_PYTORCH else [])]
    missing = [program for program in wanted if not shutil.which(program)]
    if missing:
        return f"{' and '.join(missing)} not found (is this the megapod serving image?)"
    return args.tritonserver, {}, ()


def start_checks(args: argparse.Namespace, lws_size: int) -> list[str]:
    """Every start check for this backend; problems as lines."""
    problems = checks.check_world(lws_size, args.gpus_per_node, args.world_size)
    colocated = args.colocated_ssh_ports
    if colocated is not None and len(colocated) != lws_size - 1:
        problems.append(
            f"--colocated-ssh-ports names {len(colocated)} ports but the group has {lws_size - 1} workers"
        )
    if args.backend != Backend.CPU_PYTHON:
        # What a pod serves is checked where it is mounted (the deploy step has no volume);
        # cpu-python runs only locally, where deploy made the same check before starting the group.
        problems += checks.check_repository(args.model_repository)
    if args.backend == Backend.TRTLLM_ENGINE:
        engine_dir = args.engine_dir or checks.engine_dir_from_repository(args.model_repository)
        problems += checks.check_engine_dir(engine_dir, args.world_size, args.gpus_per_node)
    elif args.backend == Backend.TRTLLM_PYTORCH:
        problems += checks.check_llmapi_options(args.model_repository, args.world_size)
    return problems


def build_plan(
    args: argparse.Namespace, hosts: list[str], ssh_config: Path, runtime: ServerRuntime
) -> LaunchPlan:
    """The launch plan from arguments and the server runtime."""
    tritonserver, rank_env, extra = runtime
    colocated = args.colocated_ssh_ports is not None
    return LaunchPlan(
        backend=args.backend,
        hosts=tuple(hosts),
        # Pods sharing this host: every rank is a local child of mpirun (no ssh, no remote orted).
        slots_per_host=args.world_size if colocated else args.gpus_per_node,
        tritonserver=tritonserver,
        model_repository=str(args.model_repository),
        ssh_config=str(ssh_config),
        exit_timeout_s=int(drain_budget(args.grace_period)),
        ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
        mpi_interface=args.mpi_interface,
        run_as_root=os.geteuid() == 0,
        rank_env=rank_env,
        server_extra_args=extra,
        bind_address=LOOPBACK if colocated else None,
    )


def rank_hosts_and_probe(args: argparse.Namespace, group: Group) -> tuple[list[str], Probe]:
    """Where mpirun puts ranks and how the barrier reaches each worker's sshd."""
    if args.colocated_ssh_ports is None:
        return group.hosts, ssh_probe(args.ssh_port)
    _phase(
        "checks",
        "colocated: the group's pods share this host (no pod network); workers' sshd on "
        f"{LOOPBACK}, every rank started here, rank 0 bound to {LOOPBACK}",
    )
    return ["localhost"], colocated_probe(dict(zip(group.workers, args.colocated_ssh_ports, strict=True)))


def drain(mpirun: subprocess.Popen, grace: float, signals: Signals) -> None:
    """Stop taking traffic, let in-flight requests finish within the grace budget, stop every rank."""
    deadline = time.monotonic() + drain_budget(grace)
    rank0 = find_process(mpirun.pid, SERVER_PROGRAM, RANK0_MARKER)
    if rank0 is not None:
        _phase("draining", f"SIGTERM to rank 0 (pid {rank0}): readiness fails, in-flight requests finish")
        os.kill(rank0, signal.SIGTERM)
        finished = wait_until(lambda: rank0 not in descendants(mpirun.pid), deadline, signals, step=0.1)
        _phase("draining", "rank 0 done with its requests" if finished else "grace over, requests in flight")
    _phase("stopping", "stopping every rank through mpirun")
    if mpirun.poll() is None:
        mpirun.send_signal(signal.SIGTERM)
    me = os.getpid()
    if not wait_until(lambda: not descendants(me), time.monotonic() + MPIRUN_STOP_S, signals, step=0.1):
        left = signal_tree(me, signal.SIGKILL, include_root=False)
        _phase("stopping", f"killed {len(left)} processes that outlived mpirun's stop")


def serve(mpirun: subprocess.Popen, signals: Signals) -> int | None:
    """Wait for mpirun to exit (its exit code) or for SIGTERM (None)."""
    while not signals.stop.is_set():
        exited = reap()
        if mpirun.pid in exited:
            return exited[mpirun.pid]
        signals.wait(5.0)
    return None


def run_leader(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Barrier, start checks, one mpirun over the group, supervise it; see module doc for exit codes."""
    set_subreaper()
    signals = Signals()
    group = group_from_env(env)
    problems = start_checks(args, group.size)
    runtime = server_runtime(args)
    if isinstance(runtime, str):
        problems.append(runtime)
    for problem in problems:
        _phase("checks", f"FAILED: {problem}")
    if problems:
        return 1
    _phase(
        "checks",
        f"group {group.leader} size {group.size} x {args.gpus_per_node} GPUs = world {args.world_size}",
    )
    _phase("checks", checks.network_summary(env))
    user = _user()
    ssh_dir = sshd.make_runtime_dir(args.runtime_dir)
    ssh_config = sshd.prepare_leader(args.identity, args.known_hosts, ssh_dir, args.ssh_port, user)

    workers = group.workers
    rank_hosts, probe = rank_hosts_and_probe(args, group)
    _phase(
        "barrier", f"waiting up to {args.barrier_timeout:g}s for {len(workers)} workers: {', '.join(workers)}"
    )
    started = time.monotonic()
    result = wait_for_workers(workers, probe, args.barrier_timeout, stop=signals.stop)
    if result.stopped:
        _phase("stopped", "SIGTERM during the barrier; nothing started")
        return 0
    if not result.complete:
        log.error(
            "[barrier] deadline %gs passed; missing workers: %s",
            args.barrier_timeout,
            result.describe_missing(),
        )
        return 1
    _phase("barrier", f"all {len(workers)} workers accept ssh after {time.monotonic() - started:.2f}s")

    command = mpirun_command(build_plan(args, rank_hosts, ssh_config, runtime))
    _phase("launch", shlex.join(command))
    # No stdin: mpirun would otherwise forward the container's stdin to rank 0.
    mpirun = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    _phase("serving", f"mpirun pid {mpirun.pid}; {args.world_size} ranks on {len(rank_hosts)} hosts")
    code = serve(mpirun, signals)
    if code is not None:
        log.error(
            "[failed] mpirun exited with %s: a rank or a worker is gone; exiting so LWS recreates the group",
            code,
        )
        signal_tree(os.getpid(), signal.SIGKILL, include_root=False)
        return code if code > 0 else 1
    _phase("draining", f"SIGTERM: stopping within {args.grace_period:g}s grace")
    drain(mpirun, args.grace_period, signals)
    _phase("stopped", "all ranks stopped")
    return 0


# --- CLI -----------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ssh-port", type=int, default=DEFAULT_SSH_PORT, help="sshd port on every worker")
    parser.add_argument("--runtime-dir", type=Path, default=None, help="parent of the private key/config dir")
    parser.add_argument(
        "--grace-period", type=float, default=120, help="the pod's terminationGracePeriodSeconds"
    )


def _port_list(text: str) -> list[int]:
    """Comma-separated TCP ports (empty for a group without workers)."""
    try:
        ports = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ports") from None
    if any(not 0 < port < 65536 for port in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports must be 1..65535")
    return ports


def parser() -> argparse.ArgumentParser:
    """Argument parser for both roles (flags as the triton-lws chart passes them)."""
    top = argparse.ArgumentParser(prog="python -m steps.launcher", description=__doc__.splitlines()[0])
    roles = top.add_subparsers(dest="role", required=True)
    worker = roles.add_parser("worker", help="run sshd for the leader's mpirun")
    _common(worker)
    worker.add_argument("--authorized-keys", type=Path, default=SSH_DIR / "authorized_keys")
    worker.add_argument("--host-key", type=Path, default=SSH_DIR / "ssh_host_ecdsa_key")
    worker.add_argument("--sshd", default=shutil.which("sshd") or "/usr/sbin/sshd", help="absolute path")
    worker.add_argument(
        "--listen-address", default=None, help="sshd ListenAddress (default: every address of the pod)"
    )
    leader = roles.add_parser("leader", help="wait for workers, run mpirun over the group")
    _common(leader)
    leader.add_argument("--identity", type=Path, default=SSH_DIR / "id_ecdsa", help="ssh client key")
    leader.add_argument("--known-hosts", type=Path, default=SSH_DIR / "known_hosts")
    leader.add_argument("--backend", choices=[b.value for b in Backend], required=True)
    leader.add_argument("--model-repository", type=Path, required=True)
    leader.add_argument("--world-size", type=int, required=True, help="tp x pp: MPI ranks in the group")
    leader.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (= ranks) per pod")
    leader.add_argument("--engine-dir", type=Path, default=None, help="default: tensorrt_llm/config.pbtxt's")
    leader.add_argument("--barrier-timeout", type=float, default=900, help="seconds to wait for workers")
    leader.add_argument("--tritonserver", default="/opt/tritonserver/bin/tritonserver")
    leader.add_argument("--http-port", type=int, default=Ports.http)
    leader.add_argument("--grpc-port", type=int, default=Ports.grpc)
    leader.add_argument("--metrics-port", type=int, default=Ports.metrics)
    leader.add_argument(
        "--mpi-interface", default=None, help="only this NIC for MPI (default: not lo,docker0)"
    )
    leader.add_argument(
        "--colocated-ssh-ports",
        type=_port_list,
        default=None,
        metavar="P1,P2,...",
        help="the pods share this host (local fallback without network namespaces): worker i's sshd "
        "listens on 127.0.0.1:P_i, every rank runs here, rank 0 binds 127.0.0.1",
    )
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    for name in ("gpus_per_node", "world_size", "grace_period"):
        if getattr(args, name, 1) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        if args.role == "worker":
            return run_worker(args, os.environ)
        return run_leader(args, os.environ)
    except GroupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sshd.SshSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
