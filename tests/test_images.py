"""The Dockerfiles under images/: pinned versions and existing COPY sources.

The images cannot be built here (no container registry), so this checks what can go wrong
without building: unpinned or `latest` bases, versions missing, unconstrained pip installs,
kubectl creeping in, COPY of files that do not exist, and versions drifting from what the
tests run (helm, genai-perf, aiperf).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from steps import build as b
from steps import publish
from workflows import releases
from workflows.argo import common as c
from workflows.argo.stages import STAGE_BUILDERS, teardown
from workflows.cli import app
from workflows.images import pipeline_build_args, serving_build_args
from workflows.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "workflows" / "examples"
REFERENCE_405B = EXAMPLES / "llama-3.1-405b-p5.yaml"
PYTORCH_70B = EXAMPLES / "llama-3.1-70b-pytorch-fp8.yaml"
DOCKERFILES = {
    "triton-trtllm": ROOT / "images" / "triton-trtllm" / "Dockerfile",
    "pipeline": ROOT / "images" / "pipeline" / "Dockerfile",
}
IMAGE_REF = re.compile(
    r"^(?P<repo>[a-z0-9.\-/:]+?):(?P<tag>[\w][\w.-]{0,127})(@sha256:(?P<digest>[0-9a-f]{64}))?$"
)
VERSION = re.compile(r"^\d+(\.\d+)+$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    result, pending, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
    return result


def args_defaults(steps: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for step in steps:
        if step.keyword == "ARG" and "=" in step.args:
            name, _, value = step.args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def from_refs(steps: list[Instruction]) -> list[str]:
    """FROM references, an ARG declared before the first FROM replaced by its default."""
    first_from = next(i for i, step in enumerate(steps) if step.keyword == "FROM")
    global_args = args_defaults(steps[:first_from])
    refs = [step.args.split()[0] for step in steps if step.keyword == "FROM"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m[1], m[0]), ref) for ref in refs]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_bases_pinned_by_tag_never_latest(name: str) -> None:
    steps = instructions(DOCKERFILES[name])
    refs = from_refs(steps)
    assert refs, "no FROM"
    for ref in refs:
        assert "$" not in ref, f"{ref}: the base must be spelled out, or an ARG with a pinned default"
        match = IMAGE_REF.match(ref)
        assert match, f"{ref}: expected repo:tag[@sha256:<64 hex>]"
        assert match["tag"] != "latest" and "latest" not in match["tag"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_versions_present_and_no_latest(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    assert not re.search(r"\blatest\b", text, re.IGNORECASE)
    defaults = args_defaults(instructions(DOCKERFILES[name]))
    versions = {k: v for k, v in defaults.items() if k.endswith("_VERSION")}
    assert versions, "no *_VERSION build arguments"
    for key, value in versions.items():
        assert VERSION.match(value), f"{key}={value!r} is not a version"
        # every pinned version is actually used
        assert f"${{{key}}}" in text, f"{key} declared but never used"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_downloads_are_versioned(name: str) -> None:
    for step in instructions(DOCKERFILES[name]):
        for url in re.findall(r"https://\S+", step.args):
            assert "_VERSION}" in url or re.search(r"\d+\.\d+", url), f"line {step.line}: unversioned {url}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_pip_installs_are_pinned_or_constrained(name: str) -> None:
    for step in instructions(DOCKERFILES[name]):
        for command in re.split(r"&&|;", step.args):
            if "pip install" not in command:
                continue
            words = command.split()[command.split().index("install") + 1 :]
            if "-c" in words:
                continue  # constrained by images/constraints.txt
            # a local path is megapod itself (copied into the image), not a registry package
            packages = [w.strip("\"'") for w in words if not w.startswith(("-", "/"))]
            for package in packages:
                assert "==" in package, f"line {step.line}: {package} is not pinned"


def test_constraints_pin_every_package() -> None:
    lines = [
        line
        for line in (ROOT / "images" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(lines) > 20
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[\w.+!-]+", line), line
    names = {line.split("==")[0].lower() for line in lines}
    assert {"pydantic", "pyyaml", "rich"} <= names  # what the launcher venv installs


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_copied_file_exists(name: str) -> None:
    copies = [s for s in instructions(DOCKERFILES[name]) if s.keyword in ("COPY", "ADD")]
    assert copies
    for step in copies:
        words = [w for w in step.args.split() if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in step.args.split()), "multi-stage COPY unexpected"
        *sources, _destination = words
        assert sources, f"line {step.line}: COPY without a source"
        for source in sources:
            assert (ROOT / source).exists(), (
                f"line {step.line}: COPY {source}: no such file in the build context"
            )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_kubectl(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    installs = [s.args for s in instructions(DOCKERFILES[name]) if s.keyword == "RUN"]
    assert not any(re.search(r"(install|curl|wget)[^&]*kubectl", run) for run in installs)
    assert "! command -v kubectl" in text  # and the build checks it stays out


def test_serving_image_matches_the_trtllm_release() -> None:
    steps = instructions(DOCKERFILES["triton-trtllm"])
    (base,) = from_refs(steps)
    release = IMAGE_REF.match(base)["tag"].split("-")[0]
    assert base.startswith("nvcr.io/nvidia/tritonserver:") and "-trtllm-python-py3" in base
    assert args_defaults(steps)["TRTLLM_VERSION"] == releases.TRITON_TRTLLM[release][0]
    run = " ".join(s.args for s in steps if s.keyword == "RUN")
    for tool in ("openssh-server", "efa_installer.sh", "aws-ofi-nccl", "python -m steps.launcher --help"):
        assert tool in run
    # the SDK image of the pipeline comes from the same Triton release
    (sdk,) = from_refs(instructions(DOCKERFILES["pipeline"]))
    assert sdk == f"nvcr.io/nvidia/tritonserver:{release}-py3-sdk"


def test_pipeline_tools_match_what_the_tests_run() -> None:
    defaults = args_defaults(instructions(DOCKERFILES["pipeline"]))
    helm = subprocess.run(
        [str(ROOT / ".tools" / "bin" / "helm"), "version", "--short"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert helm.startswith(f"v{defaults['HELM_VERSION']}+"), helm
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert f"genai-perf=={defaults['GENAI_PERF_VERSION']}" in bootstrap
    assert f"aiperf=={defaults['AIPERF_VERSION']}" in bootstrap


def test_parser_sees_continuations(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM a:1\n# c\nRUN x \\\n  && y\nCOPY nope /x\n")
    steps = instructions(dockerfile)
    assert [(s.keyword, s.line) for s in steps] == [("FROM", 1), ("RUN", 3), ("COPY", 5)]
    assert steps[1].args == "x && y"


# What the serving image's launcher venv holds besides megapod itself (see its Dockerfile).
LAUNCHER_VENV = {
    "pydantic",
    "pydantic_core",
    "yaml",
    "rich",
    "typing_extensions",
    "annotated_types",
    "typing_inspection",
    "markdown_it",
    "mdurl",
    "pygments",
    "steps",
    "workflows",
}
IMPORT_FENCE = """
import builtins, runpy, sys
allowed = set(sys.stdlib_module_names) | set(sys.argv[1].split(","))
real_import = builtins.__import__
def fenced(name, globals=None, locals=None, fromlist=(), level=0):
    top = name.split(".")[0]
    if level == 0 and top not in allowed and not top.startswith("_"):  # _x: private stdlib/C parts
        # as if not installed: optional imports fall back, required ones fail the launcher
        raise ModuleNotFoundError(f"{name!r} is not installed in the serving image", name=name)
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = fenced
module, *args = sys.argv[2:]
sys.argv = [module, *args, "--help"]
runpy.run_module(module, run_name="__main__")
"""


@pytest.mark.parametrize("role", ["leader", "worker"])
def test_launcher_runs_with_the_serving_image_packages(role: str) -> None:
    """`python -m steps.launcher` needs nothing beyond what the serving image's venv installs."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_FENCE, ",".join(sorted(LAUNCHER_VENV)), "steps.launcher", role],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"steps.launcher {role}" in result.stdout
    run = " ".join(s.args for s in instructions(DOCKERFILES["triton-trtllm"]) if s.keyword == "RUN")
    # kubernetes: the build stage validates the spec here (quantities via kubernetes.utils), imported
    # on use only, so the launcher itself never loads it.
    assert "constraints.txt pydantic pyyaml rich kubernetes" in run


