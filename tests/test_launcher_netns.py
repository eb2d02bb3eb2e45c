"""The launcher end to end across network namespaces standing in for the pods of one LWS group.

A leader and two workers with LWS names (`mp-0`, `mp-0-1`, `mp-0-2` in service `mp`, namespace
`test`), each its own network namespace and UTS hostname; real sshd (started by
`steps.launcher worker`), real Open MPI `mpirun` over ssh (started by `steps.launcher leader`),
real tritonservers on every rank (rank 0 serves the CPU `ensemble` on the tiny model, ranks 1-2
load `tensorrt_llm`). Clients run in a fourth namespace and reach the leader by its address.
The ssh keys are the chart's own Secret (rendered by real helm), so the chart's key material and
the launcher's ssh configs are exercised together.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from steps.cpu_backend.repository import write_ensemble_single
from tests.support.netns import PodNetwork
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
LEADER, WORKERS, CLIENT = "mp-0", ["mp-0-1", "mp-0-2"], "client"
HTTP_PORT = 8000
GRACE_S = 20
READY_TIMEOUT_S = 120

pytestmark = [
    pytest.mark.integration,
    pytest.mark.multinode,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"),
    pytest.mark.skipif(not shutil.which("mpirun"), reason="Open MPI comes from scripts/bootstrap.sh"),
]


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The per-release SSH Secret exactly as charts/triton-lws renders it (real helm), as mounted."""
    from tests.test_chart import one, render
    from workflows.chart_values import chart_values

    secret = one(
        render(chart_values(load_spec(ROOT / "workflows/examples/llama-3.1-405b-p5.yaml"))), "Secret"
    )
    keys = tmp_path_factory.mktemp("ssh-secret")
    for name, content in secret["stringData"].items():
        (keys / name).write_text(content if content.endswith("\n") else content + "\n")
        (keys / name).chmod(0o440)  # the chart's defaultMode
    assert {"id_ecdsa", "authorized_keys", "ssh_host_ecdsa_key", "known_hosts"} <= set(secret["stringData"])
    return keys


