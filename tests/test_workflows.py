"""Rendered Argo documents: render -> lint round trip, DAG structure, lint catching planted bugs,
and golden YAML (regenerate with MEGAPOD_REGENERATE_GOLDEN=1, review the diff)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.support.upstream import argo_schema
from workflows import lint
from workflows.lint import lint_paths
from workflows.render import render_to_dir
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "workflows" / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
STAGES = ["download", "build", "publish", "deploy", "autoscale-test", "benchmark", "report"]
REFERENCE = ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """Each example rendered once: example stem -> output directory."""
    out = {}
    for example in EXAMPLES:
        directory = tmp_path_factory.mktemp(example.stem)
        render_to_dir(load_spec(example), directory)
        out[example.stem] = directory
    return out


def documents(directory: Path) -> dict[str, dict]:
    """metadata.name -> document, for every rendered workflow file."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted((directory / "workflows").glob("*.yaml"))]
    return {d["metadata"]["name"]: d for d in docs}


def template(document: dict, name: str) -> dict:
    spec = document["spec"].get("workflowSpec", document["spec"])
    return next(t for t in spec["templates"] if t["name"] == name)


@pytest.mark.parametrize("example", [e.stem for e in EXAMPLES])
def test_render_then_lint_is_clean(rendered, example) -> None:
    out = rendered[example]
    names = sorted(p.name for p in (out / "workflows").glob("*.yaml"))
    name = load_spec(ROOT / "workflows" / "examples" / f"{example}.yaml").name
    expected = [f"workflowtemplate-{name}-{s}.yaml" for s in [*STAGES, "pipeline"]]
    assert names == sorted([*expected, f"cronworkflow-{name}-benchmark-nightly.yaml"])
    assert (out / "chart-values.yaml").is_file()
    assert lint_paths([out / "workflows"]) == []


@pytest.mark.parametrize("source", ["upstream", "hera"])
def test_lint_catches_misspelt_key_and_wrong_type(rendered, tmp_path, monkeypatch, source) -> None:
    """Both schema sources are strict: Argo's own api/jsonschema/schema.json of the pinned release
    (argo-workflows v4.0.5, tests/support/upstream.py) and Hera's models (the default)."""
    monkeypatch.setenv(lint.SCHEMA_ENV, str(argo_schema()) if source == "upstream" else "hera")
    path = tmp_path / "build.yaml"
    text = (
        rendered["llama-3.1-405b-p5"] / "workflows" / "workflowtemplate-llama-405b-build.yaml"
    ).read_text()
    text = text.replace("retryStrategy:", "retryStratgy:").replace("maxAge: 2160h", "maxAge: [2160h]")
    path.write_text(text)
    problems = lint_paths([path])
    assert any("'retryStratgy' was unexpected" in p and p.startswith(str(path)) for p in problems), problems
    assert any("memoize/maxAge" in p and "is not of type 'string'" in p for p in problems), problems


def _planted(rendered, tmp_path: Path, old: str, new: str) -> list[str]:
    directory = tmp_path / "workflows"
    shutil.copytree(rendered["llama-3.1-405b-p5"] / "workflows", directory)
    pipeline = directory / "workflowtemplate-llama-405b-pipeline.yaml"
    text = pipeline.read_text()
    assert old in text
    pipeline.write_text(text.replace(old, new, 1))
    return lint_paths([directory])


def test_lint_catches_a_dangling_dependency(rendered, tmp_path) -> None:
    problems = _planted(rendered, tmp_path, "depends: publish", "depends: publsh")
    assert problems == [
        f"{tmp_path}/workflows/workflowtemplate-llama-405b-pipeline.yaml: "
        "WorkflowTemplate/llama-405b-pipeline: template pipeline: task deploy: "
        "depends on 'publsh', which is not a task of this DAG"
    ]


def test_lint_catches_an_undeclared_parameter(rendered, tmp_path) -> None:
    problems = _planted(rendered, tmp_path, "{{workflow.parameters.keep}}", "{{workflow.parameters.kep}}")
    assert len(problems) == 1 and "workflow parameter 'kep' is not declared" in problems[0]


def test_lint_catches_a_missing_output_and_template_ref(rendered, tmp_path) -> None:
    problems = _planted(rendered, tmp_path, "outputs.parameters.endpoint", "outputs.parameters.endpiont")
    assert any("task deploy has no output parameter 'endpiont'" in p for p in problems), problems
    problems = lint_paths(
        [rendered["llama-3.1-405b-p5"] / "workflows" / "workflowtemplate-llama-405b-pipeline.yaml"]
    )
    assert any("templateRef 'llama-405b-build' is not among the linted documents" in p for p in problems)


