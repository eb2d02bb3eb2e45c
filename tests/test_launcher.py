"""Unit tests of the launcher's pure core (names, barrier, mpirun command, configs, checks) and its CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from steps.launcher import checks, sshd
from steps.launcher.barrier import backoff_delays, ssh_probe, wait_for_workers
from steps.launcher.command import LLMAPI_LAUNCH, TRTLLM_MODEL, LaunchPlan, Ports, mpirun_command, server_args
from steps.launcher.group import GroupError, group_from_env, parse_group
from steps.launcher.supervise import cmdline, descendants, drain_budget, find_process, signal_tree
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SPEC = load_spec(ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml")


# --- group names ---------------------------------------------------------------------------------


def test_worker_names_follow_the_lws_pod_pattern() -> None:
    group = parse_group("llama-405b-3.llama-405b.serving", 3)
    assert group.leader == "llama-405b-3.llama-405b.serving"
    assert group.workers == ["llama-405b-3-1.llama-405b.serving", "llama-405b-3-2.llama-405b.serving"]
    assert group.hosts[0] == group.leader


def test_cluster_domain_suffix_and_per_replica_subdomain_are_kept() -> None:
    full = parse_group("m-0.m.ns.svc.cluster.local", 2)
    assert full.workers == ["m-0-1.m.ns.svc.cluster.local"]
    unique = parse_group("m-1.m-1.ns", 2)  # subdomainPolicy UniquePerReplica
    assert unique.workers == ["m-1-1.m-1.ns"]


def test_single_pod_group_has_no_workers() -> None:
    assert parse_group("m-0.m.ns", 1).workers == []


@pytest.mark.parametrize("address", ["m.m.ns", "m-0", "M-0.m.ns", "-0.m.ns", "m-x.m.ns"])
def test_malformed_leader_address_is_refused_with_an_example(address: str) -> None:
    with pytest.raises(GroupError, match=r"expected <lws>-<group>\.<service>\.<namespace>"):
        parse_group(address, 2)


def test_missing_or_bad_lws_env_names_the_variable() -> None:
    with pytest.raises(GroupError, match="LWS_LEADER_ADDRESS and LWS_GROUP_SIZE not set"):
        group_from_env({})
    with pytest.raises(GroupError, match="LWS_GROUP_SIZE='two'"):
        group_from_env({"LWS_LEADER_ADDRESS": "m-0.m.ns", "LWS_GROUP_SIZE": "two"})
    assert group_from_env({"LWS_LEADER_ADDRESS": "m-0.m.ns", "LWS_GROUP_SIZE": "2"}).size == 2


# --- barrier -------------------------------------------------------------------------------------


def test_backoff_doubles_from_50ms_to_a_500ms_cap() -> None:
    delays = backoff_delays()
    assert [next(delays) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


class CountingProbe:
    """A probe whose hosts become ready after a given number of probes (None: never)."""

    def __init__(self, ready_after: dict[str, int | None]):
        self.ready_after = ready_after
        self.calls: dict[str, int] = dict.fromkeys(ready_after, 0)

    def __call__(self, host: str) -> str | None:
        self.calls[host] += 1
        needed = self.ready_after[host]
        return None if needed is not None and self.calls[host] >= needed else "connection refused"


def test_barrier_completes_when_every_worker_answers() -> None:
    probe = CountingProbe({"w1": 1, "w2": 4})
    result = wait_for_workers(["w1", "w2"], probe, timeout=10)
    assert result.complete and sorted(result.ready) == ["w1", "w2"]
    assert probe.calls == {"w1": 1, "w2": 4}


def test_barrier_deadline_names_every_missing_worker_with_its_reason() -> None:
    probe = CountingProbe({"w1": 1, "w2": None, "w3": None})
    started = time.monotonic()
    result = wait_for_workers(["w1", "w2", "w3"], probe, timeout=0.3)
    assert time.monotonic() - started < 2
    assert not result.complete
    assert result.describe_missing() == "w2 (connection refused); w3 (connection refused)"


def test_barrier_stops_on_request() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    result = wait_for_workers(["w1"], CountingProbe({"w1": None}), timeout=30, stop=stop)
    assert result.stopped and not result.complete


@pytest.fixture
def banner_server():
    """A loopback TCP server that greets with the given bytes (an sshd stand-in for the probe only)."""
    servers = []

    def start(greeting: bytes) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        servers.append(listener)

        def serve() -> None:
            with __import__("contextlib").suppress(OSError):
                conn, _ = listener.accept()
                conn.sendall(greeting)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    for listener in servers:
        listener.close()


def test_probe_accepts_an_ssh_banner_and_rejects_other_services(banner_server) -> None:
    assert ssh_probe(banner_server(b"SSH-2.0-OpenSSH_9.2\r\n"))("127.0.0.1") is None
    reason = ssh_probe(banner_server(b"HTTP/1.1 400\r\n"))("127.0.0.1")
    assert reason and "without an SSH banner" in reason


def test_probe_reports_refused_and_unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert "refused" in ssh_probe(free)("127.0.0.1").lower()

    def no_such_host(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    assert ssh_probe(22)("m-0-1.m.ns").startswith("does not resolve")


# --- mpirun command ------------------------------------------------------------------------------


def reference_plan(**overrides) -> LaunchPlan:
    """The reference deployment's plan (2 pods x 8 GPUs), derived from the example spec."""
    group = parse_group("llama-405b-0.llama-405b.default", REFERENCE_SPEC.group_size)
    fields = dict(
        backend=REFERENCE_SPEC.backend,
        hosts=tuple(group.hosts),
        slots_per_host=REFERENCE_SPEC.gpus_per_pod,
        tritonserver="/opt/tritonserver/bin/tritonserver",
        model_repository="/var/run/models/repositories/llama-405b",
        ssh_config="/tmp/rt/ssh_config",
        exit_timeout_s=100,
        run_as_root=True,
    )
    return LaunchPlan(**{**fields, **overrides})