@pytest.fixture(scope="module")
def repository(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with `ensemble` (rank 0 serves it) and `tensorrt_llm` (what ranks >= 1 load)."""
    repo = tmp_path_factory.mktemp("repo") / "repository"
    write_ensemble_single(repo, tiny_model)
    write_ensemble_single(repo, tiny_model, name="tensorrt_llm")
    return repo


@dataclass
class Group:
    """One LWS group in namespaces: start/stop the launcher roles, query the leader."""

    net: PodNetwork
    keys: Path
    repository: Path
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _spawn(self, pod: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.logs / f"{pod}.log").open("ab")
        process = self.net.spawn(
            pod, [sys.executable, "-m", "steps.launcher", *argv], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        self.procs[pod] = process
        return process

    def start_worker(self, pod: str) -> subprocess.Popen:
        return self._spawn(
            pod,
            [
                "worker",
                "--authorized-keys", str(self.keys / "authorized_keys"),
                "--host-key", str(self.keys / "ssh_host_ecdsa_key"),
                "--grace-period", str(GRACE_S),
            ],
        )  # fmt: skip

    def start_leader(self, barrier_timeout: float = 60) -> subprocess.Popen:
        env = dict(
            os.environ,
            LWS_LEADER_ADDRESS=self.net.fqdn(LEADER),
            LWS_GROUP_SIZE=str(1 + len(WORKERS)),
        )
        return self._spawn(
            LEADER,
            [
                "leader",
                "--backend", "cpu-python",
                "--model-repository", str(self.repository),
                "--world-size", str(1 + len(WORKERS)),
                "--gpus-per-node", "1",
                "--identity", str(self.keys / "id_ecdsa"),
                "--known-hosts", str(self.keys / "known_hosts"),
                "--barrier-timeout", str(barrier_timeout),
                "--grace-period", str(GRACE_S),
                "--http-port", str(HTTP_PORT),
                "--mpi-interface", "eth0",
            ],
            env=env,
        )  # fmt: skip

    def log(self, pod: str) -> str:
        path = self.logs / f"{pod}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(f"--- {pod} ---\n{self.log(pod)[-4000:]}" for pod in [LEADER, *WORKERS])

    @property
    def url(self) -> str:
        return f"{self.net.pods[LEADER].address}:{HTTP_PORT}"

    def ready(self) -> bool:
        probe = self.net.run(
            CLIENT, ["curl", "-sf", "-m", "2", f"http://{self.url}/v2/health/ready"], capture_output=True
        )
        return probe.returncode == 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.procs[LEADER].poll() is not None:
                pytest.fail(f"leader exited with {self.procs[LEADER].returncode}\n{self.all_logs()}")
            if self.ready():
                return
            time.sleep(0.5)
        pytest.fail(f"leader not ready after {READY_TIMEOUT_S}s\n{self.all_logs()}")

    def stream(self, text: str, max_tokens: int) -> subprocess.Popen:
        """A streaming request from the client namespace; stdout is one JSON line per event."""
        argv = [sys.executable, "-m", "tests.support.netns", "stream", self.url, text, str(max_tokens)]
        return self.net.spawn(CLIENT, argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)

    def tritonservers(self) -> dict[str, list[int]]:
        return {pod: self.net.find(pod, "tritonserver") for pod in [LEADER, *WORKERS]}


@pytest.fixture
def group(
    ssh_keys: Path, repository: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Group]:
    net = PodNetwork(lws="mp", namespace="test")
    try:
        net.start([LEADER, *WORKERS, CLIENT])
        the_group = Group(net, ssh_keys, repository, tmp_path)
        yield the_group
        if request.session.testsfailed:
            print(the_group.all_logs())
    finally:
        net.close()


def _events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_leader_waits_for_late_workers_then_serves_streamed_tokens(group: Group) -> None:
    """Workers start after the leader: it waits at the barrier, then one mpirun serves the group."""
    leader = group.start_leader()
    time.sleep(2.0)
    assert leader.poll() is None, group.all_logs()
    assert "[barrier] waiting" in group.log(LEADER)
    assert "[launch]" not in group.log(LEADER), "mpirun started before any worker existed"
    for pod in WORKERS:
        group.start_worker(pod)
    group.wait_ready()

    client = group.stream("the quick brown fox", 12)
    output, _ = client.communicate(timeout=60)
    events = _events(output)
    tokens = [e for e in events if "text_output" in e]
    assert events[-1].get("done"), events
    assert len(tokens) >= 2, f"expected one response per token, got {events}"
    assert "".join(e["text_output"] for e in tokens).strip()

    # One rank per pod: the workers really run the tensorrt_llm-only ranks, started over ssh.
    servers = group.tritonservers()
    assert all(servers.values()), servers
    for rank, pod in enumerate(WORKERS, start=1):
        assert group.net.find(pod, "tritonserver", f"--id=rank{rank}", "--load-model=tensorrt_llm"), pod
    log = group.log(LEADER)
    assert "all 2 workers accept ssh" in log
    assert "--host mp-0.mp.test:1,mp-0-1.mp.test:1,mp-0-2.mp.test:1" in log

    leader.send_signal(signal.SIGTERM)
    assert leader.wait(timeout=GRACE_S + 10) == 0, group.all_logs()


def test_worker_that_never_comes_fails_the_barrier_naming_it(group: Group) -> None:
    """Only one of two workers starts: the leader exits 1 at its deadline naming the missing one."""
    group.start_worker(WORKERS[0])
    leader = group.start_leader(barrier_timeout=3)
    assert leader.wait(timeout=30) == 1, group.all_logs()
    failure = [line for line in group.log(LEADER).splitlines() if "missing workers" in line]
    assert failure, group.log(LEADER)
    assert group.net.fqdn(WORKERS[1]) in failure[0]
    assert group.net.fqdn(WORKERS[0]) not in failure[0]
    assert "[launch]" not in group.log(LEADER)


def test_killed_rank_makes_the_leader_exit_nonzero(group: Group) -> None:
    """SIGKILL one worker rank: mpirun aborts, the leader exits non-zero, no rank survives."""
    for pod in WORKERS:
        group.start_worker(pod)
    leader = group.start_leader()
    group.wait_ready()
    (victim,) = group.net.find(WORKERS[1], "tritonserver", "--id=rank2")
    os.kill(victim, signal.SIGKILL)
    code = leader.wait(timeout=30)
    assert code != 0, group.all_logs()
    assert "[failed] mpirun exited" in group.log(LEADER)
    deadline = time.monotonic() + 10
    while any(group.tritonservers().values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(group.tritonservers().values()), group.tritonservers()


def test_sigterm_lets_the_streaming_request_finish_then_stops_everything(group: Group) -> None:
    """SIGTERM to every pod (as when LWS deletes a group) mid-stream: the request completes, then all stop."""
    for pod in WORKERS:
        group.start_worker(pod)
    leader = group.start_leader()
    group.wait_ready()
    max_tokens = 400
    client = group.stream("once upon a time", max_tokens)
    first = client.stdout.readline()
    assert "text_output" in first, first + group.all_logs()
    sent = time.time()
    for process in group.procs.values():
        process.send_signal(signal.SIGTERM)
    # Stop taking traffic: readiness fails while the request is still streaming.
    deadline = time.monotonic() + 5
    while group.ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    still_streaming = client.poll() is None
    assert not group.ready(), "the leader still reports ready after SIGTERM"
    assert still_streaming, "the stream ended before readiness was checked; the test proved nothing"
    # Read on through the same buffered pipe (communicate() would skip what readline() buffered);
    # the client's own socket timeout bounds this.
    rest = client.stdout.read()
    client.wait(timeout=10)
    events = _events(first + rest)
    tokens = [e for e in events if "text_output" in e]
    assert events[-1].get("done"), events[-3:]
    assert len(tokens) == max_tokens
    assert tokens[-1]["t"] > sent, "the stream ended before SIGTERM; the test proved nothing"
    assert leader.wait(timeout=GRACE_S + 10) == 0, group.all_logs()
    for pod in WORKERS:
        assert group.procs[pod].wait(timeout=GRACE_S + 10) == 0, group.all_logs()
    assert not any(group.tritonservers().values())
    log = group.log(LEADER)
    assert log.index("[draining] SIGTERM to rank 0") < log.index("[stopped]")


def test_worker_exits_nonzero_when_its_sshd_dies(group: Group) -> None:
    """A worker whose sshd is gone cannot take ranks: its launcher exits 1 (the pod restarts)."""
    worker = group.start_worker(WORKERS[0])
    deadline = time.monotonic() + 10
    # sshd retitles its listener "sshd: /usr/sbin/sshd -D ... [listener] ..."
    while not (sshd := group.net.find_title(WORKERS[0], "[listener]")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sshd, group.all_logs()
    os.kill(sshd[0], signal.SIGKILL)
    assert worker.wait(timeout=10) == 1, group.all_logs()
    assert "sshd exited with -9" in group.log(WORKERS[0])
