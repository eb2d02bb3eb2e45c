"""steps.deploy: cluster mode with the helm test double (tests/doubles/helm: records calls and renders
the real chart with real `helm template`) and the Kubernetes API stand-in (tests/support/kube.py, a
test double for kube-apiserver); the smoke request goes to a real tritonserver. Local mode starts a
real tritonserver and tears it down by its pid file.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from steps.deploy import main as deploy_main
from steps.deploy import smoke_request
from steps.manifest import REPOSITORY_MANIFEST
from tests.support import kube
from workflows.chart_values import chart_values
from workflows.spec import Backend, parse_spec

ROOT = Path(__file__).resolve().parents[1]
HELM_DOUBLE = ROOT / "tests" / "doubles" / "helm"
RELEASE = "tiny"
LWS = "tiny-triton-lws"


def write_spec(tmp_path: Path, *, http: int = 8000, grpc: int = 8001, metrics: int = 8002,
               backend: str = "trtllm-engine") -> tuple[Path, Path]:
    data = {
        "name": RELEASE,
        "model": {"source": "/models/tiny", "parameters_billion": 0.001},
        "backend": backend,
        "cluster": {"gpus_per_node": 1},
        "serving": {"service": {"type": "NLB", "http_port": http, "grpc_port": grpc, "metrics_port": metrics},
                    "startup_timeout_s": 30},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    values = tmp_path / "chart-values.yaml"
    values.write_text(yaml.safe_dump(chart_values(parse_spec(data))))
    return spec_path, values


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The API stand-in with a kubeconfig, and the helm double recording into helm.log."""
    api = kube.FakeKubeAPI().start()
    monkeypatch.setenv("MEGAPOD_HELM", str(HELM_DOUBLE))
    monkeypatch.setenv("HELM_DOUBLE_LOG", str(tmp_path / "helm.log"))
    api.kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    yield api
    api.stop()


def helm_calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "helm.log").read_text().splitlines()]


