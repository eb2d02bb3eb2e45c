"""The local executor on small synthetic Argo workflows (real processes, no test doubles).

Each workflow is written here as the YAML `megapod render` would write; tasks are tiny
`python -c` programs run by the executor as local processes.
"""

from __future__ import annotations

import json
import socket
import sys
import textwrap
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from workflows.chart_values import SCALING_SERIES, chart_values
from workflows.local.documents import load_documents
from workflows.local.engine import LocalEnvironment
from workflows.local.errors import LocalRunError, UnsupportedFeature
from workflows.local.expressions import (
    FAILED,
    OMITTED,
    SKIPPED,
    SUCCEEDED,
    evaluate_when,
    parse_depends,
    substitute,
)
from workflows.local.nodes import Node
from workflows.local.paths import PathMap
from workflows.local.process import parse_duration
from workflows.local.runner import execute
from workflows.local.standins import StandIns, background_server, free_port, start_prometheus
from workflows.render import render_to_dir
from workflows.spec import load_spec

IMAGE = "example.org/pipeline:test"
VOLUME = "/var/run/models"


def container(code: str, **extra: object) -> dict:
    """A container template body running `python -c code` with the shared volume mounted."""
    return {
        "image": IMAGE,
        "command": ["python", "-c", textwrap.dedent(code)],
        "volumeMounts": [{"name": "models", "mountPath": VOLUME}],
        **extra,
    }


def workflow(tasks: list[dict], templates: list[dict], **spec: object) -> dict:
    """A Workflow whose entrypoint DAG has `tasks`."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "synthetic-"},
        "spec": {
            "entrypoint": "main",
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
            "templates": [{"name": "main", "dag": {"tasks": tasks}}, *templates],
            **spec,
        },
    }


def run(
    tmp_path: Path, *docs: dict, secrets: dict | None = None, resume: dict | None = None, **kwargs
) -> tuple:
    """Write docs as YAML, execute them; return (exit code, status.json, run folder)."""
    source = tmp_path / "rendered.yaml"
    source.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    run_dir = tmp_path / "run"
    environment = LocalEnvironment(images={IMAGE: Path(sys.executable)}, secrets=secrets or {})
    code = execute(load_documents([source], **kwargs), run_dir, environment, resume=resume)
    return code, json.loads((run_dir / "status.json").read_text()), run_dir


def phases(status: dict) -> dict[str, str]:
    return {key: node["phase"] for key, node in status["nodes"].items()}


def volume(run_dir: Path) -> Path:
    return run_dir / "volumes" / "models"


# --- expressions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("'cpu-python' != 'trtllm-pytorch'", True),
        ("'false' == 'false'", True),
        ("heads == heads && !(tails == heads)", True),
        ("3 > 10", False),
        ("'a' == 'b' || 2 >= 2", True),
        ("true", True),
        ("abc =~ '^a'", True),
    ],
)
def test_when_evaluates_like_argo(expression: str, expected: bool) -> None:
    assert evaluate_when(expression, "t") is expected


def test_when_with_unquoted_hyphen_is_refused_with_a_hint() -> None:
    with pytest.raises(UnsupportedFeature, match="quote values containing '-'"):
        evaluate_when("cpu-python == x", "t")


def test_depends_bare_name_accepts_skipped_but_not_failed() -> None:
    depends = parse_depends("a && (b.Failed || b.Errored)", "t")
    assert depends.tasks == ["a", "b"]
    phase = {"a": SKIPPED, "b": FAILED}
    assert depends.evaluate(phase.get, lambda *_: False)
    phase["a"] = FAILED
    assert not depends.evaluate(phase.get, lambda *_: False)


def test_depends_refuses_results_argo_does_not_have() -> None:
    with pytest.raises(UnsupportedFeature, match=r"\.Completed is not supported"):
        parse_depends("a.Completed", "t")


def test_substitute_names_the_unresolved_variable() -> None:
    assert substitute("x={{ inputs.parameters.x }}", {"inputs.parameters.x": "1"}, "t") == "x=1"
    with pytest.raises(LocalRunError, match=r"cannot resolve \{\{tasks.a.outputs.result\}\}"):
        substitute("{{tasks.a.outputs.result}}", {}, "t")


def test_path_map_rewrites_whole_path_components_only() -> None:
    paths = PathMap()
    paths.add(VOLUME, Path("/run/v"))
    paths.add("/tmp/outputs", Path("/run/t/out"))
    text = f"--dest {VOLUME}/ckpt --outputs=/tmp/outputs /tmp/outputsx s3:/{VOLUME}"
    local = f"--dest /run/v/ckpt --outputs=/run/t/out /tmp/outputsx s3:/{VOLUME}"
    assert paths.rewrite(text) == local
    assert paths.restore(local) == text


def test_durations() -> None:
    assert parse_duration("1m30s", "t") == 90
    assert parse_duration("250ms", "t") == 0.25
    assert parse_duration("7", "t") == 7
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon", "t")


# --- workflows ------------------------------------------------------------------------------------

WAIT_FOR_PEER = """
    import pathlib, sys, time
    me, peer = sys.argv[1], sys.argv[2]
    root = pathlib.Path("/var/run/models")
    (root / me).write_text(str(time.time()))
    deadline = time.time() + 20
    while not (root / peer).exists():
        if time.time() > deadline:
            sys.exit(f"{peer} never started while {me} ran: not concurrent")
        time.sleep(0.05)