def test_lint_catches_duplicate_templates_and_bad_entrypoint(tmp_path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata: {generateName: x-}\n"
        "spec:\n  entrypoint: main\n  templates:\n"
        "  - {name: a, container: {image: busybox, args: ['{{inputs.parameters.msg}}']}}\n"
        "  - {name: a, container: {image: busybox}}\n"
    )
    problems = lint_paths([path])
    assert any("entrypoint: template 'main' does not exist" in p for p in problems), problems
    assert any("template a: duplicate template name" in p for p in problems), problems
    assert any("input parameter 'msg' is not declared" in p for p in problems), problems


def test_pipeline_dag_structure(rendered) -> None:
    docs = documents(rendered["llama-3.1-405b-p5"])
    pipeline = docs["llama-405b-pipeline"]
    tasks = {t["name"]: t for t in template(pipeline, "pipeline")["dag"]["tasks"]}
    assert list(tasks) == STAGES
    assert tasks["build"]["when"] == "'trtllm-engine' != 'trtllm-pytorch'"
    assert "build.Succeeded || build.Skipped" in tasks["publish"]["depends"]
    assert tasks["autoscale-test"]["depends"] == tasks["benchmark"]["depends"] == "deploy"
    for upstream in ("autoscale-test", "benchmark"):
        assert f"{upstream}.Failed" in tasks["report"]["depends"]  # reports also after a failure
    for name, task in tasks.items():
        assert task["templateRef"] == {"name": f"llama-405b-{name}", "template": name}
        assert f"llama-405b-{name}" in docs  # each stage also runs alone
    assert pipeline["spec"]["onExit"] == "teardown"
    exit_task = template(pipeline, "teardown")["dag"]["tasks"][0]
    assert exit_task["templateRef"] == {"name": "llama-405b-deploy", "template": "teardown"}
    assert exit_task["when"] == "'{{workflow.parameters.keep}}' == 'false'"
    keep = next(p for p in pipeline["spec"]["arguments"]["parameters"] if p["name"] == "keep")
    assert keep["enum"] == ["true", "false"] and keep["value"] == "false"
    teardown_args = template(docs["llama-405b-deploy"], "teardown")["container"]["args"]
    assert "--teardown" in teardown_args


def test_load_stages_hold_one_mutex_per_deployment(rendered) -> None:
    """autoscale-test and benchmark both start after deploy but never load the deployment at once:
    both hold the mutex named after it; no other stage does (deploy and report run in parallel freely)."""
    for example, name in (("llama-3.1-405b-p5", "llama-405b"), ("tiny-local", "tiny-local")):
        docs = documents(rendered[example])
        for stage in STAGES:
            sync = template(docs[f"{name}-{stage}"], stage).get("synchronization")
            if stage in ("autoscale-test", "benchmark"):
                assert sync == {"mutexes": [{"name": f"{name}-load"}]}, (example, stage)
            else:
                assert sync is None, (example, stage)


def test_deploy_isolation_reaches_the_report(rendered) -> None:
    """deploy's `isolation` (written only by a local run) defaults to kubernetes on a cluster, and the
    pipeline hands it to the report as --serving-mode."""
    docs = documents(rendered["tiny-local"])
    outputs = template(docs["tiny-local-deploy"], "deploy")["outputs"]["parameters"]
    isolation = next(p for p in outputs if p["name"] == "isolation")
    assert isolation["valueFrom"] == {"path": "/tmp/outputs/isolation", "default": "kubernetes"}
    tasks = {t["name"]: t for t in template(docs["tiny-local-pipeline"], "pipeline")["dag"]["tasks"]}
    arguments = {p["name"]: p["value"] for p in tasks["report"]["arguments"]["parameters"]}
    assert arguments["serving_mode"] == "{{tasks.deploy.outputs.parameters.isolation}}"
    report = template(docs["tiny-local-report"], "report")
    args = report["container"]["args"]
    assert args[args.index("--serving-mode") + 1] == "{{inputs.parameters.serving_mode}}"
    default = next(p for p in report["inputs"]["parameters"] if p["name"] == "serving_mode")
    assert default["default"] == "kubernetes"  # the cron's report, after no deploy


