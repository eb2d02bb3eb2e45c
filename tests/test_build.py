"""steps.build. Engine builds use TEST DOUBLES of convert_checkpoint.py and trtllm-build
(tests/doubles/trtllm: TensorRT-LLM cannot be installed here); they record their argv and write
the real output layout (config.json with the mapping, rank*.engine)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from steps import build as b
from steps.manifest import read_manifest
from workflows.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
DOUBLES = ROOT / "tests" / "doubles" / "trtllm"
EXAMPLES = ROOT / "workflows" / "examples"
REFERENCE_405B = EXAMPLES / "llama-3.1-405b-p5.yaml"
EIGHT_GPUS = ",".join(str(i) for i in range(8))


def llama_checkpoint(directory: Path, *, heads: int, layers: int) -> Path:
    """A Llama-shaped HF checkpoint: the architecture's config.json, a small weight file, a tokenizer."""
    directory.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "hidden_size": heads * 128,
        "vocab_size": 128256,
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 1024)
    (directory / "tokenizer.json").write_text("{}")
    return directory


@pytest.fixture()
def doubles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The TensorRT-LLM test doubles on PATH, 8 visible GPUs, TRT-LLM 0.12.0; returns the argv record file."""
    record = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{DOUBLES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TRTLLM_DOUBLE_RECORD", str(record))
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", EIGHT_GPUS)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("MEGAPOD_TRTLLM_VERSION", b.TRTLLM_TARGET)
    return record


@pytest.fixture()
def ckpt_405b(tmp_path: Path) -> Path:
    """A checkpoint with Llama 3.1 405B's shape (128 heads, 126 layers) and tiny weights."""
    return llama_checkpoint(tmp_path / "Meta-Llama-3.1-405B", heads=128, layers=126)


def recorded(record: Path) -> list[dict]:
    """The doubles' invocations, in order."""
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI in-process: (exit code, stderr)."""
    code = b.main(argv)
    return code, capsys.readouterr().err


def test_reference_405b_uses_exactly_the_reference_commands_with_doubles(
    doubles, ckpt_405b, tmp_path, capsys
):
    """With test doubles: the 405B spec gives REFERENCE.md's convert and trtllm-build flags exactly."""
    out, outputs = tmp_path / "vol", tmp_path / "outputs"
    argv = ["--spec", str(REFERENCE_405B), "--checkpoint", str(ckpt_405b), "--out", str(out)]
    argv += ["--outputs", str(outputs)]
    code, err = run(argv, capsys)
    assert code == 0, err
    engines = Path((outputs / "engines").read_text())
    key = engines.name
    converted, staging = out / "engines" / f".{key}.converted", out / "engines" / f".{key}.partial"
    calls = recorded(doubles)
    assert [c["tool"] for c in calls] == ["convert_checkpoint.py", "trtllm-build"]
    assert calls[0]["argv"] == [
        "--model_dir",
        str(ckpt_405b),
        "--output_dir",
        str(converted),
        "--dtype",
        "bfloat16",
        "--tp_size",
        "8",
        "--pp_size",
        "2",
        "--load_by_shard",
        "--workers",
        "2",
    ]
    assert calls[1]["argv"] == [
        "--checkpoint_dir",
        str(converted),
        "--output_dir",
        str(staging),
        "--max_num_tokens",
        "4096",
        "--max_input_len",
        "65536",
        "--max_seq_len",
        "131072",
        "--max_batch_size",
        "8",
        "--use_paged_context_fmha",
        "enable",
        "--workers",
        "8",
    ]
    assert engines == out / "engines" / key and len(list(engines.glob("rank*.engine"))) == 16
    assert not converted.exists() and not staging.exists()
    manifest = read_manifest(engines)
    assert manifest is not None and manifest.kind == "engine"
    spec = load_spec(REFERENCE_405B)
    assert manifest.extra["trtllm_version"] == "0.12.0" and manifest.extra["spec_hash"] == spec.content_hash()
    assert manifest.extra["commands"][1][0] == "trtllm-build"
    assert manifest.extra["mapping"] == {"world_size": 16, "tp_size": 8, "pp_size": 2, "gpus_per_node": 8}
    assert "[trtllm-build] [TensorRT-LLM] built engine for rank 15" in err  # output streamed

    # Same inputs again: the cache serves it, nothing runs.
    code, err = run(argv, capsys)
    assert code == 0 and "cache hit" in err and len(recorded(doubles)) == 2
    assert (outputs / "engines").read_text() == str(engines)


def test_cache_key_changes_with_build_section_and_version(ckpt_405b):
    spec = load_spec(REFERENCE_405B)
    other = parse_spec(
        {**yaml.safe_load(REFERENCE_405B.read_text()), "build": {"tp": 8, "pp": 2, "max_batch_size": 16}}
    )
    assert b.build_key(spec, "d", "0.12.0") == b.build_key(spec, "d", "0.12.0")
    assert (
        len(
            {
                b.build_key(spec, "d", "0.12.0"),
                b.build_key(other, "d", "0.12.0"),
                b.build_key(spec, "e", "0.12.0"),
                b.build_key(spec, "d", "0.13.0"),
            }
        )
        == 4
    )


