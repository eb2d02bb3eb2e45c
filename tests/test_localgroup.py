"""steps.localgroup: one LWS group on this machine, as `megapod run --local` deploys it.

Unit part: the launcher command lines equal what real helm renders from charts/triton-lws for
the same spec; the key material is what the chart's Secret holds (real ssh-keygen, real sshd
config check); the launcher's colocated flags. Integration part (real tritonserver, sshd,
Open MPI): `start_group` on tiny-local (TP1 x PP2 on 1-GPU "nodes" = 2 pods) with a repository
rendered by steps.publish from the tiny model, in network namespaces (root) and as plain
processes; a streaming request returns tokens, the metrics answer, `stop_group` leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from steps.launcher.__main__ import parser as launcher_parser
from steps.launcher.command import LaunchPlan, mpirun_command
from steps.launcher.supervise import cmdline
from steps.localgroup import NETNS, PROCESSES, LocalGroupError, read_state, start_group, stop_group
from steps.localgroup.group import _marked_pids, _tail, pod_names, requested_isolation
from steps.localgroup.keys import secret_file_names, write_release_keys
from steps.localgroup.launch import leader_args, worker_args
from steps.localgroup.netns import existing_namespaces
from workflows.chart_values import chart_values, release_fullname
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY_LOCAL = ROOT / "workflows" / "examples" / "tiny-local.yaml"
REFERENCE = ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml"
CHART_SSH_DIR = "/etc/megapod/ssh"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- command lines and keys ----------------------------------------------------------------------


@pytest.mark.parametrize("spec_file", [TINY_LOCAL, REFERENCE], ids=lambda p: p.stem)
def test_launcher_args_are_the_charts_own(spec_file: Path, tmp_path: Path) -> None:
    """helm template of charts/triton-lws vs launch.leader_args/worker_args: same flags, same values."""
    from tests.test_chart import pod_templates, render

    values = chart_values(load_spec(spec_file))
    pods = pod_templates(render(values))
    keys = {dest: tmp_path / name for dest, name in secret_file_names().items()}
    local = {"leader": leader_args(values, keys), "worker": worker_args(values, keys)}
    for role, args in local.items():
        rendered = [
            a.replace(CHART_SSH_DIR, str(tmp_path)) for a in pods[role]["spec"]["containers"][0]["args"]
        ]
        assert args == rendered, role
        launcher_parser().parse_args(args)  # and the launcher accepts them


def test_release_keys_are_pem_ecdsa_that_sshd_accepts(tmp_path: Path) -> None:
    """The Secret's four files: PEM EC keys (OpenSSH 9.2 loads them), matching public halves."""
    keys = write_release_keys(tmp_path / "ssh")
    assert {p.name for p in keys.values()} == {
        "id_ecdsa",
        "authorized_keys",
        "ssh_host_ecdsa_key",
        "known_hosts",
    }
    for dest in ("identity", "host_key"):
        assert keys[dest].read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
        assert keys[dest].stat().st_mode & 0o777 == 0o600
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(keys["identity"])], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    assert keys["authorized_keys"].read_text().split()[:2] == derived
    host = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(keys["host_key"])], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    assert keys["known_hosts"].read_text().split()[:3] == ["*", *host]
    again = write_release_keys(tmp_path / "ssh")  # a second release gets fresh keys, same files
    assert again == keys


def test_colocated_launch_runs_every_rank_here_bound_to_loopback() -> None:
    """--colocated-ssh-ports: one host with all slots, rank 0 on 127.0.0.1, ports parsed strictly."""
    base = ["leader", "--backend", "cpu-python", "--model-repository", "/r", "--world-size", "2"]
    args = launcher_parser().parse_args([*base, "--gpus-per-node", "1", "--colocated-ssh-ports", "4001"])
    assert args.colocated_ssh_ports == [4001]
    from steps.launcher.__main__ import build_plan, start_checks

    plan = build_plan(args, ["localhost"], Path("/cfg"), ("tritonserver", {}, ()))
    command = mpirun_command(plan)
    assert command[command.index("--host") + 1] == "localhost:2"
    rank0 = command[: command.index(":")]
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(
        rank0
    )
    assert start_checks(args, 2) == []
    assert "names 1 ports but the group has 2 workers" in start_checks(args, 3)[-1]
    with pytest.raises(SystemExit):
        launcher_parser().parse_args([*base, "--gpus-per-node", "1", "--colocated-ssh-ports", "22,x"])
    pod = mpirun_command(LaunchPlan("cpu-python", ("a", "b"), 1, "tritonserver", "/r", "/cfg", 5))
    assert not any(a.startswith("--http-address") for a in pod), "pods keep Triton's default bind"


