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


# --- hostile files (issue 13.6): one line per problem, exit 2, no traceback, no hang ---------------

TINY = EXAMPLES / "tiny-local.yaml"


def assert_refused(result, *needles: str) -> None:
    """Exit 2, every stderr line an `error:` line, no traceback, the needles in the message."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for needle in needles:
        assert needle in result.stderr


FINITE = "must be a finite number within ±2**53"
PARAMS, NAME = "parameters_billion: 0.0001", "name: tiny-local"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (PARAMS, "parameters_billion: .inf", f"model.parameters_billion: {FINITE} (got inf)"),
        (PARAMS, "parameters_billion: 1e308", f"model.parameters_billion: {FINITE} (got 1e+308)"),
        ("gpu_memory_gib: 1", "gpu_memory_gib: -.inf", f"cluster.gpu_memory_gib: {FINITE}"),
        ("target: 0.8", "target: .inf", f"serving.autoscaling.target: {FINITE}"),
        ("tp: 1", "tp: " + "9" * 4000, f"build.tp: {FINITE} (got an integer of 4000 digits)"),
        ("tp: 1", "tp: " + "9" * 5000, "a value cannot be read (Exceeds the limit (4300 digits)"),
        (NAME, f"{NAME}\nx: " + "[" * 40 + "]" * 40, "nested more than 16 levels deep"),
        (NAME, f"{NAME}\nx: " + "[" * 5000 + "]" * 5000, "nested too deeply to read"),
        (NAME, "name: " + "{a: " * 3000 + "1" + "}" * 3000, "nested too deeply to read"),
    ],
)
def test_absurd_numbers_and_nesting_are_one_line(tmp_path, old, new, expected) -> None:
    """PyYAML 6.0 (yaml/constructor.py construct_yaml_int: int() hits CPython 3.11's 4300-digit
    limit; composer.py recurses per level) and `1e308`, a float in YAML 1.2 and go-yaml."""
    text = TINY.read_text()
    assert old in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(old, new, 1))
    assert_refused(validate(path), expected)


def test_aliases_are_walked_once_not_expanded(tmp_path) -> None:
    """A "billion laughs" document (9**8 references) is refused as fast as any other unknown key."""
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh", strict=True)]
    path = tmp_path / "spec.yaml"
    path.write_text(TINY.read_text() + "\n" + "\n".join(lines) + "\n")
    assert_refused(validate(path), "h: unknown key")


@pytest.mark.parametrize("kind", ["directory", "non-UTF-8", "binary"])
def test_files_that_are_not_yaml_text_are_one_line(tmp_path, kind) -> None:
    path = tmp_path / "spec.yaml"
    if kind == "directory":
        path.mkdir()
    else:
        text = TINY.read_bytes()
        path.write_bytes(b"\xff\xfe\x00" * 64 if kind == "binary" else text.replace(b"tiny", b"t\xffy", 1))
    expected = "a directory; give the spec YAML file" if kind == "directory" else "not UTF-8 text (byte"
    assert_refused(validate(path), expected)


def test_a_fifo_is_refused_before_it_is_opened(tmp_path) -> None:
    """Opening a FIFO for reading blocks until a writer comes (fifo(7)): a subprocess with a timeout."""
    from tests.support.cli import megapod_on_fifo

    fifo = tmp_path / "spec.yaml"
    proc = megapod_on_fifo("validate", fifo)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {fifo}: not a regular file; give the spec YAML file"


# --- issue 13.4: credentials where names are expected are refused and never echoed -----------------

PASTED = {
    "huggingface": "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3f",
    "aws key id": "AKIA" + "IOSFODNN7EXAMPLE",
    "aws session key id": "ASIA" + "IOSFODNN7EXAMPLE",
    "github classic": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github fine-grained": "github_pat_" + "11ABCDEFG0123456789abc_xyz",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtZWdhcG9kIn0.c2lnbmF0dXJlLWJ5dGVz",
}


def assert_not_echoed(result, secret: str, field: str) -> None:
    """Refused in one line naming the field; the value appears nowhere in the output."""
    assert_refused(result, field)
    assert len(error_lines(result)) == 1, result.stderr
    assert secret not in result.output and secret not in result.stderr


@pytest.mark.parametrize("field", ["name", "key"])
@pytest.mark.parametrize("kind", sorted(PASTED))
def test_a_token_pasted_as_a_secret_name_or_key_is_refused_unechoed(tmp_path, kind, field) -> None:
    secret = PASTED[kind]
    result = validate(variant(tmp_path, REFERENCE, _set("model", "hf_token_secret", field, secret)))
    assert_not_echoed(result, secret, f"model.hf_token_secret.{field}: is a credential")


@pytest.mark.parametrize(
    "url", ["https://minio:s3cr3t-passw0rd@minio.local:9000", "https://s3cr3t-passw0rd@minio.local",
            f"https://minio.local/?X-Amz-Credential={PASTED['aws key id']}"]
)  # fmt: skip
def test_credentials_in_the_s3_endpoint_url_are_refused_unechoed(tmp_path, url) -> None:
    s3 = {"bucket": "my-models", "endpoint_url": url}
    result = validate(variant(tmp_path, REFERENCE, _set("cluster", "s3", s3)))
    secret = "s3cr3t-passw0rd" if "passw0rd" in url else PASTED["aws key id"]
    assert_not_echoed(result, secret, "cluster.s3.endpoint_url: must not carry credentials")


@pytest.mark.parametrize(
    ("keys", "kind"),
    [(("name",), "huggingface"), (("cluster", "namespace"), "aws key id"), (("model", "source"), "jwt"),
     (("build", "tp"), "github classic")],
)  # fmt: skip
def test_no_error_line_echoes_a_secret_looking_value_whatever_the_field(tmp_path, keys, kind) -> None:
    """`(got ...)` is masked once, in the formatter every field's error goes through."""
    secret = PASTED[kind]
    result = validate(variant(tmp_path, REFERENCE, _set(*keys, secret)))
    assert_not_echoed(result, secret, ".".join(keys))
    assert "looks like a credential" in result.stderr


def test_secret_names_and_keys_that_merely_mention_tokens_are_accepted(tmp_path) -> None:
    ref = {"name": "hf-token", "key": "hf_token"}
    assert validate(variant(tmp_path, REFERENCE, _set("model", "hf_token_secret", ref))).exit_code == 0