class PhaseLog(logging.Handler):
    """Collects deploy's progress lines so the scripted cluster moves on once deploy saw a phase."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, text: str, timeout_s: float = 20.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(text in line for line in self.lines), timeout_s), text


def bring_up_group(api: kube.FakeKubeAPI, seen: PhaseLog) -> None:
    """What the LWS controller, scheduler and kubelet do after `helm install`, one state per phase
    deploy reports (so the script does not race deploy's watches)."""
    pod = {"release": RELEASE}
    states = [
        ("scheduling", kube.group_pod(LWS, 0, 0, unschedulable="0/1 nodes are available", **pod)),
        ("pulling", kube.group_pod(LWS, 0, 0, node_name="n1", waiting="ContainerCreating", **pod)),
        ("loading", kube.group_pod(LWS, 0, 0, phase="Running", node_name="n1", **pod)),
        ("ready", kube.group_pod(LWS, 0, 0, phase="Running", ready=True, node_name="n1", **pod)),
    ]

    def script() -> None:
        api.put("leaderworkersets", kube.lws(LWS, RELEASE, replicas=1, ready=0))
        for phase, state in states:
            api.put("pods", state)
            seen.wait_for(f"group 0: {phase}")
        api.put("leaderworkersets", kube.lws(LWS, RELEASE, replicas=1, ready=1))

    threading.Thread(target=script, daemon=True).start()


@pytest.mark.integration
def test_deploy_waits_for_group_then_smoke_tests(cluster, triton_server, tmp_path, caplog,
                                                monkeypatch) -> None:
    """helm upgrade --install with the values file, per-group progress through every phase, a
    streaming smoke request through tritonclient to the Service's address, outputs written."""
    spec, values = write_spec(tmp_path, http=triton_server.http_port, grpc=triton_server.grpc_port,
                              metrics=triton_server.metrics_port)
    cluster.put("services", kube.service(LWS, RELEASE, ip="127.0.0.1"))
    # The scripted cluster reacts once helm has "installed" the release.
    import steps.deploy

    real_run_helm = steps.deploy.run_helm
    seen = PhaseLog()
    logging.getLogger("megapod.deploy").addHandler(seen)
    monkeypatch.setattr(steps.deploy, "run_helm",
                        lambda command: (real_run_helm(command), bring_up_group(cluster, seen)))
    caplog.set_level(logging.INFO, logger="megapod.deploy")
    outputs = tmp_path / "outputs"
    code = deploy_main(["--spec", str(spec), "--values", str(values), "--outputs", str(outputs),
                        "--kubeconfig", str(cluster.kubeconfig)])
    assert code == 0
    assert (outputs / "endpoint").read_text() == f"127.0.0.1:{triton_server.http_port}"
    assert (outputs / "grpc_endpoint").read_text() == f"127.0.0.1:{triton_server.grpc_port}"
    (call,) = helm_calls(tmp_path)
    assert call[:4] == ["upgrade", "--install", RELEASE, str(ROOT / "charts" / "triton-lws")]
    assert call[call.index("--values") + 1] == str(values)
    phases = [r.getMessage() for r in caplog.records if r.getMessage().startswith("group 0:")]
    assert [p.split()[2] for p in phases] == ["scheduling", "pulling", "loading", "ready"]
    assert any("smoke:" in r.getMessage() for r in caplog.records)
    logging.getLogger("megapod.deploy").removeHandler(seen)


@pytest.mark.integration
def test_smoke_request_streams_tokens(triton_server) -> None:
    assert smoke_request(triton_server.grpc_url) >= 1


def test_deploy_timeout_names_unready_pods_and_reasons(cluster, tmp_path, capsys) -> None:
    """A group that cannot schedule: exit 1 with one line naming the pod, why, and its last event."""
    spec, values = write_spec(tmp_path)
    cluster.put("leaderworkersets", kube.lws(LWS, RELEASE, replicas=1, ready=0))
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    cluster.put("pods", kube.group_pod(LWS, 0, 0, unschedulable=message, release=RELEASE))
    cluster.put("pods", kube.group_pod(LWS, 0, 1, phase="Running", node_name="n1", release=RELEASE))
    cluster.put("events", kube.event(f"{LWS}-0", "FailedScheduling", message))
    cluster.put("events", kube.event("other-pod", "Pulled", "unrelated"))
    code = deploy_main(["--spec", str(spec), "--values", str(values), "--timeout", "2",
                        "--outputs", str(tmp_path / "out"), "--kubeconfig", str(cluster.kubeconfig)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    line = err[0]
    assert f"{LWS}-0: Unschedulable: {message} (last event: FailedScheduling: {message})" in line
    assert f"{LWS}-0-1: worker: running, not ready" in line
    assert "unrelated" not in line
    assert not (tmp_path / "out").exists()


def test_helm_failure_is_one_line(cluster, tmp_path, capsys, monkeypatch) -> None:
    spec, values = write_spec(tmp_path)
    monkeypatch.setenv("HELM_DOUBLE_FAIL", 'UPGRADE FAILED: "tiny" has no deployed releases')
    code = deploy_main(["--spec", str(spec), "--values", str(values),
                        "--kubeconfig", str(cluster.kubeconfig)])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        'error: upgrade --install failed: Error: UPGRADE FAILED: "tiny" has no deployed releases')


def test_teardown_uninstalls_and_waits_for_pods(cluster, tmp_path) -> None:
    """--teardown: helm uninstall, then returns only once the release's pods are gone."""
    spec, _ = write_spec(tmp_path)
    for worker in (0, 1):
        cluster.put("pods", kube.group_pod(LWS, 0, worker, phase="Running", release=RELEASE))
    cluster.put("pods", kube.group_pod("other-lws", 0, 0, phase="Running", release="other"))
    kube.Scenario(cluster, [(1.0, lambda a: a.delete("pods", "default", f"{LWS}-0")),
                            (1.5, lambda a: a.delete("pods", "default", f"{LWS}-0-1"))]).start()
    started = time.monotonic()
    assert deploy_main(["--spec", str(spec), "--teardown", "--kubeconfig", str(cluster.kubeconfig)]) == 0
    assert time.monotonic() - started >= 1.5
    assert helm_calls(tmp_path) == [["uninstall", RELEASE, "--namespace", "default", "--ignore-not-found"]]


def test_bad_values_file_is_rejected(tmp_path, capsys) -> None:
    spec, _ = write_spec(tmp_path)
    bad = tmp_path / "values.yaml"
    bad.write_text("replicas: 2\n")
    assert deploy_main(["--spec", str(spec), "--values", str(bad)]) == 2
    assert "chart-values.yaml" in capsys.readouterr().err


@pytest.mark.integration
def test_local_deploy_serves_and_teardown_stops_it(tiny_model, tmp_path) -> None:
    """Backend cpu-python: deploy starts the local group through steps.localgroup (the real launcher;
    network namespaces as root, else plain processes), the outputs point at its leader and say which
    isolation ran; --teardown (run folder from $MEGAPOD_LOCAL_RUN, as the local executor sets it)
    stops it and leaves no state."""
    import os

    from steps.cpu_backend.repository import write_ensemble_single
    from tests.support.triton import free_port

    ports = [free_port() for _ in range(3)]
    spec, values = write_spec(tmp_path, http=ports[0], grpc=ports[1], metrics=ports[2], backend="cpu-python")
    repository = tmp_path / "repository"
    write_ensemble_single(repository, tiny_model)
    write_repository_manifest(repository)
    run_dir, outputs = tmp_path / "run", tmp_path / "outputs"
    args = ["--spec", str(spec), "--values", str(values), "--run-dir", str(run_dir),
            "--repository", str(repository), "--outputs", str(outputs)]
    assert deploy_main(args) == 0
    state_file = run_dir / "deploy" / RELEASE / "state.json"
    try:
        isolation = (outputs / "isolation").read_text()
        assert isolation == ("netns" if os.geteuid() == 0 else "processes")
        host = (outputs / "endpoint").read_text().rsplit(":", 1)[0]
        assert (outputs / "endpoint").read_text() == f"{host}:{ports[0]}"
        assert (outputs / "grpc_endpoint").read_text() == f"{host}:{ports[1]}"
        assert json.loads(state_file.read_text())["isolation"] == isolation
        assert smoke_request((outputs / "grpc_endpoint").read_text()) >= 1
    finally:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MEGAPOD_LOCAL_RUN", str(run_dir))
            assert deploy_main(["--spec", str(spec), "--teardown"]) == 0
    assert not state_file.exists()
    with socket.socket() as probe:
        probe.settimeout(1)
        assert probe.connect_ex((host, ports[0])) != 0
    assert deploy_main(["--spec", str(spec), "--teardown", "--run-dir", str(run_dir)]) == 0  # idempotent


def write_repository_manifest(repository: Path) -> None:
    """The manifest publish writes last (steps.publish), for a repository a test wrote itself."""
    from steps.manifest import Manifest, hash_tree, repository_manifest_path, write_manifest

    manifest = Manifest(kind="repository", source="test", revision="", files=hash_tree(repository))
    write_manifest(repository, manifest, path=repository_manifest_path(repository))


@pytest.mark.parametrize("damage", ["no manifest", "changed", "removed", "stray file"])
def test_local_deploy_refuses_a_damaged_repository_in_one_line(damage, tmp_path, capsys) -> None:
    """Before any pod starts: files are checked against publish's manifest, not a model's name
    (today only ensemble/config.pbtxt is looked for, so each of these damages would be served)."""
    from steps.contract import contract_for

    spec, values = write_spec(tmp_path, backend="cpu-python")
    repository = tmp_path / "repository"
    for model in contract_for(Backend.CPU_PYTHON).repository:
        (repository / model / "1").mkdir(parents=True)
        (repository / model / "config.pbtxt").write_text(f"name: '{model}'\n")
    write_repository_manifest(repository)
    model = repository / "tensorrt_llm" / "config.pbtxt"
    {
        "no manifest": lambda: (repository / REPOSITORY_MANIFEST).unlink(),
        "changed": lambda: model.write_text("name: 'other'\n"),
        "removed": model.unlink,
        "stray file": lambda: (repository / "stray.txt").write_text("x"),
    }[damage]()
    args = ["--spec", str(spec), "--values", str(values), "--run-dir", str(tmp_path / "run"),
            "--repository", str(repository), "--outputs", str(tmp_path / "outputs")]
    assert deploy_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a complete published model repository" in err[0]
    assert not (tmp_path / "run" / "deploy").exists()