def test_pytorch_backend_skips_build_and_publishes_the_checkpoint(rendered) -> None:
    pipeline = documents(rendered["llama-3.1-70b-pytorch-fp8"])["llama-70b-pt-pipeline"]
    tasks = {t["name"]: t for t in template(pipeline, "pipeline")["dag"]["tasks"]}
    assert tasks["build"]["when"] == "'trtllm-pytorch' != 'trtllm-pytorch'"
    engines = next(p for p in tasks["publish"]["arguments"]["parameters"] if p["name"] == "engines")
    assert engines["value"] == "{{tasks.download.outputs.parameters.checkpoint}}"


def test_retries_timeouts_and_memoization(rendered) -> None:
    docs = documents(rendered["llama-3.1-405b-p5"])
    for stage in STAGES:
        body = template(docs[f"llama-405b-{stage}"], stage)
        assert int(body["activeDeadlineSeconds"]) > 0
        has_retry = "retryStrategy" in body
        assert has_retry == (stage in ("download", "build", "publish", "deploy")), stage
        if has_retry:
            assert body["retryStrategy"]["backoff"]["factor"] == "2"
    assert (
        "sha256sum(inputs.parameters.source)"
        in template(docs["llama-405b-download"], "download")["memoize"]["key"]
    )
    build_key = template(docs["llama-405b-build"], "build")["memoize"]["key"]
    assert "inputs.parameters.spec" in build_key and "inputs.parameters.checkpoint" in build_key
    plain = documents(rendered["llama-3.1-8b-1node"])  # argo.memoize off: no cache, nothing to grant
    assert "memoize" not in template(plain["llama-8b-download"], "download")