def app_contexts(cmd: list[str]) -> list[list[str]]:
    """Split an MPMD command at ':' into its app contexts (the first holds the global options)."""
    contexts, current = [], []
    for arg in cmd:
        if arg == ":":
            contexts.append(current)
            current = []
        else:
            current.append(arg)
    return [*contexts, current]


def test_reference_group_gets_one_mpmd_context_per_rank() -> None:
    plan = reference_plan()
    cmd = mpirun_command(plan)
    assert plan.world_size == REFERENCE_SPEC.world_size
    contexts = app_contexts(cmd)
    assert len(contexts) == REFERENCE_SPEC.world_size
    host_arg = cmd[cmd.index("--host") + 1]
    assert host_arg == "llama-405b-0.llama-405b.default:8,llama-405b-0-1.llama-405b.default:8"
    assert cmd[:2] == ["mpirun", "--allow-run-as-root"]
    assert cmd[cmd.index("--bind-to") + 1] == "none"


def test_rank0_serves_everything_and_other_ranks_only_load_tensorrt_llm() -> None:
    plan = reference_plan()
    rank0, rank5 = server_args(plan, 0), server_args(plan, 5)
    assert "--http-port=8000" in rank0 and "--grpc-port=8001" in rank0 and "--metrics-port=8002" in rank0
    assert "--exit-timeout-secs=100" in rank0 and "--id=rank0" in rank0
    assert not any(arg.startswith("--allow-") and arg.endswith("false") for arg in rank0)
    for flag in ("--allow-http=false", "--allow-grpc=false", "--allow-metrics=false"):
        assert flag in rank5
    assert "--model-control-mode=explicit" in rank5 and f"--load-model={TRTLLM_MODEL}" in rank5
    assert not any(arg.startswith(("--http-port", "--grpc-port", "--metrics-port")) for arg in rank5)
    assert "--backend-config=python,shm-region-prefix-name=prefix5_" in rank5


def mca(cmd: list[str]) -> dict[str, str]:
    return {cmd[i + 1]: cmd[i + 2] for i, arg in enumerate(cmd) if arg == "--mca"}


def test_ssh_is_the_rsh_agent_with_the_reference_transport_settings() -> None:
    params = mca(mpirun_command(reference_plan()))
    assert params["plm_rsh_agent"] == "ssh"
    assert params["plm_rsh_args"] == "-F /tmp/rt/ssh_config"
    assert params["plm_rsh_no_tree_spawn"] == "1"
    assert params["pml"] == "^cm,ucx" and params["btl"] == "tcp,self"
    assert params["btl_tcp_if_exclude"] == "lo,docker0"
    assert "btl_tcp_if_include" not in params