def run_steps(name: str) -> str:
    """Every RUN of a Dockerfile, joined."""
    return " ".join(s.args for s in instructions(DOCKERFILES[name]) if s.keyword == "RUN")


def env_defaults(name: str) -> dict[str, str]:
    """ENV KEY=value settings of a Dockerfile."""
    pairs = [s.args.split("=", 1) for s in instructions(DOCKERFILES[name]) if s.keyword == "ENV"]
    return {key: value for key, value in pairs}


# --- 10.1: the build stage runs in the image that has TensorRT-LLM ----------------------------------


def test_build_stage_runs_in_the_serving_image_the_rest_in_the_pipeline_image() -> None:
    """trtllm-build and the converters ship only in the serving image (tritonserver:24.08-trtllm-python-py3
    carries TensorRT-LLM 0.12.0; the 24.08-py3-sdk pipeline base has no tensorrt_llm)."""
    spec = load_spec(REFERENCE_405B)
    images = {name: builder(spec).container(spec).image for name, builder in STAGE_BUILDERS.items()}
    images[c.TEARDOWN] = teardown(spec).container(spec).image
    assert images.pop(c.BUILD) == spec.serving.image != spec.images.pipeline
    assert set(images.values()) == {spec.images.pipeline}


def test_build_step_finds_the_examples_and_interpreter_the_serving_image_has() -> None:
    """The converters are where the Dockerfile unpacks TensorRT-LLM's examples/ (v0.12.0:
    examples/llama/convert_checkpoint.py, examples/quantization/quantize.py) and run with the
    base image's python3, which the Dockerfile names in the variable steps.build reads."""
    run = run_steps("triton-trtllm")
    unpack = re.search(
        r"tar -xz -C (\S+) --strip-components=1 \"TensorRT-LLM-\$\{TRTLLM_VERSION\}/examples\"", run
    )
    assert unpack, "the serving image no longer unpacks TensorRT-LLM's examples/"
    assert unpack[1] == b.EXAMPLES_ROOT
    assert all(p.startswith("examples/") for p in (*b.CONVERT_SCRIPT_PATHS, b.QUANTIZE_SCRIPT_PATH))
    for rel in b.CONVERT_SCRIPT_PATHS:  # the image checks the converter the build will look for
        assert f"{b.EXAMPLES_ROOT}/{rel}" in run
    assert env_defaults("triton-trtllm")[b.TRTLLM_PYTHON_ENV] == "/usr/bin/python3"
    assert f'"${{{b.TRTLLM_PYTHON_ENV}}}" -c "import tensorrt_llm' in run  # the checked interpreter
    assert "python -m steps.build --help" in run