def test_build_pod_of_the_405b_reference(rendered) -> None:
    spec = load_spec(REFERENCE)
    build = template(documents(rendered["llama-3.1-405b-p5"])["llama-405b-build"], "build")
    resources = build["container"]["resources"]
    for side in ("requests", "limits"):
        assert resources[side]["nvidia.com/gpu"] == "8"
        assert resources[side]["vpc.amazonaws.com/efa"] == "32"
        assert resources[side]["hugepages-2Mi"] == spec.cluster.hugepages_2mi
    assert build["nodeSelector"] == {
        "node.kubernetes.io/instance-type": "p5.48xlarge",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert build["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    volumes = {v["name"]: v for v in build["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Gi"}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "efs-models"}
    mounts = {m["name"]: m["mountPath"] for m in build["container"]["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "models": "/var/run/models"}
    spec_file = build["inputs"]["artifacts"][0]
    assert spec_file == {
        "name": "spec-file",
        "path": "/tmp/megapod/spec.yaml",
        "raw": {"data": "{{inputs.parameters.spec}}"},
    }


def test_hub_token_only_from_the_secret(rendered) -> None:
    docs = documents(rendered["llama-3.1-405b-p5"])
    download = template(docs["llama-405b-download"], "download")
    token = next(e for e in download["container"]["env"] if e["name"] == "HF_TOKEN")
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    everything = "".join(p.read_text() for p in (rendered["llama-3.1-405b-p5"] / "workflows").glob("*.yaml"))
    assert "HF_TOKEN" not in everything.replace("name: HF_TOKEN", "")


def test_report_page_is_a_single_uncompressed_html_file(rendered) -> None:
    """The Argo UI opens an artifact whose key ends in a known extension, or a directory key ending
    in `/` (docs/artifact-visualization.md, v4.1.2); the executor keys an unarchived output
    `<keyFormat>/<basename of path>` (workflow/executor/executor.go saveArtifactFromFile, v4.1.2), so
    only a file named *.html gets a key the UI renders. The folder goes beside it as a .tgz download."""
    report = template(documents(rendered["llama-3.1-405b-p5"])["llama-405b-report"], "report")
    page, folder = report["outputs"]["artifacts"]
    assert page == {"name": "report", "path": "/tmp/megapod/report/report.html", "archive": {"none": {}}}
    assert PurePosixPath(page["path"]).suffix == ".html"
    assert folder == {"name": "report-files", "path": "/tmp/megapod/report"}


def test_nightly_cron(rendered) -> None:
    spec = load_spec(REFERENCE)
    cron = documents(rendered["llama-3.1-405b-p5"])["llama-405b-benchmark-nightly"]
    assert cron["kind"] == "CronWorkflow"
    assert cron["spec"]["schedules"] and "schedule" not in cron["spec"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["startingDeadlineSeconds"] > 0
    workflow = cron["spec"]["workflowSpec"]
    assert workflow["synchronization"] == {"mutexes": [{"name": spec.cluster.gpu_pool}]}
    tasks = template(cron, "benchmark-nightly")["dag"]["tasks"]
    assert [t["name"] for t in tasks] == ["benchmark", "report"] and tasks[1]["depends"] == "benchmark"


def test_every_document_reads_well_in_the_ui(rendered) -> None:
    for name, doc in documents(rendered["llama-3.1-405b-p5"]).items():
        metadata = doc["metadata"]
        assert metadata["labels"]["app.kubernetes.io/instance"] == "llama-405b", name
        assert metadata["annotations"]["workflows.argoproj.io/title"].startswith("llama-405b: ")
        assert metadata["annotations"]["workflows.argoproj.io/description"]
        spec = doc["spec"].get("workflowSpec", doc["spec"])
        assert spec["podGC"]["strategy"] == "OnWorkflowSuccess" and spec["ttlStrategy"]
        assert spec["serviceAccountName"] == "megapod-pipeline"
        for parameter in spec["arguments"]["parameters"]:
            assert parameter.get("description"), (name, parameter["name"])


def test_the_rendered_spec_loads_back_to_the_same_spec(rendered, tmp_path) -> None:
    spec = load_spec(REFERENCE)
    pipeline = documents(rendered["llama-3.1-405b-p5"])["llama-405b-pipeline"]
    text = next(p["value"] for p in pipeline["spec"]["arguments"]["parameters"] if p["name"] == "spec")
    (tmp_path / "spec.yaml").write_text(text)
    assert load_spec(tmp_path / "spec.yaml").content_hash() == spec.content_hash()


@pytest.mark.parametrize("example", [e.stem for e in EXAMPLES])
def test_golden_workflows(rendered, example) -> None:
    """Rendered YAML equals tests/golden/<example>/ after parsing (so only content counts)."""
    out = rendered[example] / "workflows"
    golden = GOLDEN / example
    if os.environ.get("MEGAPOD_REGENERATE_GOLDEN") == "1":
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(out, golden)
    names = sorted(p.name for p in out.glob("*.yaml"))
    assert names == sorted(p.name for p in golden.glob("*.yaml")), "run `make golden` and review the diff"
    for name in names:
        assert yaml.safe_load((out / name).read_text()) == yaml.safe_load((golden / name).read_text()), (
            f"{example}/{name} differs from the golden file; run `make golden` and review the diff"
        )


def test_render_writes_nothing_when_rendering_fails(tmp_path, monkeypatch) -> None:
    import workflows.render as render

    def broken(spec):
        raise RuntimeError("boom")

    monkeypatch.setattr(render, "chart_values_yaml", broken)
    with pytest.raises(RuntimeError):
        render.render_to_dir(load_spec(REFERENCE), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- hostile paths (issue 13.6): one line, never a traceback, never a hang ---------------------------


@pytest.mark.parametrize("taken", ["out", "out/workflows"])
def test_render_out_over_a_file_is_one_line_and_nothing_is_written(tmp_path, taken) -> None:
    from typer.testing import CliRunner

    from workflows.cli import app

    (tmp_path / taken).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / taken).write_text("keep me")
    result = CliRunner().invoke(app, ["render", str(REFERENCE), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = result.stderr.strip().splitlines()
    out = tmp_path / "out"
    expected = f"{tmp_path / taken} exists and is not a directory; choose a directory for --out"
    assert line == f"error: --out {out}: {expected}"
    assert (tmp_path / taken).read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted({"out", PurePosixPath(taken).name})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (os.urandom(64) + b"\xff", "not UTF-8 text (byte"),
        (b"kind: Workflow\nspec: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply to read"),
        (b"kind: Workflow\nspec: {activeDeadlineSeconds: " + b"9" * 5000 + b"}\n", "a value cannot be read"),
    ],
    ids=["binary", "nested", "digits"],
)
def test_lint_of_binary_or_absurdly_nested_files_is_one_line(tmp_path, content, expected) -> None:
    """PyYAML 6.0's composer recurses per nesting level and its int() hits CPython 3.11's 4300-digit
    limit; lint names the file instead of a traceback."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    (line,) = lint_paths([path])
    assert line.startswith(f"{path}: ") and expected in line


def test_lint_refuses_a_fifo_instead_of_blocking_on_it(tmp_path) -> None:
    """A FIFO named on the command line (fifo(7): open blocks until a writer comes)."""
    from tests.support.cli import megapod_on_fifo

    fifo = tmp_path / "rendered.yaml"
    proc = megapod_on_fifo("lint", fifo)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"{fifo}: not a regular file; give the rendered YAML file"