"""


def test_independent_branches_run_at_the_same_time(tmp_path: Path) -> None:
    """Each branch waits for the other to have started: only concurrent execution can pass."""
    template = {"name": "wait", "inputs": {"parameters": [{"name": "me"}, {"name": "peer"}]},
                "container": container(WAIT_FOR_PEER, args=["{{inputs.parameters.me}}",
                                                            "{{inputs.parameters.peer}}"])}  # fmt: skip

    def task(me: str, peer: str) -> dict:
        args = [{"name": "me", "value": me}, {"name": "peer", "value": peer}]
        return {"name": me, "template": "wait", "arguments": {"parameters": args}}

    code, status, run_dir = run(
        tmp_path, workflow([task("left", "right"), task("right", "left")], [template])
    )
    assert code == 0, status
    assert phases(status) == {"left": SUCCEEDED, "right": SUCCEEDED}
    left, right = (float((volume(run_dir) / n).read_text()) for n in ("left", "right"))
    assert abs(left - right) < 10
    assert (run_dir / "tasks" / "left" / "log.txt").is_file()


OK = {"name": "ok", "container": container("print('ok')")}
FAIL = {"name": "fail", "container": container("import sys; sys.exit(3)")}


def test_when_false_skips_and_dependants_resolve_like_argo(tmp_path: Path) -> None:
    tasks = [
        {"name": "gate", "template": "ok", "when": "'{{workflow.parameters.backend}}' == 'trtllm-pytorch'"},
        {"name": "after-bare", "template": "ok", "depends": "gate"},
        {"name": "after-succeeded", "template": "ok", "depends": "gate.Succeeded"},
        {"name": "after-skipped", "template": "ok", "depends": "gate.Skipped"},
    ]
    doc = workflow(tasks, [OK], arguments={"parameters": [{"name": "backend", "value": "cpu-python"}]})
    code, status, run_dir = run(tmp_path, doc)
    assert code == 0
    assert phases(status) == {
        "gate": SKIPPED,
        "after-bare": SUCCEEDED,
        "after-succeeded": OMITTED,
        "after-skipped": SUCCEEDED,
    }
    assert "cpu-python" in status["nodes"]["gate"]["message"]
    assert not (run_dir / "tasks" / "gate").exists()


EXIT_HOOK = {
    "name": "exit-hook",
    "container": container(
        "import pathlib, sys; pathlib.Path('/var/run/models/exit-status').write_text(sys.argv[1])",
        args=["{{workflow.status}}"],
    ),
}


def test_failing_task_stops_its_dependants_and_the_exit_hook_still_runs(tmp_path: Path) -> None:
    tasks = [
        {"name": "first", "template": "fail"},
        {"name": "second", "template": "ok", "depends": "first"},
        {"name": "third", "template": "ok", "dependencies": ["second"]},
    ]
    code, status, run_dir = run(tmp_path, workflow(tasks, [OK, FAIL, EXIT_HOOK], onExit="exit-hook"))
    assert code == 1
    assert status["phase"] == FAILED
    assert phases(status) == {"first": FAILED, "second": OMITTED, "third": OMITTED, "onExit": SUCCEEDED}
    assert "exit code 3" in status["nodes"]["first"]["message"]
    assert (volume(run_dir) / "exit-status").read_text() == FAILED


def test_fail_fast_starts_no_new_branch_after_an_unhandled_failure(tmp_path: Path) -> None:
    slow = {"name": "slow", "container": container("import time; time.sleep(1.5)")}
    tasks = [
        {"name": "broken", "template": "fail"},
        {"name": "running", "template": "slow"},
        {"name": "later", "template": "ok", "depends": "running"},
    ]
    code, status, _ = run(tmp_path, workflow(tasks, [OK, FAIL, slow]))
    assert code == 1
    assert phases(status) == {"broken": FAILED, "running": SUCCEEDED, "later": OMITTED}
    assert status["nodes"]["later"]["message"] == "not started: broken failed (failFast)"


def test_a_handled_failure_runs_the_handler_and_the_workflow_succeeds(tmp_path: Path) -> None:
    tasks = [
        {"name": "risky", "template": "fail"},
        {"name": "report", "template": "ok", "depends": "risky.Succeeded || risky.Failed"},
    ]
    code, status, _ = run(tmp_path, workflow(tasks, [OK, FAIL]))
    assert phases(status) == {"risky": FAILED, "report": SUCCEEDED}
    assert code == 0


PRODUCE = {
    "name": "produce",
    "outputs": {"parameters": [{"name": "checkpoint", "valueFrom": {"path": "/tmp/outputs/checkpoint"}}]},
    "container": container(
        """
        import pathlib, sys
        out = pathlib.Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        ckpt = pathlib.Path(sys.argv[1]) / "checkpoints" / "tiny"
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text("{}")
        (out / "checkpoint").write_text(str(ckpt))
        """,
        args=["/var/run/models", "/tmp/outputs"],
    ),
}
SPEC = "{{workflow.parameters.spec}}"
CONSUME = {
    "name": "consume",
    "inputs": {
        "parameters": [{"name": "checkpoint"}, {"name": "label", "default": "run {{workflow.name}}"}],
        "artifacts": [{"name": "spec-file", "path": "/tmp/megapod/spec.yaml", "raw": {"data": SPEC}}],
    },
    "outputs": {"parameters": [{"name": "seen", "valueFrom": {"path": "/tmp/outputs/seen"}}]},
    "container": container(
        """
        import os, pathlib, sys
        ckpt, spec, outputs, label = map(pathlib.Path, sys.argv[1:5])
        assert (ckpt / "config.json").is_file(), ckpt
        # The raw artifact's container paths were rewritten: the volume named in it exists here.
        volume_ok = pathlib.Path(spec.read_text().split("\\n")[0].split(": ")[1]).is_dir()
        outputs.mkdir(parents=True, exist_ok=True)
        (outputs / "seen").write_text(f"{ckpt.name} {os.environ['HF_TOKEN']} {volume_ok} {label}")
        """,
        args=["{{inputs.parameters.checkpoint}}", "/tmp/megapod/spec.yaml", "/tmp/outputs",
              "{{inputs.parameters.label}}"],
        env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}],
    ),
}  # fmt: skip


def test_output_parameters_pass_between_tasks_with_paths_mapped(tmp_path: Path) -> None:
    checkpoint = {"name": "checkpoint", "value": "{{tasks.make.outputs.parameters.checkpoint}}"}
    tasks = [
        {"name": "make", "template": "produce"},
        {"name": "use", "template": "consume", "depends": "make", "arguments": {"parameters": [checkpoint]}},
    ]
    spec = {"parameters": [{"name": "spec", "value": "volume_mount: /var/run/models\nname: tiny\n"}]}
    doc = workflow(tasks, [PRODUCE, CONSUME], arguments=spec)
    code, status, run_dir = run(tmp_path, doc, secrets={"hf-token": {"token": "hf_local"}})
    assert code == 0, status
    nodes = status["nodes"]
    # The parameter keeps the container's path (as in Argo); only the process sees local paths.
    assert nodes["make"]["parameters"]["checkpoint"] == "/var/run/models/checkpoints/tiny"
    seen = nodes["use"]["parameters"]["seen"]
    assert seen == f"tiny hf_local True run {run_dir.name}"
    assert (run_dir / "tasks" / "use" / "root" / "tmp" / "megapod" / "spec.yaml").is_file()


def test_missing_secret_is_an_error_that_says_where_to_put_it(tmp_path: Path) -> None:
    tasks = [
        {
            "name": "use",
            "template": "consume",
            "arguments": {"parameters": [{"name": "checkpoint", "value": "/x"}]},
        }
    ]
    doc = workflow(tasks, [CONSUME], arguments={"parameters": [{"name": "spec", "value": "a: b"}]})
    code, status, _ = run(tmp_path, doc)
    assert code == 1
    assert status["nodes"]["use"]["phase"] == "Error"
    assert "key 'token' of Secret 'hf-token'" in status["nodes"]["use"]["message"]


def test_missing_output_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    silent = {"name": "silent", "outputs": PRODUCE["outputs"], "container": container("pass")}
    code, status, _ = run(tmp_path, workflow([{"name": "s", "template": "silent"}], [silent]))
    assert code == 1
    assert "/tmp/outputs/checkpoint was not written" in status["nodes"]["s"]["message"]


COUNTED = """
    import pathlib, sys
    counter = pathlib.Path("/var/run/models") / (sys.argv[1] + ".count")
    runs = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(runs))
    sys.exit(0 if runs > int(sys.argv[2]) or pathlib.Path("/var/run/models/fixed").exists() else 1)
