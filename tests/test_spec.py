"""The spec: `megapod validate` refuses bad specs with one clear line each (exit 2) and prints
the derived plan of every example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from workflows.cli import app
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "workflows" / "examples"
REFERENCE = EXAMPLES / "llama-3.1-405b-p5.yaml"
EIGHT_B = EXAMPLES / "llama-3.1-8b-1node.yaml"


def validate(path: Path):
    """Run `megapod validate PATH` in-process; stderr is kept apart from stdout."""
    return CliRunner().invoke(app, ["validate", str(path)])


def variant(tmp_path: Path, base: Path, change) -> Path:
    """A copy of an example spec with `change(data)` applied."""
    data = yaml.safe_load(base.read_text())
    change(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data: dict) -> None:
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    ("base", "change", "expected"),
    [
        (EIGHT_B, _set("build", "tp", 12), ["build.tp*build.pp = 12*1 = 12 GPUs", "e.g. 16"]),
        (REFERENCE, _set("build", "pp", 1), ["weights need", "build.pp=2", "build.quantization=fp8"]),
        (EIGHT_B, _set("build", "max_batch_sise", 8), ["build.max_batch_sise: unknown key"]),
        (EIGHT_B, _set("model", "source", "meta-llama/Llama-3.1-8B"), ["model.source", "hf://org/name@revision"]),
        (EIGHT_B, _set("build", "tp", -8), ["build.tp: must be >= 1 (got -8)"]),
        (EIGHT_B, _set("cluster", "efa_per_node", -1), ["cluster.efa_per_node: must be >= 0"]),
        (EIGHT_B, _set("model", "hf_token_secret", {"key": "x"}), ["model.hf_token_secret.name", "required"]),
        (EIGHT_B, _set("model", "hf_token_secret", None), ["hf_token_secret is required for hf:// sources"]),
        (EIGHT_B, _set("serving", "rollout", {"max_surge": 0, "max_unavailable": 0}),
         ["serving.rollout: max_surge and max_unavailable cannot both be 0"]),
        (EIGHT_B, _set("serving", "topology", {"key": "spine layer 3"}), ["serving.topology.key", "pattern"]),
        (EIGHT_B, _set("serving", "topology", {"key": "a/b", "mode": "strict"}),
         ["serving.topology.mode: must be one of 'preferred' or 'exclusive'"]),
        (EIGHT_B, _set("serving", "exclusive_topology", "a/b"), ["serving.exclusive_topology: unknown key"]),
    ],
    ids=["tp-not-dividing", "405b-bf16-one-node", "unknown-key", "bad-uri", "negative-tp", "negative-efa",
         "secret-without-name", "hub-without-secret", "rollout-stuck", "topology-key", "topology-mode",
         "old-exclusive-topology"],
)  # fmt: skip
def test_bad_spec_is_one_clear_line_and_exit_2(tmp_path, base, change, expected) -> None:
    path = variant(tmp_path, base, change)
    result = validate(path)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: ")
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert "valid" not in result.stdout


def test_several_problems_give_one_line_each(tmp_path) -> None:
    def change(data: dict) -> None:
        data["build"]["tp"] = 0
        data["serving"] = {"replicas": {"min": 3, "max": 2}, "colour": "blue"}

    result = validate(variant(tmp_path, EIGHT_B, change))
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 3, lines
    assert any("build.tp" in line for line in lines)
    assert any("serving.replicas" in line and "min (3) must be <= max (2)" in line for line in lines)
    assert any("serving.colour: unknown key" in line for line in lines)


def test_missing_file_and_broken_yaml(tmp_path) -> None:
    assert validate(tmp_path / "nope.yaml").exit_code == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: [unclosed\n")
    result = validate(broken)
    assert result.exit_code == 2 and "not valid YAML" in result.stderr and "line" in result.stderr


@pytest.mark.parametrize(
    ("example", "plan"),
    [
        (
            "llama-3.1-405b-p5.yaml",
            {"world_size": 16, "group_size": 2, "gpus_per_pod": 8, "weights_gib": 754.4},
        ),
        (
            "llama-3.1-8b-1node.yaml",
            {"world_size": 8, "group_size": 1, "gpus_per_pod": 8, "weights_gib": 14.9},
        ),
        (
            "llama-3.1-70b-pytorch-fp8.yaml",
            {"world_size": 4, "group_size": 1, "gpus_per_pod": 4, "weights_gib": 65.2},
        ),
    ],
)
def test_examples_validate_with_their_derived_plan(example, plan) -> None:
    path = EXAMPLES / example
    summary = load_spec(path).summary()
    for key, value in plan.items():
        assert summary[key] == value, key
    result = validate(path)
    assert result.exit_code == 0, result.output
    assert f"{path}: valid" in result.stdout
    for key, value in plan.items():
        assert f"{key}" in result.stdout and str(value) in result.stdout


def test_every_example_validates() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.group_size * spec.gpus_per_pod == max(spec.world_size, spec.gpus_per_pod)


def test_reference_matches_the_runbook() -> None:
    """REFERENCE.md: 405B BF16, TP8 x PP2 on 2x p5.48xlarge, 32 EFA each, its build flags."""
    spec = load_spec(REFERENCE)
    assert (spec.build.tp, spec.build.pp, spec.group_size, spec.cluster.efa_per_node) == (8, 2, 2, 32)
    assert (spec.build.max_num_tokens, spec.build.max_input_len, spec.build.max_seq_len) == (
        4096,
        65536,
        131072,
    )
    assert spec.build.max_batch_size == 8 and spec.build.paged_context_fmha