def test_workers_follow_the_gpus_available(monkeypatch):
    spec = load_spec(REFERENCE_405B)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    command = b.trtllm_build_command(spec, Path("c"), Path("e"), b.available_gpus())
    assert command[-2:] == ["--workers", "2"]


def test_failing_build_is_one_clear_error_and_leaves_no_engines_with_doubles(
    doubles, ckpt_405b, tmp_path, monkeypatch, capsys
):
    """With test doubles: trtllm-build exits 3 -> exit 1, its last lines in the error, no manifest."""
    monkeypatch.setenv("TRTLLM_DOUBLE_FAIL", "trtllm-build")
    out = tmp_path / "vol"
    code, err = run(
        [
            "--spec",
            str(REFERENCE_405B),
            "--checkpoint",
            str(ckpt_405b),
            "--out",
            str(out),
            "--outputs",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(error) == 1
    assert "trtllm-build failed with exit code 3" in error[0] and "CUDA out of memory" in error[0]
    assert [p.name for p in (out / "engines").iterdir()] == ["logs"]
    assert not (tmp_path / "o").exists()


def test_engine_config_gpus_per_node_mismatch_is_caught_with_doubles(
    doubles, ckpt_405b, tmp_path, monkeypatch, capsys
):
    """With test doubles: an engine recording gpus_per_node=4 for 8-GPU nodes fails the build."""
    monkeypatch.setenv("TRTLLM_DOUBLE_GPUS_PER_NODE", "4")
    out = tmp_path / "vol"
    code, err = run(
        ["--spec", str(REFERENCE_405B), "--checkpoint", str(ckpt_405b), "--out", str(out)], capsys
    )
    assert code == 1
    assert "gpus_per_node=4 (plan: 8)" in err and "never edit config.json by hand" in err
    assert [p.name for p in (out / "engines").iterdir()] == ["logs"]


def test_non_default_gpus_per_node_is_passed_to_trtllm_build():
    data = yaml.safe_load(REFERENCE_405B.read_text())
    data["cluster"]["gpus_per_node"] = 4
    data["build"]["pp"] = 4
    command = b.trtllm_build_command(parse_spec(data), Path("c"), Path("e"), 4)
    assert command[command.index("--gpus_per_node") + 1] == "4"


def test_checkpoint_that_does_not_fit_the_plan_is_bad_input(doubles, tmp_path, capsys):
    ckpt = llama_checkpoint(tmp_path / "odd", heads=12, layers=126)
    (ckpt / "tokenizer.json").unlink()
    code, err = run(
        ["--spec", str(REFERENCE_405B), "--checkpoint", str(ckpt), "--out", str(tmp_path / "v")], capsys
    )
    assert code == 2
    assert "num_attention_heads 12 is not divisible by build.tp 8" in err and "no tokenizer" in err
    assert len(err.strip().splitlines()) == 1 and recorded(doubles) == []


def test_trtllm_pytorch_writes_llm_api_options(tmp_path, capsys):
    spec_path = EXAMPLES / "llama-3.1-70b-pytorch-fp8.yaml"
    ckpt = llama_checkpoint(tmp_path / "70b", heads=64, layers=80)
    outputs = tmp_path / "o"
    code, err = run(
        [
            "--spec",
            str(spec_path),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "v"),
            "--outputs",
            str(outputs),
        ],
        capsys,
    )
    assert code == 0, err
    engines = Path((outputs / "engines").read_text())
    options = yaml.safe_load((engines / b.LLM_API_OPTIONS).read_text())
    spec = load_spec(spec_path)
    assert options["tensor_parallel_size"] == spec.build.tp == 4
    assert options["max_batch_size"] == spec.build.max_batch_size == 32
    assert options["kv_cache_config"] == {
        "free_gpu_memory_fraction": spec.build.kv_cache_free_gpu_mem_fraction,
        "enable_block_reuse": spec.build.enable_kv_cache_reuse,
        "dtype": "fp8",
    }
    assert options["model"] == str(ckpt.resolve())
    assert read_manifest(engines).kind == "llmapi-options"


def test_cpu_python_validates_and_points_at_the_checkpoint(tiny_model, tmp_path, capsys):
    spec = parse_spec(
        {
            "name": "tiny",
            "model": {"source": str(tiny_model), "parameters_billion": 0.001},
            "backend": "cpu-python",
            "build": {"tp": 1, "pp": 1},
            "cluster": {"gpus_per_node": 1},
        }
    )
    result = b.build(spec, tiny_model, tmp_path)
    pointer = json.loads((result.engines / b.CPU_POINTER).read_text())
    assert pointer["checkpoint"] == str(tiny_model.resolve()) and pointer["backend"] == "cpu-python"
    assert not result.cached and b.build(spec, tiny_model, tmp_path).cached
