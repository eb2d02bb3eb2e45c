"""steps.build. Engine builds use TEST DOUBLES of convert_checkpoint.py and trtllm-build
(tests/doubles/trtllm: TensorRT-LLM cannot be installed here); they record their argv and write
the real output layout (config.json with the mapping, rank*.engine)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from steps import build as b
from steps.manifest import read_manifest
from workflows.releases import DEFAULT_TRTLLM
from workflows.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
DOUBLES = ROOT / "tests" / "doubles" / "trtllm"
EXAMPLES = ROOT / "workflows" / "examples"
REFERENCE_405B = EXAMPLES / "llama-3.1-405b-p5.yaml"
PYTORCH_70B = EXAMPLES / "llama-3.1-70b-pytorch-fp8.yaml"
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
    monkeypatch.setenv("MEGAPOD_TRTLLM_VERSION", DEFAULT_TRTLLM["trtllm-engine"])
    return record


def image_python(directory: Path, trtllm_version: str) -> Path:
    """A stand-in for the serving image's base `python3` (returns its bin dir): this interpreter,
    with tensorrt_llm installed as pip leaves it (a dist-info whose METADATA names the version),
    recording each run in TRTLLM_DOUBLE_RECORD.

    In the image (nvcr.io/nvidia/tritonserver:24.08-trtllm-python-py3) `python3` is the base's
    interpreter that has tensorrt_llm, while `python` is megapod's venv without it.
    """
    site = directory / "site-packages" / f"tensorrt_llm-{trtllm_version}.dist-info"
    site.mkdir(parents=True)
    (site / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tensorrt_llm\nVersion: {trtllm_version}\n")
    log_run = (
        "import json, os, sys; open(os.environ['TRTLLM_DOUBLE_RECORD'], 'a')"
        ".write(json.dumps({'tool': 'python3', 'argv': sys.argv[1:]}) + chr(10))"
    )
    script = directory / "bin" / "python3"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'{sys.executable} -c {shlex.quote(log_run)} "$@"\n'
        f'PYTHONPATH={site.parent} exec {sys.executable} "$@"\n'
    )
    script.chmod(0o755)
    return script.parent


def modelopt_fp8(checkpoint: Path) -> Path:
    """What ModelOpt's HF export (llm_ptq --quant fp8 --export_fmt hf) writes next to config.json."""
    quant = {
        "producer": {"name": "modelopt"},
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None},
    }
    (checkpoint / b.HF_QUANT_CONFIG).write_text(json.dumps(quant))
    return checkpoint


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
    data = yaml.safe_load(REFERENCE_405B.read_text())
    other = parse_spec({**data, "build": {**data["build"], "max_batch_size": 16}})
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
    spec_path = PYTORCH_70B
    ckpt = modelopt_fp8(llama_checkpoint(tmp_path / "70b", heads=64, layers=80))
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
    manifest = read_manifest(engines)
    assert manifest.kind == "llmapi-options"
    # sized from what the server loads: the checkpoint's weight files
    assert manifest.extra["weight_bytes"] == (ckpt / "model-00001-of-00001.safetensors").stat().st_size


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