def test_build_step_runs_with_the_serving_image_packages() -> None:
    """`python -m steps.build` (the serving image's venv python) needs nothing beyond that venv."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_FENCE, ",".join(sorted(LAUNCHER_VENV)), "steps.build"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--checkpoint" in result.stdout


# --- 10.2: publish finds the Triton model templates in the image that runs it ----------------------


def test_publish_templates_are_where_the_pipeline_image_unpacks_them() -> None:
    """tensorrtllm_backend v0.12.0 all_models/inflight_batcher_llm holds ensemble, preprocessing,
    postprocessing, tensorrt_llm and tensorrt_llm_bls (model.py under 1/ for the python models);
    the pipeline image (publish runs there) fetches that tree at the release's tag and the publish
    default points at it, so the stage needs no --templates."""
    defaults = args_defaults(instructions(DOCKERFILES["pipeline"]))
    spec = load_spec(REFERENCE_405B)
    assert defaults["TRTLLM_VERSION"] == spec.trtllm_version
    repository, directory = releases.templates_source(spec.trtllm_version)
    assert (defaults["TRITON_MODELS_REPO"], defaults["TRITON_MODELS_DIR"]) == (repository, directory)
    run = run_steps("pipeline")
    assert "https://github.com/${TRITON_MODELS_REPO}/archive/refs/tags/v${TRTLLM_VERSION}.tar.gz" in run
    moved = re.search(
        r"mv \"/tmp/models/\$\{TRITON_MODELS_REPO#\*/\}-\$\{TRTLLM_VERSION\}/\$\{TRITON_MODELS_DIR\}\" (\S+)",
        run,
    )
    assert moved and Path(moved[1]) == publish.IMAGE_MODELS
    assert publish.IMAGE_TEMPLATES == publish.IMAGE_MODELS / "inflight_batcher_llm"
    checked = re.search(r"for model in ([\w ]+); do", run)
    assert (
        checked and tuple(checked[1].split()) == publish.PYTHON_MODELS
    )  # the image checks what publish copies


def test_templates_come_from_where_each_release_keeps_them() -> None:
    """tensorrtllm_backend keeps all_models/ up to v0.19.0 (all_models/llmapi first there); from
    v0.20.0 it holds only a submodule and the models are TensorRT-LLM's triton_backend/all_models."""
    assert releases.templates_source("0.19.0")[0] == "triton-inference-server/tensorrtllm_backend"
    assert releases.templates_source("0.20.0") == ("NVIDIA/TensorRT-LLM", "triton_backend/all_models")


