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

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "triton-trtllm": ROOT / "images" / "triton-trtllm" / "Dockerfile",
    "pipeline": ROOT / "images" / "pipeline" / "Dockerfile",
}
IMAGE_REF = re.compile(
    r"^(?P<repo>[a-z0-9.\-/:]+?):(?P<tag>[\w][\w.-]{0,127})(@sha256:(?P<digest>[0-9a-f]{64}))?$"
)
VERSION = re.compile(r"^\d+(\.\d+)+$")
# Triton release -> the TensorRT-LLM version its trtllm-python-py3 image carries (Triton's
# compatibility matrix); the serving image asserts the same at build time.
TRITON_TRTLLM = {"24.08": "0.12.0", "24.07": "0.11.0", "24.06": "0.10.0"}


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
    return [step.args.split()[0] for step in steps if step.keyword == "FROM"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_bases_pinned_by_tag_never_latest(name: str) -> None:
    steps = instructions(DOCKERFILES[name])
    refs = from_refs(steps)
    assert refs, "no FROM"
    for ref in refs:
        assert "$" not in ref, f"{ref}: the base must be spelled out, not an ARG"
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
    assert args_defaults(steps)["TRTLLM_VERSION"] == TRITON_TRTLLM[release]
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
sys.argv = ["steps.launcher", sys.argv[2], "--help"]
runpy.run_module("steps.launcher", run_name="__main__")
"""


@pytest.mark.parametrize("role", ["leader", "worker"])
def test_launcher_runs_with_the_serving_image_packages(role: str) -> None:
    """`python -m steps.launcher` needs nothing beyond what the serving image's venv installs."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_FENCE, ",".join(sorted(LAUNCHER_VENV)), role],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"steps.launcher {role}" in result.stdout
    run = " ".join(s.args for s in instructions(DOCKERFILES["triton-trtllm"]) if s.keyword == "RUN")
    assert "constraints.txt pydantic pyyaml rich" in run