def test_mpi_interface_switches_to_include_for_btl_and_oob() -> None:
    params = mca(mpirun_command(reference_plan(mpi_interface="eth0")))
    assert params["btl_tcp_if_include"] == params["oob_tcp_if_include"] == "eth0"
    assert "btl_tcp_if_exclude" not in params


def test_rank_env_is_exported_in_every_app_context() -> None:
    cmd = mpirun_command(reference_plan(rank_env={"LD_LIBRARY_PATH": "/x"}))
    for context in app_contexts(cmd):
        assert "LD_LIBRARY_PATH=/x" in context


def test_non_root_does_not_allow_run_as_root() -> None:
    assert "--allow-run-as-root" not in mpirun_command(reference_plan(run_as_root=False))


def test_pytorch_backend_runs_every_rank_through_trtllm_llmapi_launch() -> None:
    cmd = mpirun_command(reference_plan(backend="trtllm-pytorch"))
    assert ":" not in cmd
    np_at = cmd.index("-np")
    assert cmd[np_at + 1] == str(REFERENCE_SPEC.world_size)
    assert cmd[np_at + 2] == LLMAPI_LAUNCH
    assert "--id=rank0" in cmd and "--http-port=8000" in cmd


def test_ports_come_from_the_plan() -> None:
    rank0 = server_args(reference_plan(ports=Ports(9000, 9001, 9002)), 0)
    assert {"--http-port=9000", "--grpc-port=9001", "--metrics-port=9002"} <= set(rank0)


# --- ssh configs ---------------------------------------------------------------------------------


def config_lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()}


def test_sshd_config_allows_only_the_release_key_for_the_container_user(tmp_path: Path) -> None:
    lines = config_lines(sshd.render_sshd_config(2222, tmp_path, "triton-server", {}))
    assert {
        "Port 2222",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin no",
        "AllowUsers triton-server",
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}",
        f"HostKey {tmp_path / 'host_key'}",
        "AllowTcpForwarding no",
    } <= lines
    assert not any(line.startswith("SetEnv") for line in lines)


def test_root_containers_may_log_in_as_root_by_key_only(tmp_path: Path) -> None:
    lines = config_lines(sshd.render_sshd_config(2222, tmp_path, "root", {}))
    assert "PermitRootLogin prohibit-password" in lines and "AllowUsers root" in lines


def test_container_env_reaches_ssh_sessions_on_one_setenv_line(tmp_path: Path) -> None:
    env = sshd.session_env(
        {"PATH": "/opt/bin:/usr/bin", "NCCL_DEBUG": "WARN", "HOME": "/root", "OMPI_COMM_WORLD_RANK": "0",
         "SSH_CONNECTION": "x", "BAD": 'say "hi"', "FI_PROVIDER": "efa", "WITH SPACE": "1"}
    )  # fmt: skip
    assert env == {"FI_PROVIDER": "efa", "NCCL_DEBUG": "WARN", "PATH": "/opt/bin:/usr/bin"}
    text = sshd.render_sshd_config(2222, tmp_path, "root", {**env, "X": "a b"})
    setenv = [line for line in text.splitlines() if line.startswith("SetEnv")]
    assert setenv == ['SetEnv "FI_PROVIDER=efa" "NCCL_DEBUG=WARN" "PATH=/opt/bin:/usr/bin" "X=a b"']


def test_ssh_client_config_verifies_host_keys_strictly(tmp_path: Path) -> None:
    lines = config_lines(sshd.render_ssh_config(2222, "root", tmp_path))
    assert {
        "Port 2222",
        "StrictHostKeyChecking yes",
        "BatchMode yes",
        f"IdentityFile {tmp_path / 'client_key'}",
        f"UserKnownHostsFile {tmp_path / 'known_hosts'}",
        "IdentitiesOnly yes",
    } <= lines