def test_worker_listen_address_goes_into_sshd_config(tmp_path: Path) -> None:
    from steps.launcher.sshd import render_sshd_config

    assert "ListenAddress 127.0.0.1\n" in render_sshd_config(2222, tmp_path, "root", {}, "127.0.0.1")
    assert "ListenAddress" not in render_sshd_config(2222, tmp_path, "root", {})


def test_pod_names_and_isolation_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    lws = release_fullname("tiny-local")
    assert pod_names(lws, 2) == [f"{lws}-0", f"{lws}-0-1"]
    monkeypatch.setenv("MEGAPOD_LOCAL_ISOLATION", "processes")
    assert requested_isolation(None) == PROCESSES
    assert requested_isolation("netns") == NETNS
    with pytest.raises(ValueError, match="auto, netns, processes"):
        requested_isolation("vm")


# --- the group, for real -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_local_spec():
    return load_spec(TINY_LOCAL)


@pytest.fixture(scope="module")
def published(tiny_local_spec, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository the publish step renders for tiny-local (cpu-python templates, tiny model)."""
    from steps.build import build
    from steps.publish import render_repository

    work = tmp_path_factory.mktemp("published")
    engines = build(tiny_local_spec, tiny_model, work).engines
    templates = ROOT / "steps" / "cpu_backend" / "models"
    return render_repository(tiny_local_spec, engines, tiny_model, templates, work / "repository")


def stream_tokens(endpoint: str, text: str = "the quick brown fox", max_tokens: int = 8) -> list[str]:
    """Triton's generate_stream (SSE): the text of every event."""
    body = json.dumps({"text_input": text, "max_tokens": max_tokens, "stream": True}).encode()
    request = urllib.request.Request(
        f"http://{endpoint}/v2/models/ensemble/generate_stream",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with NO_PROXY.open(request, timeout=60) as response:
        events = [
            json.loads(line[5:]) for line in response.read().decode().splitlines() if line.startswith("data:")
        ]
    assert all("error" not in e for e in events), events
    return [e["text_output"] for e in events]


def assert_serves_then_stops(info, run_dir: Path, release: str) -> None:
    tokens = stream_tokens(info.endpoint)
    assert len(tokens) >= 2 and "".join(tokens).strip(), tokens
    with NO_PROXY.open(f"http://{info.metrics_endpoint}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'nv_inference_request_success{model="ensemble"' in metrics
    state = read_state(run_dir, release)
    assert state["isolation"] == info.isolation and state["endpoint"] == info.endpoint
    # Both ranks run (PP2 over 2 pods), each a tritonserver carrying the group's marker.
    ranks = {
        arg for pid in _marked_pids(state["token"]) for arg in cmdline(pid) if arg.startswith("--id=rank")
    }
    assert ranks == {"--id=rank0", "--id=rank1"}
    assert [p["role"] for p in state["processes"]] == ["worker", "leader"]
    assert stop_group(run_dir, release) is True
    assert not _marked_pids(state["token"]), "processes of the group survived stop_group"
    assert read_state(run_dir, release) is None
    assert stop_group(run_dir, release) is False  # idempotent


needs_mpirun = pytest.mark.skipif(
    not shutil.which("mpirun"), reason="Open MPI comes from scripts/bootstrap.sh"
)


@pytest.mark.integration
@pytest.mark.multinode
@needs_mpirun
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")
def test_netns_group_serves_streamed_tokens_and_stops_clean(
    tiny_local_spec, published: Path, tmp_path: Path
) -> None:
    """Two pods as namespaces: worker sshd + leader mpirun over ssh; the host streams through its veth."""
    release = "tiny-local"
    info = start_group(tiny_local_spec, published, tmp_path, release, isolation=NETNS)
    try:
        state = read_state(tmp_path, release)
        assert info.isolation == NETNS
        namespaces = set(state["network"]["namespaces"])
        assert namespaces <= existing_namespaces()
        leader_pod = state["pods"][0]
        assert info.endpoint.split(":")[0] == state["network"]["pods"][leader_pod]["address"]
        assert info.endpoint.split(":")[1] == str(tiny_local_spec.serving.service.http_port)
        leader_log = Path(state["processes"][-1]["log"]).read_text()
        assert "all 1 workers accept ssh" in leader_log
        assert f"--host {info.leader_fqdn}:1,{pod_names(state['lws'], 2)[1]}." in leader_log
        assert_serves_then_stops(info, tmp_path, release)
        assert not namespaces & existing_namespaces()
        host_veth = state["network"]["host_veth"]
        assert subprocess.run(["ip", "link", "show", host_veth], capture_output=True).returncode != 0
        assert not any((Path("/etc/netns") / ns).exists() for ns in namespaces)
    finally:
        stop_group(tmp_path, release, grace_s=0)


@pytest.mark.integration
@needs_mpirun
def test_process_fallback_serves_streamed_tokens_and_stops_clean(
    tiny_local_spec, published: Path, tmp_path: Path
) -> None:
    """Forced fallback: plain local processes, worker sshd on loopback, every rank on this host."""
    from tests.support.triton import free_port

    service = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    spec = tiny_local_spec.model_copy(
        update={"serving": tiny_local_spec.serving.model_copy(
            update={"service": tiny_local_spec.serving.service.model_copy(update=service)})}
    )  # fmt: skip
    release = "tiny-local"
    info = start_group(spec, published, tmp_path, release, isolation=PROCESSES)
    try:
        assert info.isolation == PROCESSES
        assert info.endpoint == f"127.0.0.1:{service['http_port']}"
        assert read_state(tmp_path, release)["network"] is None
        leader_log = Path(read_state(tmp_path, release)["processes"][-1]["log"]).read_text()
        assert "colocated" in leader_log and "all 1 workers accept ssh" in leader_log
        assert_serves_then_stops(info, tmp_path, release)
    finally:
        stop_group(tmp_path, release, grace_s=0)


def test_model_volume_paths_map_to_the_run_folders_claim(tmp_path: Path) -> None:
    """The chart mounts the model PVC at model.mountPath; locally that claim is RUN/volumes/<claim>."""
    from steps.localgroup.group import pod_volume_path

    values = chart_values(load_spec(TINY_LOCAL))
    repository = Path(values["model"]["repository"])
    assert pod_volume_path(values, repository, tmp_path) == repository  # no local volume: unchanged
    claim = tmp_path / "volumes" / values["model"]["volumeClaim"]
    claim.mkdir(parents=True)
    relative = repository.relative_to(values["model"]["mountPath"])
    assert pod_volume_path(values, repository, tmp_path) == claim / relative
    assert pod_volume_path(values, Path("/elsewhere/repo"), tmp_path) == Path("/elsewhere/repo")


@pytest.mark.integration
@needs_mpirun
def test_group_that_cannot_serve_fails_naming_why_and_leaves_nothing(
    tiny_local_spec, published: Path, tmp_path: Path
) -> None:
    """A repository with a directory Triton cannot load: rank 0 exits, start_group raises one line
    carrying Triton's reason, and the namespaces/processes it created are gone."""
    broken = tmp_path / "repository"
    shutil.copytree(published, broken)
    (broken / "not_a_model").mkdir()
    # Triton's reason (the directory it cannot load) must be carried; its closing "failed to load all
    # models" line may be cut off when mpirun ends the job first, so it is not required.
    reason = r"leader .* exited .*Poll failed for model directory 'not_a_model'"
    with pytest.raises(LocalGroupError, match=reason):
        start_group(tiny_local_spec, broken, tmp_path, "broken", timeout_s=120)
    stopped = json.loads((tmp_path / "deploy" / "broken" / "state.stopped.json").read_text())
    if stopped["network"]:
        assert not set(stopped["network"]["namespaces"]) & existing_namespaces()
    assert not _marked_pids(stopped["token"])
    assert read_state(tmp_path, "broken") is None


def test_without_root_auto_falls_back_to_processes_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not root: auto picks plain processes with a log line naming why; netns asked for is an error."""
    from steps.localgroup.group import _open_network

    spec = load_spec(TINY_LOCAL)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    names = pod_names("x", 2)
    with caplog.at_level("INFO", logger="megapod.localgroup"):
        assert _open_network("x", spec, names, "auto") is None
    assert "[isolation] processes: network namespaces unavailable (network namespaces need root" in (
        caplog.text
    )
    with pytest.raises(LocalGroupError, match="asked for but are unavailable"):
        _open_network("x", spec, names, NETNS)


def test_failure_line_keeps_tritons_reason_when_ranks_share_a_physical_line(tmp_path: Path) -> None:
    """mpirun interleaves ranks' output: one rank's CUDA noise must not hide the other's real error."""
    log = tmp_path / "leader.log"
    log.write_text(
        "[1,1]<stderr>:E1127 12:00:00.1 1 cuda_memory_manager.cc:1] CUDA driver not found"
        "[1,0]<stderr>:E1127 12:00:00.2 1 model_repository_manager.cc:1] failed to load 'ensemble'\n"
        "[1,0]<stderr>:E1127 12:00:00.3 1 metrics.cc:1] NVML: not available\n"
    )
    reason = _tail(str(log))
    # Triton's reason leads; the CPU-only noise is at most context after it.
    assert reason.startswith("E1127 12:00:00.2 1 model_repository_manager.cc:1] failed to load 'ensemble'")