"""


def counted(name: str, failures: int, **extra: object) -> dict:
    """A template that fails its first `failures` runs (counted on the volume)."""
    return {"name": name, "container": container(COUNTED, args=[name, str(failures)]), **extra}


def test_retry_strategy_retries_with_backoff_until_success(tmp_path: Path) -> None:
    flaky = counted("flaky", 2, retryStrategy={"limit": "2", "backoff": {"duration": "0.2s", "factor": "2"}})
    started = time.monotonic()
    code, status, run_dir = run(tmp_path, workflow([{"name": "flaky", "template": "flaky"}], [flaky]))
    assert code == 0
    assert status["nodes"]["flaky"]["attempts"] == 3
    assert time.monotonic() - started >= 0.6  # backoff 0.2 s then 0.4 s
    assert (run_dir / "tasks" / "flaky" / "log.txt").read_text().count("--- attempt") == 3


def test_retry_gives_up_after_the_limit_and_respects_the_policy(tmp_path: Path) -> None:
    always = counted("always", 9, retryStrategy={"limit": 1})
    on_error = counted("onerror", 9, retryStrategy={"limit": 3, "retryPolicy": "OnError"})
    tasks = [{"name": "always", "template": "always"}, {"name": "onerror", "template": "onerror"}]
    code, status, _ = run(tmp_path, workflow(tasks, [always, on_error]))
    assert code == 1
    assert status["nodes"]["always"]["attempts"] == 2
    assert status["nodes"]["onerror"]["attempts"] == 1  # a non-zero exit is a failure, not an error


def test_active_deadline_kills_the_task(tmp_path: Path) -> None:
    slow = {
        "name": "slow",
        "activeDeadlineSeconds": "1",
        "container": container("import time; time.sleep(60)"),
    }
    started = time.monotonic()
    code, status, _ = run(tmp_path, workflow([{"name": "slow", "template": "slow"}], [slow]))
    assert code == 1
    assert "deadline of 1s exceeded" in status["nodes"]["slow"]["message"]
    assert time.monotonic() - started < 30


def test_resume_skips_tasks_that_succeeded(tmp_path: Path) -> None:
    tasks = [{"name": "a", "template": "a"}, {"name": "b", "template": "b", "depends": "a"}]
    doc = workflow(tasks, [counted("a", 0), counted("b", 99)])
    code, first, run_dir = run(tmp_path, doc)
    assert code == 1
    assert phases(first) == {"a": SUCCEEDED, "b": FAILED}
    (volume(run_dir) / "fixed").write_text("")
    code, second, _ = run(tmp_path, doc, resume=first["nodes"])
    assert code == 0
    assert phases(second) == {"a": SUCCEEDED, "b": SUCCEEDED}
    assert second["nodes"]["a"]["resumed"] is True
    assert (volume(run_dir) / "a.count").read_text() == "1"  # not run again
    assert (volume(run_dir) / "b.count").read_text() == "2"


def test_template_ref_runs_a_workflow_template_like_argo_submit_from(tmp_path: Path) -> None:
    stage = {"kind": "WorkflowTemplate", "metadata": {"name": "x-stage"}, "spec": {"templates": [OK]}}
    pipeline = workflow([{"name": "step", "templateRef": {"name": "x-stage", "template": "ok"}}], [])
    pipeline["kind"], pipeline["metadata"] = "WorkflowTemplate", {"name": "x-pipeline"}
    code, status, _ = run(tmp_path, stage, pipeline, entry="x-pipeline")
    assert code == 0
    assert status["nodes"]["step"]["template"] == "x-stage/ok"


def test_unsupported_features_are_refused_before_anything_runs(tmp_path: Path) -> None:
    script = {"name": "script", "script": {"image": IMAGE, "command": ["python"], "source": "print(1)"}}
    tasks = [
        {"name": "loop", "template": "ok", "withItems": [1, 2]},
        {"name": "scripted", "template": "script"},
    ]
    sidecar = {**OK, "name": "with-sidecar", "sidecars": [{"name": "s", "image": IMAGE}]}
    tasks.append({"name": "side", "template": "with-sidecar"})
    with pytest.raises(UnsupportedFeature) as caught:
        run(tmp_path, workflow(tasks, [OK, script, sidecar]))
    problems = "\n".join(caught.value.problems)
    assert "task loop: `withItems` is not supported by the local executor" in problems
    assert "template script: `script` is not supported" in problems
    assert "template with-sidecar: `sidecars` is not supported" in problems
    assert not (tmp_path / "run" / "tasks").exists()


def test_unknown_image_is_refused_before_anything_runs(tmp_path: Path) -> None:
    other = {
        "name": "other",
        "container": {**container("pass"), "image": "nvcr.io/nvidia/tritonserver:24.08"},
    }
    with pytest.raises(LocalRunError, match=r"tritonserver:24\.08 have no local stand-in"):
        run(tmp_path, workflow([{"name": "o", "template": "other"}], [other]))


# --- stand-ins ------------------------------------------------------------------------------------

TINY_SPEC = Path(__file__).resolve().parents[1] / "workflows" / "examples" / "tiny-local.yaml"


def prometheus_api(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.integration
def test_stand_in_refuses_a_port_another_server_holds(tmp_path: Path) -> None:
    """A server already answering on the stand-in's port (another local run) must not be taken for ours."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        argv = [sys.executable, "-c", "import time; time.sleep(30)"]
        server = background_server(argv, f"http://127.0.0.1:{port}/-/ready", tmp_path / "log")
        with pytest.raises(LocalRunError, match=f"127.0.0.1:{port} is already in use"), server:
            pass
    assert not (tmp_path / "log").exists()  # refused before anything was started