def test_keys_are_copied_private_and_missing_ones_named(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    for name in ("id_ecdsa", "known_hosts", "authorized_keys", "ssh_host_ecdsa_key"):
        (secret / name).write_text(name)
        (secret / name).chmod(0o440)
    runtime = sshd.make_runtime_dir(tmp_path)
    assert runtime.stat().st_mode & 0o777 == 0o700
    config = sshd.prepare_leader(secret / "id_ecdsa", secret / "known_hosts", runtime, 2222, "root")
    assert (runtime / "client_key").stat().st_mode & 0o777 == 0o600
    assert (runtime / "client_key").read_text() == "id_ecdsa"
    assert "StrictHostKeyChecking yes" in config.read_text()
    with pytest.raises(sshd.SshSetupError, match=r"host key .*/nope not found"):
        sshd.prepare_worker(secret / "nope", secret / "authorized_keys", runtime, 2222, "root", {})


# --- start checks --------------------------------------------------------------------------------


def test_world_size_must_fill_the_group() -> None:
    assert (
        checks.check_world(REFERENCE_SPEC.group_size, REFERENCE_SPEC.gpus_per_pod, REFERENCE_SPEC.world_size)
        == []
    )
    (problem,) = checks.check_world(3, 8, 16)
    assert "world size 16 != LWS group size 3 x GPUs per node 8 (= 24)" in problem


def engine_config(world: int, tp: int, pp: int, per_node: int | None) -> dict:
    mapping = {"world_size": world, "tp_size": tp, "pp_size": pp}
    if per_node is not None:
        mapping["gpus_per_node"] = per_node
    return {"version": "0.12.0", "pretrained_config": {"mapping": mapping}, "build_config": {}}


def test_engine_mapping_matching_the_group_passes() -> None:
    assert checks.check_engine_mapping(engine_config(16, 8, 2, 8), 16, 8) == []
    assert checks.check_engine_mapping(engine_config(16, 8, 2, None), 16, 8) == []
    # One pod with 4 of a node's 8 GPUs (TP4): built with the node's 8, ranks still map 1:1.
    assert checks.check_engine_mapping(engine_config(4, 4, 1, 8), 4, 4) == []
    assert "gpus_per_node=2" in checks.check_engine_mapping(engine_config(4, 4, 1, 2), 4, 4)[0]


def test_engine_built_for_another_world_or_node_size_is_refused() -> None:
    (world,) = checks.check_engine_mapping(engine_config(8, 8, 1, 8), 16, 8)
    assert "built for world size 8" in world
    (per_node,) = checks.check_engine_mapping(engine_config(16, 8, 2, 4), 16, 8)
    assert "gpus_per_node=4" in per_node and "8 GPUs" in per_node
    (shapeless,) = checks.check_engine_mapping({"build_config": {}}, 16, 8)
    assert "no pretrained_config.mapping" in shapeless


def test_engine_dir_is_found_through_the_tensorrt_llm_config(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "config.json").write_text(json.dumps(engine_config(16, 8, 2, 8)))
    model = tmp_path / "repo" / TRTLLM_MODEL
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        f'backend: "tensorrtllm"\nparameters: {{\n  key: "gpt_model_path"\n  value: {{\n'
        f'    string_value: "{engines}"\n  }}\n}}\n'
    )
    found = checks.engine_dir_from_repository(tmp_path / "repo")
    assert found == engines
    assert checks.check_engine_dir(found, 16, 8) == []
    assert "config.json not found" in checks.check_engine_dir(tmp_path, 16, 8)[0]
    assert "no engine directory" in checks.check_engine_dir(None, 16, 8)[0]


def test_llmapi_options_are_read_from_the_repository_publish_writes(tiny_model: Path, tmp_path: Path) -> None:
    """The tp x pp check reads tensorrt_llm/1/model.yaml as steps.publish renders it for
    trtllm-pytorch (tensorrtllm_backend v0.19.0 all_models/llmapi: model.py refuses to load without
    it and hands `model` to the LLM API); a missing file or checkpoint is a problem, not a pass."""
    from steps.publish import CPU_LLMAPI_TEMPLATES, render_repository

    spec = load_spec(ROOT / "workflows" / "examples" / "llama-3.1-70b-pytorch-fp8.yaml")
    checkpoint = tmp_path / "fp8"  # the example serves FP8: a ModelOpt-quantized checkpoint's marker
    shutil.copytree(tiny_model, checkpoint)
    (checkpoint / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "FP8"}}')
    repo = render_repository(spec, checkpoint, checkpoint, CPU_LLMAPI_TEMPLATES, tmp_path / "repo")
    assert checks.check_llmapi_options(repo, spec.world_size) == []
    (wrong,) = checks.check_llmapi_options(repo, 2 * spec.world_size)
    tp_pp = f"tensor_parallel_size {spec.build.tp} x pipeline_parallel_size {spec.build.pp}"
    assert f"{tp_pp} != world size {2 * spec.world_size}" in wrong
    options = repo / checks.LLMAPI_OPTIONS
    options.write_text(options.read_text().replace(str(checkpoint), str(tmp_path / "unmounted")))
    assert "holds no config.json" in checks.check_llmapi_options(repo, spec.world_size)[0]
    options.unlink()
    assert "not found; publish the repository" in checks.check_llmapi_options(repo, spec.world_size)[0]