# --- 14.2: the serving base, release and checks derive from the spec --------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_defaults_are_what_the_reference_spec_derives(name: str) -> None:
    """The defaults build the reference (405B, trtllm-engine 0.12.0 on Triton 24.08); other specs
    pass the derived --build-args (`megapod images SPEC`)."""
    spec = load_spec(REFERENCE_405B)
    derived = (serving_build_args if name == "triton-trtllm" else pipeline_build_args)(spec)
    assert {key: args_defaults(instructions(DOCKERFILES[name]))[key] for key in derived} == derived


def test_each_backend_is_checked_for_its_own_tools() -> None:
    """Engines need trtllm-build (and the converter); the PyTorch flow needs trtllm-llmapi-launch
    (TensorRT-LLM tensorrt_llm/llmapi/trtllm-llmapi-launch) and the llmapi model in the publish image."""
    serving, pipeline = run_steps("triton-trtllm"), run_steps("pipeline")
    engine, pytorch = serving.split("trtllm-engine)")[1], serving.split("trtllm-pytorch)")[1]
    assert "command -v trtllm-build" in engine.split(";;")[0]
    assert "command -v trtllm-llmapi-launch" in pytorch.split(";;")[0]
    assert "llmapi/tensorrt_llm/1/model.py" in pipeline.split("trtllm-pytorch)")[1].split(";;")[0]
    assert "tensorrt_llm {v} != ${TRTLLM_VERSION}" in serving  # the base must carry the release


def test_release_table_gives_the_serving_base_and_launcher_python() -> None:
    """From triton-inference-server/server docs/introduction/compatibility.md (trtllm-python-py3)."""
    assert releases.serving_base("0.12.0") == "nvcr.io/nvidia/tritonserver:24.08-trtllm-python-py3"
    assert releases.launcher_python("0.12.0") == "3.11"  # the 24.08 base's python3 is 3.10
    assert releases.launcher_python("1.0.0") == "3.12"  # Ubuntu 24.04 bases: no python3.11 package
    assert releases.triton_release("0.20.0") == "25.07"  # the newest release carrying it


def spec_with(path: Path, **serving: str) -> dict:
    data = yaml.safe_load(path.read_text())
    return {**data, "serving": {**data["serving"], **serving}}


@pytest.mark.parametrize(
    ("path", "serving", "expected"),
    [
        # the PyTorch flow needs the llmapi Triton model (tensorrtllm_backend v0.19.0 all_models/llmapi)
        (PYTORCH_70B, {"trtllm_version": "0.12.0", "image": "r/x:1"}, "use 0.19.0 (Triton 25.05) or later"),
        (REFERENCE_405B, {"trtllm_version": "0.12.1"}, "carried by no Triton trtllm-python-py3 image"),
        # the example's image is tagged for Triton 25.05 (TensorRT-LLM 0.19.0)
        (PYTORCH_70B, {"trtllm_version": "0.18.0"}, "use 0.19.0 (Triton 25.05) or later"),
        (PYTORCH_70B, {"image": "r/x:0.1.0-25.10"}, "built on Triton 25.10 (TensorRT-LLM 1.0.0)"),
        # publish writes tensorrtllm_backend v0.19.0's llmapi config.pbtxt; 1.0.0 renamed its inputs
        (PYTORCH_70B, {"trtllm_version": "1.0.0", "image": "r/x:1"}, "megapod publishes the llmapi model of"),
        (
            REFERENCE_405B,
            {"image": "nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3"},
            "set serving.trtllm_version: 1.0.0",
        ),
    ],
)
def test_validate_refuses_what_cannot_work_naming_what_would(
    path: Path, serving: dict, expected: str
) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(spec_with(path, **serving))
    (problem,) = error.value.problems
    assert expected in problem


def test_megapod_images_prints_the_derived_build_commands() -> None:
    result = CliRunner().invoke(app, ["images", str(PYTORCH_70B)])
    assert result.exit_code == 0, result.output
    serving, pipeline = result.output.splitlines()
    spec = load_spec(PYTORCH_70B)
    assert serving.startswith("docker build -f images/triton-trtllm/Dockerfile ")
    assert f"--build-arg BASE_IMAGE={releases.serving_base(spec.trtllm_version)}" in serving
    assert "--build-arg BACKEND=trtllm-pytorch" in serving and f"-t {spec.serving.image} ." in serving
    repository, _ = releases.templates_source(spec.trtllm_version)
    assert repository == "triton-inference-server/tensorrtllm_backend"  # 0.19.0: before the move
    assert f"--build-arg TRITON_MODELS_REPO={repository}" in pipeline