def test_prometheus_stand_in_scrapes_the_leader_with_the_charts_rules(triton_server, tmp_path: Path) -> None:
    """Real helm renders the rules, a real Prometheus loads them and scrapes a real tritonserver
    once the deploy node reports its endpoint, labelled as the chart's PodMonitor labels leaders."""
    spec = load_spec(TINY_SPEC)
    metrics_port = int(triton_server.metrics_url.rsplit(":", 1)[1].split("/")[0])
    base = f"http://127.0.0.1:{free_port()}"
    service = spec.serving.service.model_copy(update={"metrics_port": metrics_port})
    spec = spec.model_copy(
        update={
            "cluster": spec.cluster.model_copy(update={"prometheus_url": base}),
            "serving": spec.serving.model_copy(update={"service": service}),
        }
    )
    render_to_dir(spec, tmp_path / "rendered")
    standins = StandIns(LocalEnvironment(images={}), spec)
    with ExitStack() as stack:
        start_prometheus(standins, tmp_path, stack)
        rules = prometheus_api(base, "/api/v1/rules")["data"]["groups"]
        recorded = {rule["name"] for group in rules for rule in group["rules"]}
        produced = chart_values(spec)["monitoring"]["signals"]  # the series the backend can feed
        assert {SCALING_SERIES[signal] for signal in produced} <= recorded
        standins.on_change(Node(key="deploy", template="d", phase=SUCCEEDED,
                                parameters={"endpoint": triton_server.http_url}))  # fmt: skip
        lws = standins.monitoring.lws
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = prometheus_api(base, f'/api/v1/query?query=up{{lws="{lws}",group_index="0"}}')
            if [r["value"][1] for r in result["data"]["result"]] == ["1"]:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus never scraped the leader: {result}")
        count = prometheus_api(
            base, f'/api/v1/query?query=count(nv_inference_request_success{{lws="{lws}"}})'
        )
        assert int(count["data"]["result"][0]["value"][1]) >= 1


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch) -> None:
    from workflows.local import runner

    frozen = time.gmtime(1_796_000_000)
    monkeypatch.setattr(runner.time, "gmtime", lambda *_: frozen)
    first, second = (runner.new_run_folder(tmp_path, "tiny") for _ in range(2))
    assert first.name == "tiny-20261130-005320" and second.name == f"{first.name}-2"
    for folder in (first, second):
        (folder / "status.json").write_text("{}")
    assert runner.find_run("last", tmp_path, "tiny") == second