def test_network_summary_reports_efa_settings_and_the_nccl_plugin(tmp_path: Path) -> None:
    (tmp_path / "libnccl-net.so").write_text("")
    line = checks.network_summary({"FI_PROVIDER": "efa", "LD_LIBRARY_PATH": str(tmp_path)}, lib_dirs=())
    assert "FI_PROVIDER=efa" in line and "NCCL_NET_PLUGIN=-" in line
    assert f"nccl-net-plugin={tmp_path / 'libnccl-net.so'}" in line
    assert "nccl-net-plugin=none" in checks.network_summary({}, lib_dirs=())


# --- supervision helpers -------------------------------------------------------------------------


def test_drain_budget_keeps_a_kill_margin() -> None:
    assert drain_budget(REFERENCE_SPEC.serving.termination_grace_s) == pytest.approx(108)
    assert drain_budget(20) == 15
    assert drain_budget(3) == 1


def test_process_tree_helpers_find_and_stop_descendants() -> None:
    # Tree: bash -> (sh wrapper "--id=rank0" -> python "--id=rank0"), sleep. The wrapper carries
    # the marker too (like trtllm-llmapi-launch); only the named program counts.
    python = Path(sys.executable)
    sleeper = f'{python} -c "import time; time.sleep(30)" --id=rank0'
    script = f"sh -c '{sleeper}; true' --id=rank0 & sleep 30 & wait"
    shell = subprocess.Popen(["bash", "-c", script])
    try:
        deadline = time.monotonic() + 5
        while len(descendants(shell.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(descendants(shell.pid)) == 3
        rank0 = find_process(shell.pid, python.name, "--id=rank0")
        assert rank0 in descendants(shell.pid) and cmdline(rank0)[0] == str(python)
        assert find_process(shell.pid, python.name, "--id=rank9") is None
        descendants_before = descendants(shell.pid)
        stopped = signal_tree(shell.pid, 9)
        assert set(stopped) == {*descendants_before, shell.pid}
        shell.wait(timeout=5)  # killed, or exited when its children died first
        assert descendants(shell.pid) == []
    finally:
        if shell.poll() is None:
            shell.kill()


# --- CLI (subprocesses: the roles install signal handlers) ---------------------------------------


def launcher(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LWS_")} | env
    return subprocess.run(
        [sys.executable, "-m", "steps.launcher", *args],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def leader_args(tmp_path: Path, world: int, per_node: int) -> list[str]:
    return [
        "leader", "--backend", "trtllm-engine", "--model-repository", str(tmp_path),
        "--engine-dir", str(tmp_path), "--world-size", str(world), "--gpus-per-node", str(per_node),
        "--barrier-timeout", "1",
    ]  # fmt: skip


def test_leader_outside_an_lws_pod_exits_2_naming_the_variables(tmp_path: Path) -> None:
    done = launcher(leader_args(tmp_path, 16, 8), {}, tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: LWS_LEADER_ADDRESS and LWS_GROUP_SIZE not set")
    )


def test_leader_with_a_mismatched_engine_exits_1_before_waiting(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(engine_config(16, 8, 2, 4)))
    env = {"LWS_LEADER_ADDRESS": "m-0.m.ns", "LWS_GROUP_SIZE": "2"}
    done = launcher(leader_args(tmp_path, 16, 8), env, tmp_path)
    assert done.returncode == 1
    assert "gpus_per_node=4" in done.stderr and "[barrier]" not in done.stderr


def test_leader_with_the_wrong_world_size_exits_1(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(engine_config(16, 8, 2, 8)))
    env = {"LWS_LEADER_ADDRESS": "m-0.m.ns", "LWS_GROUP_SIZE": "3"}
    done = launcher(leader_args(tmp_path, 16, 8), env, tmp_path)
    assert done.returncode == 1 and "LWS group size 3" in done.stderr


def test_leader_without_its_server_programs_exits_1_before_waiting(tmp_path: Path) -> None:
    env = {"LWS_LEADER_ADDRESS": "m-0.m.ns", "LWS_GROUP_SIZE": "2", "MEGAPOD_TRITON_HOME": str(tmp_path)}
    pytorch = [
        "leader", "--backend", "trtllm-pytorch", "--model-repository", str(tmp_path), "--world-size", "16",
        "--gpus-per-node", "8", "--tritonserver", str(tmp_path / "tritonserver"),
    ]  # fmt: skip
    done = launcher(pytorch, env, tmp_path)
    assert done.returncode == 1 and "[barrier]" not in done.stderr
    assert f"{tmp_path / 'tritonserver'} and trtllm-llmapi-launch not found" in done.stderr
    cpu = [*pytorch[:2], "cpu-python", *pytorch[3:]]
    done = launcher(cpu, env, tmp_path)
    assert done.returncode == 1 and "the tritonserver binary not found" in done.stderr


def test_worker_without_the_secret_exits_1_naming_the_file(tmp_path: Path) -> None:
    args = ["worker", "--host-key", str(tmp_path / "missing"), "--authorized-keys", str(tmp_path / "ak")]
    done = launcher(args, {}, tmp_path)
    assert done.returncode == 1
    assert f"host key {tmp_path / 'missing'} not found" in done.stderr


def test_a_uid_without_passwd_entry_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from steps.launcher import __main__ as cli

    def unknown() -> str:
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.setattr(cli.getpass, "getuser", unknown)
    with pytest.raises(sshd.SshSetupError, match=r"uid \d+ has no /etc/passwd entry"):
        cli._user()


def test_bad_numbers_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "steps.launcher", "leader", "--backend", "cpu-python",
         "--model-repository", "/x", "--world-size", "0", "--gpus-per-node", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "--world-size must be >= 1" in done.stderr


# --- the chart's command lines parse, and agree with each other and the spec ----------------------

EXAMPLES = sorted((ROOT / "workflows" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("spec_file", EXAMPLES, ids=lambda p: p.stem)
def test_the_charts_launcher_arguments_are_accepted_and_consistent(spec_file: Path) -> None:
    """Render charts/triton-lws with real helm; the launcher's own parser reads what the pods run."""
    from steps.launcher.__main__ import parser
    from tests.test_chart import one, pod_templates, render
    from workflows.chart_values import chart_values

    spec = load_spec(spec_file)
    objects = render(chart_values(spec))
    pods = pod_templates(objects)
    leader = parser().parse_args(pods["leader"]["spec"]["containers"][0]["args"])
    worker = parser().parse_args(pods["worker"]["spec"]["containers"][0]["args"])
    assert (leader.role, worker.role) == ("leader", "worker")
    assert leader.backend == spec.backend
    assert (leader.world_size, leader.gpus_per_node) == (spec.world_size, spec.gpus_per_pod)
    size = one(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["size"]
    assert checks.check_world(size, leader.gpus_per_node, leader.world_size) == []
    assert leader.ssh_port == worker.ssh_port == spec.serving.ssh_port
    assert leader.grace_period == worker.grace_period == spec.serving.termination_grace_s
    assert leader.barrier_timeout == spec.serving.barrier_timeout_s
    secret = one(objects, "Secret")
    keys = {*secret.get("stringData", {}), *secret.get("data", {})}
    for path in (leader.identity, leader.known_hosts, worker.host_key, worker.authorized_keys):
        assert path.parent == Path("/etc/megapod/ssh") and path.name in keys, path


def test_leader_refuses_a_repository_unlike_its_manifest(tiny_model: Path, tmp_path: Path) -> None:
    """Issue 13.2, cluster path: the leader checks what its pod mounted against publish's manifest
    before the barrier. The trtllm-pytorch repository (tensorrtllm_backend v0.19.0 all_models/llmapi:
    one model, no ensemble) passes as published; a changed or stray file does not."""
    from steps.publish import CPU_LLMAPI_TEMPLATES, publish

    spec = load_spec(ROOT / "workflows" / "examples" / "llama-3.1-70b-pytorch-fp8.yaml")
    checkpoint = tmp_path / "fp8"
    shutil.copytree(tiny_model, checkpoint)
    (checkpoint / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "FP8"}}')
    repo = tmp_path / "repo"
    publish(spec, checkpoint, checkpoint, str(repo), CPU_LLMAPI_TEMPLATES)
    env = {"LWS_LEADER_ADDRESS": "m-0.m.ns", "LWS_GROUP_SIZE": str(spec.group_size)}
    args = [
        "leader", "--backend", "trtllm-pytorch", "--model-repository", str(repo),
        "--world-size", str(spec.world_size), "--gpus-per-node", str(spec.gpus_per_pod),
        "--barrier-timeout", "1",
    ]  # fmt: skip
    assert "is not complete" not in launcher(args, env, tmp_path).stderr
    for damage in (repo / TRTLLM_MODEL / "1" / "model.py", repo / "stray" / "config.pbtxt"):
        damage.parent.mkdir(parents=True, exist_ok=True)
        damage.write_text("# not what publish wrote\n")
        done = launcher(args, env, tmp_path)
        assert done.returncode == 1 and "[barrier]" not in done.stderr
        assert f"model repository {repo} is not complete" in done.stderr and damage.name in done.stderr


# --- issue 13.4: no secrets at rest -------------------------------------------------------------

SECRETS = {
    "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0123",
    "HUGGING_FACE_HUB_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0124",
    "AWS_ACCESS_KEY_ID": "AKIAABCDEFGHIJKLMNOP",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN",
    "GITHUB_TOKEN": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "APP_SETTING": "anything the ranks do not read",
}
RANK_ENV = {
    "PATH": "/opt/tritonserver/bin:/usr/local/mpi/bin:/usr/bin",
    "LD_LIBRARY_PATH": "/usr/local/mpi/lib",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "NCCL_DEBUG": "WARN",
    "FI_PROVIDER": "efa",
    "FI_EFA_USE_DEVICE_RDMA": "1",
    "NVIDIA_VISIBLE_DEVICES": "all",
}


def test_ssh_sessions_get_only_what_the_ranks_need() -> None:
    """An allow-list (Open MPI's PATH/LD_LIBRARY_PATH, CUDA_/NCCL_/FI_ variables), not the whole env;
    a local group's marker still reaches the ranks, so strays of a crashed group can be found."""
    from steps.localgroup.group import MARKER_VAR

    wanted = {**RANK_ENV, MARKER_VAR: "0123abcd"}
    assert sshd.session_env({**wanted, **SECRETS}) == dict(sorted(wanted.items()))


def test_worker_configs_are_private_hold_no_secret_and_go_when_it_exits(tmp_path: Path) -> None:
    """The real worker with OpenSSH's sshd (Debian 12, `sshd -D -e -f`): its runtime directory under
    --runtime-dir holds 0600 files without any token while it runs, and is gone after SIGTERM."""
    from tests.support.triton import free_port

    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(keys / "host")], check=True)
    runtime = tmp_path / "run"
    runtime.mkdir()
    args = ["worker", "--host-key", str(keys / "host"), "--authorized-keys", str(keys / "host.pub"),
            "--ssh-port", str(free_port()), "--runtime-dir", str(runtime), "--listen-address", "127.0.0.1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWS_")} | SECRETS
    worker = subprocess.Popen([sys.executable, "-m", "steps.launcher", *args], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not list(runtime.glob("*/sshd_config")) and time.monotonic() < deadline:
            time.sleep(0.1)
        files = [p for p in runtime.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {sshd.SSHD_CONFIG, sshd.HOST_KEY, sshd.AUTHORIZED_KEYS}
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
        text = (next(runtime.iterdir()) / sshd.SSHD_CONFIG).read_text()
        assert not [name for name, value in SECRETS.items() if value in text or name in text]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert list(runtime.iterdir()) == []
