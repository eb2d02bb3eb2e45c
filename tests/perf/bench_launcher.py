"""Launcher benchmark (not a test): barrier latency and failure detection, against baselines.

Run as root: `.venv/bin/python tests/perf/bench_launcher.py [--trials 20]`.

Group: a leader and two workers in network namespaces (tests/support/netns.py), real sshd
started by `steps.launcher worker`, real `mpirun` started by `steps.launcher leader`.

1. Barrier latency: the leader waits at its barrier; worker 1 starts, worker 2 starts after a
   random 0.2-1.0 s. Latency = (leader logs `[launch]`, i.e. mpirun starts) - (the last worker's
   sshd prints "Server listening", i.e. accepts). Target p95 <= 1 s. Baseline in the same run: the
   reference's gang wait, emulated as a poll of both workers every 2 s (it polled the API server
   every 2 s), measured from the same event. The ranks here are a stand-in program (mpirun's
   start is the end point, what the ranks run does not matter).
2. Failure detection: a serving group (real CPU tritonservers on every rank unless --stand-in),
   SIGKILL rank 2 on worker 2; latency = launcher exit - kill. Target p95 <= 2 s. Baseline in the
   same run: bare mpirun with Open MPI's default kill sequence (the reference's mpirun), measured
   the same way, plus the reference's `sleep 15` before exiting.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from steps.launcher import sshd  # noqa: E402
from steps.launcher.command import LaunchPlan, mpirun_command  # noqa: E402
from tests.support.netns import PodNetwork  # noqa: E402

LEADER, WORKERS = "mp-0", ["mp-0-1", "mp-0-2"]
REFERENCE_POLL_S = 2.0
REFERENCE_FAILURE_SLEEP_S = 15.0
STAND_IN_RANK = """#!/bin/sh
# Stand-in rank: runs until told to stop.
trap 'exit 0' TERM
while true; do sleep 0.05; done
"""


class Lines:
    """Reads a process's output in a thread and timestamps (monotonic) each line on arrival."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.seen: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            with self._cond:
                self.seen.append((time.monotonic(), raw.decode(errors="replace").rstrip()))
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 60) -> float:
        """Arrival time of the first line containing `needle`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for stamp, line in self.seen:
                    if needle in line:
                        return stamp
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(line for _, line in self.seen[-30:])
                    raise TimeoutError(f"no line with {needle!r} after {timeout}s; last lines:\n{tail}")
                self._cond.wait(remaining)


class Bench:
    """Namespaces, keys and helpers shared by all trials."""

    def __init__(self, workdir: Path, stand_in: bool):
        self.workdir = workdir
        self.stand_in = stand_in
        self.keys = workdir / "keys"
        self.keys.mkdir()
        for name in ("id_ecdsa", "ssh_host_ecdsa_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ecdsa", "-m", "PEM", "-N", "", "-f", str(self.keys / name)],
                check=True,
            )
        shutil.copyfile(self.keys / "id_ecdsa.pub", self.keys / "authorized_keys")
        (self.keys / "known_hosts").write_text(f"* {(self.keys / 'ssh_host_ecdsa_key.pub').read_text()}")
        self.rank = workdir / "rank.sh"
        self.rank.write_text(STAND_IN_RANK)
        self.rank.chmod(0o755)
        self.engine = workdir / "engine"
        self.engine.mkdir()
        mapping = {"world_size": 3, "tp_size": 3, "pp_size": 1, "gpus_per_node": 1}
        (self.engine / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": mapping}}))
        self.repository = workdir / "repository"
        if not stand_in:
            from steps.cpu_backend.repository import write_ensemble_single
            from steps.tinymodel import make_tiny_llama

            model = make_tiny_llama(workdir / "model", seed=0)
            write_ensemble_single(self.repository, model)
            write_ensemble_single(self.repository, model, name="tensorrt_llm")
        self.net = PodNetwork(lws="mp", namespace="bench").start([LEADER, *WORKERS])

    def _launcher(self, pod: str, argv: list[str], env: dict[str, str] | None = None) -> Lines:
        process = self.net.spawn(
            pod,
            [sys.executable, "-m", "steps.launcher", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        return Lines(process)

    def worker(self, pod: str) -> Lines:
        return self._launcher(
            pod,
            ["worker", "--authorized-keys", str(self.keys / "authorized_keys"),
             "--host-key", str(self.keys / "ssh_host_ecdsa_key"), "--grace-period", "10"],
        )  # fmt: skip

    def leader(self, *, real_ranks: bool) -> Lines:
        env = dict(os.environ, LWS_LEADER_ADDRESS=self.net.fqdn(LEADER), LWS_GROUP_SIZE="3")
        backend = ["--backend", "cpu-python"] if real_ranks else [
            "--backend", "trtllm-engine", "--engine-dir", str(self.engine), "--tritonserver", str(self.rank)
        ]  # fmt: skip
        return self._launcher(
            LEADER,
            ["leader", *backend, "--model-repository", str(self.repository), "--world-size", "3",
             "--gpus-per-node", "1", "--identity", str(self.keys / "id_ecdsa"),
             "--known-hosts", str(self.keys / "known_hosts"), "--barrier-timeout", "60",
             "--grace-period", "10", "--mpi-interface", "eth0"],
            env=env,
        )  # fmt: skip

    def stop(self, *streams: Lines) -> None:
        for lines in streams:
            if lines.process.poll() is None:
                lines.process.send_signal(signal.SIGTERM)
        for lines in streams:
            try:
                lines.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(lines.process.pid, signal.SIGKILL)
                lines.process.wait()
        self.net.processes.clear()

    def start_workers_staggered(self) -> tuple[list[Lines], float]:
        """Worker 1 now, worker 2 after 0.2-1.0 s; returns them and when the last sshd accepted."""
        first = self.worker(WORKERS[0])
        time.sleep(random.uniform(0.2, 1.0))
        second = self.worker(WORKERS[1])
        listening = [w.wait_for("Server listening on 0.0.0.0") for w in (first, second)]
        return [first, second], max(listening)

    # --- trials ----------------------------------------------------------------------------------

    def barrier_trial(self) -> float:
        leader = self.leader(real_ranks=False)
        leader.wait_for("[barrier] waiting")
        time.sleep(random.uniform(0.0, 0.5))  # the leader is somewhere in its backoff
        workers, last_accepting = self.start_workers_staggered()
        launched = leader.wait_for("[launch]")
        self.stop(leader, *workers)
        return launched - last_accepting

    def reference_barrier_trial(self) -> float:
        """The reference's gang wait, emulated: check both workers every 2 s until both answer."""
        hosts = [self.net.fqdn(pod) for pod in WORKERS]
        poller = subprocess.Popen(
            self.net.command(LEADER, [sys.executable, "-c", REFERENCE_POLLER, str(REFERENCE_POLL_S), *hosts]),
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        lines = Lines(poller)
        lines.wait_for("polling")
        time.sleep(random.uniform(0.0, REFERENCE_POLL_S))
        workers, last_accepting = self.start_workers_staggered()
        ready = lines.wait_for("all running")
        poller.wait(timeout=10)
        self.stop(*workers)
        return ready - last_accepting

    def _serving_group(self, real_ranks: bool) -> tuple[Lines, list[Lines]]:
        workers = [self.worker(pod) for pod in WORKERS]
        leader = self.leader(real_ranks=real_ranks)
        leader.wait_for("[serving]")
        self.wait_for_rank(WORKERS[1], "--id=rank2")
        if real_ranks:
            self.wait_http_ready()
        return leader, workers

    def wait_for_rank(self, pod: str, marker: str, timeout: float = 60) -> int:
        program = "tritonserver" if not self.stand_in else str(self.rank)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.net.find(pod, program, marker) or self.net.find(
                pod, "/bin/sh", str(self.rank), marker
            )
            if found:
                return found[0]
            time.sleep(0.05)
        raise TimeoutError(f"rank {marker} never started on {pod}")

    def wait_http_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.net.pods[LEADER].address}:8000/v2/health/ready"
        while time.monotonic() < deadline:
            if self.net.run(LEADER, ["curl", "-sf", "-m", "2", url], capture_output=True).returncode == 0:
                return
            time.sleep(0.3)
        raise TimeoutError("leader never became ready")

    def _time_exit_after_kill(self, victim: int, process: subprocess.Popen) -> float:
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while process.poll() is None:
            time.sleep(0.002)
        return time.monotonic() - killed

    def failure_trial(self) -> float:
        leader, workers = self._serving_group(real_ranks=not self.stand_in)
        victim = self.wait_for_rank(WORKERS[1], "--id=rank2")
        latency = self._time_exit_after_kill(victim, leader.process)
        if leader.process.returncode == 0:
            raise RuntimeError("the leader exited 0 after a rank died")
        self.stop(*workers)
        return latency

    def reference_failure_trial(self) -> float:
        """Bare mpirun with Open MPI's default kill sequence (stand-in ranks), plus the reference's sleep."""
        workers = [self.worker(pod) for pod in WORKERS]
        for lines in workers:
            lines.wait_for("Server listening on 0.0.0.0")
        runtime = sshd.make_runtime_dir(self.workdir)
        config = sshd.prepare_leader(self.keys / "id_ecdsa", self.keys / "known_hosts", runtime, 2222, "root")
        plan = LaunchPlan(
            backend="trtllm-engine",
            hosts=tuple(self.net.fqdn(pod) for pod in [LEADER, *WORKERS]),
            slots_per_host=1,
            tritonserver=str(self.rank),
            model_repository=str(self.repository),
            ssh_config=str(config),
            exit_timeout_s=5,
            mpi_interface="eth0",
            run_as_root=True,
        )
        command = _without_mca(mpirun_command(plan), "odls_base_sigkill_timeout")
        mpirun = subprocess.Popen(
            self.net.command(LEADER, command),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        victim = self.wait_for_rank(WORKERS[1], "--id=rank2")
        latency = self._time_exit_after_kill(victim, mpirun)
        self.stop(*workers)
        return latency + REFERENCE_FAILURE_SLEEP_S


REFERENCE_POLLER = """
import socket, sys, time
period, hosts = float(sys.argv[1]), sys.argv[2:]
print("polling", flush=True)
def up(host):
    try:
        socket.create_connection((host, 2222), timeout=1).close()
        return True
    except OSError:
        return False
while not all(up(h) for h in hosts):
    time.sleep(period)
print("all running", flush=True)
"""


def _without_mca(command: list[str], name: str) -> list[str]:
    at = command.index(name)
    return command[: at - 1] + command[at + 2 :]


def p95(values: list[float]) -> float:
    """95th percentile (inclusive method, as most tools report)."""
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def report(name: str, ours: list[float], baseline: list[float], target: float) -> bool:
    ours_p95, base_p95 = p95(ours), p95(baseline)
    verdict = "OK" if ours_p95 <= target else "MISSED"
    print(
        f"{name}: megapod p50 {statistics.median(ours):.3f}s p95 {ours_p95:.3f}s max {max(ours):.3f}s "
        f"(n={len(ours)}) | baseline p50 {statistics.median(baseline):.3f}s p95 {base_p95:.3f}s "
        f"(n={len(baseline)}) | ratio p95 {ours_p95 / base_p95:.3f} | target p95 <= {target:g}s {verdict}",
        flush=True,
    )
    return ours_p95 <= target


def run_trials(label: str, trial: Callable[[], float], count: int) -> list[float]:
    results = []
    for index in range(count):
        results.append(trial())
        print(f"  {label} {index + 1}/{count}: {results[-1]:.3f}s", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--baseline-trials", type=int, default=10)
    parser.add_argument("--stand-in", action="store_true", help="stand-in ranks for failure trials too")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: needs root (network namespaces)", file=sys.stderr)
        return 2
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        bench = Bench(Path(tmp), stand_in=args.stand_in)
        try:
            barrier = run_trials("barrier", bench.barrier_trial, args.trials)
            barrier_ref = run_trials("reference barrier", bench.reference_barrier_trial, args.baseline_trials)
            failure = run_trials("failure", bench.failure_trial, args.trials)
            failure_ref = run_trials("reference failure", bench.reference_failure_trial, args.baseline_trials)
        finally:
            bench.net.close()
    ok = report("barrier latency (last sshd accepting -> mpirun start)", barrier, barrier_ref, 1.0)
    ranks = "stand-in ranks" if args.stand_in else "real CPU tritonserver ranks"
    ok &= report(f"failure detection (rank SIGKILL -> launcher exit, {ranks})", failure, failure_ref, 2.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