def test_converter_and_version_come_from_the_image_python3_with_doubles(
    tmp_path, ckpt_405b, monkeypatch, capsys
):
    """With test doubles: the build asks the serving image's base `python3` for tensorrt_llm's version
    and runs convert_checkpoint.py with it, never with its own interpreter (megapod's venv, which has
    no tensorrt_llm). The reference does the same (`python3 convert_checkpoint.py ...` in the
    tritonserver:24.08-trtllm-python-py3 image, TensorRT-LLM v0.12.0 examples/llama/)."""
    record = tmp_path / "argv.jsonl"
    bin_dir = image_python(tmp_path / "image", "0.12.0")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{DOUBLES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TRTLLM_DOUBLE_RECORD", str(record))
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", EIGHT_GPUS)
    monkeypatch.delenv("MEGAPOD_TRTLLM_VERSION", raising=False)
    monkeypatch.delenv(b.TRTLLM_PYTHON_ENV, raising=False)
    outputs = tmp_path / "o"
    argv = ["--spec", str(REFERENCE_405B), "--checkpoint", str(ckpt_405b), "--out", str(tmp_path / "v")]
    code, err = run([*argv, "--outputs", str(outputs)], capsys)
    assert code == 0, err
    manifest = read_manifest(Path((outputs / "engines").read_text()))
    assert manifest.extra["trtllm_version"] == "0.12.0"  # from the image python's package metadata
    convert = manifest.extra["commands"][0]
    assert convert[0] == b.TRTLLM_PYTHON == "python3" and convert[0] != sys.executable
    runs = recorded(record)
    assert [r["tool"] for r in runs][:3] == ["python3", "python3", "convert_checkpoint.py"]
    assert runs[1]["argv"][0].endswith("convert_checkpoint.py")  # python3 ran the converter


def test_the_image_python_is_overridable_and_a_wrong_release_is_refused(
    tmp_path, ckpt_405b, monkeypatch, capsys
):
    """MEGAPOD_TRTLLM_PYTHON names the interpreter; an image whose tensorrt_llm differs from the spec's
    release fails before any conversion, naming both."""
    record = tmp_path / "argv.jsonl"
    python = image_python(tmp_path / "image", "0.13.0") / "python3"
    monkeypatch.setenv(b.TRTLLM_PYTHON_ENV, str(python))
    monkeypatch.setenv("TRTLLM_DOUBLE_RECORD", str(record))
    monkeypatch.delenv("MEGAPOD_TRTLLM_VERSION", raising=False)
    spec = load_spec(REFERENCE_405B)
    assert b.convert_command(spec, Path("c.py"), ckpt_405b, tmp_path / "c")[0] == str(python)
    code, err = run(
        ["--spec", str(REFERENCE_405B), "--checkpoint", str(ckpt_405b), "--out", str(tmp_path / "v")], capsys
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1
    assert "TensorRT-LLM 0.13.0" in errors[0] and "targets 0.12.0" in errors[0]
    assert [r["tool"] for r in recorded(record)] == ["python3"]  # only the version probe ran


def test_pytorch_fp8_refuses_a_plain_checkpoint(tmp_path, capsys):
    """trtllm-pytorch serves FP8 weights only from a ModelOpt-quantized checkpoint: TensorRT-LLM's
    ModelConfig.from_pretrained (tensorrt_llm/_torch/model_config.py) takes the quantization from
    hf_quant_config.json, else config.json's quantization_config, and loads a plain checkpoint as
    it is; docs/source/features/quantization.md at v1.0.0 ("Running Pre-quantized Models",
    "Offline Quantization with ModelOpt"). A plain checkpoint with quantization fp8 is bad input."""
    ckpt = llama_checkpoint(tmp_path / "70b", heads=64, layers=80)
    out = tmp_path / "v"
    code, err = run(["--spec", str(PYTORCH_70B), "--checkpoint", str(ckpt), "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs an FP8 checkpoint, this one is plain" in err and "quantize first" in err
    assert not out.exists()
    # quantized, but not FP8: named
    (ckpt / b.HF_QUANT_CONFIG).write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    code, err = run(["--spec", str(PYTORCH_70B), "--checkpoint", str(ckpt), "--out", str(out)], capsys)
    assert code == 2 and "this one is NVFP4" in err
    # FP8 named in config.json's quantization_config is what the backend reads too
    (ckpt / b.HF_QUANT_CONFIG).unlink()
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "fp8"}}))
    code, err = run(["--spec", str(PYTORCH_70B), "--checkpoint", str(ckpt), "--out", str(out)], capsys)
    assert code == 0, err


def test_pytorch_weights_are_sized_from_the_checkpoint(tmp_path, capsys):
    """The PyTorch backend loads the checkpoint's own weights: one that cannot fit a group is refused
    from its file sizes, whatever the spec's parameters_billion estimate says (70B FP8 ~ 65 GiB)."""
    ckpt = modelopt_fp8(llama_checkpoint(tmp_path / "70b", heads=64, layers=80))
    with (ckpt / "model-00001-of-00001.safetensors").open("r+b") as weights:
        weights.truncate(300 * 1024**3)  # sparse: 300 GiB on paper, nothing on disk
    code, err = run(
        ["--spec", str(PYTORCH_70B), "--checkpoint", str(ckpt), "--out", str(tmp_path / "v")], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "its weights take 300 GiB" in err and "4 x 80 GiB GPUs allows 288 GiB" in err