def test_a_port_in_time_wait_is_free_a_listening_one_is_not() -> None:
    """A rerun within a minute: the last run's connections sit in TIME-WAIT on the side that
    closed first; a server binding with SO_REUSEADDR (as Prometheus and moto do) may listen there."""
    from workflows.local.standins import _refuse_taken_port

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    with pytest.raises(LocalRunError, match=f"127.0.0.1:{port} is already in use"):
        _refuse_taken_port(f"http://127.0.0.1:{port}/")
    accepted.close()  # the server closes first: its end of the connection goes to TIME-WAIT
    client.close()
    listener.close()
    _refuse_taken_port(f"http://127.0.0.1:{port}/")


def test_resume_runs_again_what_the_exit_hook_undid(tmp_path: Path) -> None:
    """Issue 13.1: Ctrl-C after deploy, the exit hook tears the deployment down; `--resume` must
    deploy again instead of restoring deploy's outputs (a green run that measured nothing)."""
    up = {"name": "up", "container": container(f"open('{VOLUME}/up', 'w').write('1')")}
    down = {"name": "down", "container": container(f"import os; os.remove('{VOLUME}/up')")}
    stage = {"kind": "WorkflowTemplate", "metadata": {"name": "x-deploy"}, "spec": {"templates": [up, down]}}
    broken = {"name": "use", "container": container("import sys; sys.exit(1)")}
    needs_up = f"import os, sys; sys.exit(0 if os.path.exists('{VOLUME}/up') else 3)"
    fixed = {"name": "use", "container": container(needs_up)}
    tasks = [
        {"name": "deploy", "templateRef": {"name": "x-deploy", "template": "up"}},
        {"name": "use", "template": "use", "depends": "deploy"},
    ]
    hook = {"name": "teardown", "dag": {"tasks": [
        {"name": "teardown", "templateRef": {"name": "x-deploy", "template": "down"}}]}}  # fmt: skip
    pipeline = workflow(tasks, [broken, hook], onExit="teardown")
    pipeline["kind"], pipeline["metadata"] = "WorkflowTemplate", {"name": "x-pipeline"}
    code, first, run_dir = run(tmp_path, stage, pipeline, entry="x-pipeline")
    assert code == 1
    assert phases(first)["deploy"] == SUCCEEDED and phases(first)["onExit.teardown"] == SUCCEEDED
    assert not (volume(run_dir) / "up").exists()  # torn down
    pipeline["spec"]["templates"][1] = fixed  # the stage, fixed: it needs the deployment up
    code, second, _ = run(tmp_path, stage, pipeline, entry="x-pipeline", resume=first["nodes"])
    assert code == 0, second
    assert second["nodes"]["deploy"]["resumed"] is False
    assert any("deploy: runs again; the earlier run's exit hook undid it" in note for note in second["notes"])
