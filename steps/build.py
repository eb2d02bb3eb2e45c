"""Build what the server loads, from a downloaded checkpoint, cached by content.

    python -m steps.build --spec SPEC --checkpoint DIR --out ROOT [--outputs DIR]

Backends (spec.backend):
- `trtllm-engine`: the model family's `convert_checkpoint.py`, then `trtllm-build`, with every
  flag derived from the spec; output streamed to the log; the engine's config.json checked
  against the serving plan (tp, pp, world size, gpus_per_node: the reference's hand-edit
  pitfall); engines land in ROOT/engines/<key>/ with a build manifest written last.
- `trtllm-pytorch`: no engine; the checkpoint is validated and the LLM-API options file
  (`extra_llm_api_options.yaml`, what `trtllm-serve --extra_llm_api_options` and the Triton
  llmapi backend read) is written from the spec.
- `cpu-python` (local profile): the checkpoint is validated and a pointer file written.

Target TensorRT-LLM: the spec's (Spec.trtllm_version; v0.12.0 = Triton 24.08
`tritonserver:24.08-trtllm-python-py3`, the reference image, for trtllm-engine). The build runs
in the serving image (images/triton-trtllm), whose `python` is megapod's venv: the converters
run with the base image's own interpreter (TRTLLM_PYTHON, `MEGAPOD_TRTLLM_PYTHON` overrides),
as the reference does, and are found under EXAMPLES_ROOT, where the Dockerfile unpacks the
release's `examples/`. The llama converter lives at `examples/llama/convert_checkpoint.py` in
v0.12.0; later releases moved it to `examples/models/core/llama/convert_checkpoint.py`; both
are searched. TensorRT-LLM removed the TensorRT engine backend (trtllm-build, convert scripts) from
main in mid-2026 (NVIDIA/TensorRT-LLM#15763, #15907); the 1.2 release line is the newest that
still ships `trtllm-build`, so engine builds need an image pinned to such a release.
trtllm-build's `--gpus_per_node` defaults to 8; it is passed only when the plan differs.

Cache key: sha256 of (backend, the spec's build section, the checkpoint manifest's digest,
the TensorRT-LLM version). An existing ROOT/engines/<key>/ with a manifest is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import yaml

from steps.contract import CPU_POINTER
from steps.manifest import DEFAULT_OUTPUTS, Manifest, hash_tree, read_manifest, write_manifest, write_outputs
from steps.transfer import cli_logging
from workflows.spec import GIB, MAX_WEIGHTS_FRACTION, Spec, SpecError, load_spec

log = logging.getLogger("megapod.build")

TRTLLM_BUILD_DEFAULT_GPUS_PER_NODE = 8
# The serving image's base interpreter, which has tensorrt_llm (its `python` is megapod's venv).
TRTLLM_PYTHON_ENV, TRTLLM_PYTHON = "MEGAPOD_TRTLLM_PYTHON", "python3"
CONVERT_SCRIPT_PATHS = (
    "examples/llama/convert_checkpoint.py",
    "examples/models/core/llama/convert_checkpoint.py",
)
QUANTIZE_SCRIPT_PATH = "examples/quantization/quantize.py"
# Where images/triton-trtllm/Dockerfile unpacks the release's examples/ (TRTLLM_EXAMPLES_ROOT overrides).
EXAMPLES_ROOT = "/opt/tensorrt_llm"
# Quantizations done by NVIDIA ModelOpt through quantize.py rather than convert_checkpoint.py.
MODELOPT_QFORMATS = {"fp8": "fp8", "int4_awq": "int4_awq"}
LLM_API_OPTIONS = "extra_llm_api_options.yaml"
HF_QUANT_CONFIG = "hf_quant_config.json"  # what ModelOpt's HF export writes next to config.json
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class BuildError(RuntimeError):
    """A build that cannot complete; the message is one line for the user."""


class BadCheckpoint(BuildError):
    """The checkpoint does not fit the spec or is incomplete (exit code 2)."""


# --- checkpoint --------------------------------------------------------------------------------------


def validate_checkpoint(spec: Spec, checkpoint: Path) -> tuple[dict, str]:
    """Check config.json, weights and tokenizer against the spec; return (config, content digest)."""
    if not checkpoint.is_dir():
        raise BadCheckpoint(f"{checkpoint}: not a directory; pass the `checkpoint` output of steps.download")
    try:
        config = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadCheckpoint(
            f"{checkpoint}/config.json: missing or not JSON ({exc.__class__.__name__})"
        ) from None
    problems = []
    arch = " ".join(config.get("architectures", []))
    if spec.model.family == "llama" and "Llama" not in arch:
        problems.append(f"architectures {arch or '(none)'} is not a Llama model (model.family: llama)")
    heads = config.get("num_attention_heads")
    if isinstance(heads, int) and heads % spec.build.tp:
        problems.append(f"num_attention_heads {heads} is not divisible by build.tp {spec.build.tp}")
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and layers < spec.build.pp:
        problems.append(f"num_hidden_layers {layers} is fewer than build.pp {spec.build.pp}")
    if not any(next(checkpoint.glob(p), None) for p in WEIGHT_PATTERNS):
        problems.append(f"no weights ({', '.join(WEIGHT_PATTERNS)})")
    tokenizer = (
        Path(spec.model.tokenizer)
        if spec.model.tokenizer and spec.model.tokenizer.startswith("/")
        else checkpoint
    )
    if not any((tokenizer / name).exists() for name in TOKENIZER_FILES):
        problems.append(f"no tokenizer ({' or '.join(TOKENIZER_FILES)}) in {tokenizer}")
    if spec.backend == "trtllm-pytorch":
        problems += pytorch_problems(spec, checkpoint, config)
    if problems:
        raise BadCheckpoint(f"{checkpoint}: " + "; ".join(problems))
    manifest = read_manifest(checkpoint)
    digest = (
        manifest.digest()
        if manifest
        else Manifest("checkpoint", str(checkpoint), "", hash_tree(checkpoint)).digest()
    )
    return config, digest


def checkpoint_quantization(checkpoint: Path, config: dict) -> str | None:
    """The quantization the PyTorch backend finds in a checkpoint, None for a plain one.

    As TensorRT-LLM's ModelConfig.from_pretrained (tensorrt_llm/_torch/model_config.py) reads
    it: ModelOpt's hf_quant_config.json (`quantization.quant_algo`) first, else config.json's
    `quantization_config` (its quant_algo or quant_method).
    """
    modelopt = checkpoint / HF_QUANT_CONFIG
    if modelopt.is_file():
        try:
            return str(json.loads(modelopt.read_text())["quantization"]["quant_algo"])
        except (OSError, ValueError, KeyError, TypeError):
            return "unreadable"
    hf = config.get("quantization_config")
    if isinstance(hf, dict):
        return str(hf.get("quant_algo") or hf.get("quant_method") or "unknown")
    return None


def checkpoint_weight_bytes(checkpoint: Path) -> int:
    """Bytes of the weights the server will load: the first weight format present (safetensors first)."""
    for pattern in WEIGHT_PATTERNS:
        if files := list(checkpoint.glob(pattern)):
            return sum(f.stat().st_size for f in files)
    return 0


def pytorch_problems(spec: Spec, checkpoint: Path, config: dict) -> list[str]:
    """trtllm-pytorch loads the checkpoint as it is: FP8 must already be in it, and its weights must fit."""
    problems = []
    found = checkpoint_quantization(checkpoint, config)
    if spec.build.quantization == "fp8" and not (found or "").lower().startswith("fp8"):
        what = f"is {found}" if found else f"is plain (no {HF_QUANT_CONFIG}, no quantization_config)"
        problems.append(
            f"build.quantization fp8 with trtllm-pytorch needs an FP8 checkpoint, this one {what}: "
            "use a pre-quantized (ModelOpt) FP8 checkpoint, or quantize first (ModelOpt llm_ptq "
            "--quant fp8 --export_fmt hf)"
        )
    weights, budget = checkpoint_weight_bytes(checkpoint), spec.group_memory_bytes * MAX_WEIGHTS_FRACTION
    if weights > budget:
        problems.append(
            f"its weights take {weights / GIB:.0f} GiB, one group of {spec.world_size} x "
            f"{spec.cluster.gpu_memory_gib:g} GiB GPUs allows {budget / GIB:.0f} GiB "
            f"({MAX_WEIGHTS_FRACTION:.0%}); raise build.tp/build.pp or use a quantized checkpoint"
        )
    return problems


def trtllm_python() -> str:
    """The interpreter TensorRT-LLM is installed in: the serving image's base python3."""
    return os.environ.get(TRTLLM_PYTHON_ENV) or TRTLLM_PYTHON


# Asks the package metadata only: importing tensorrt_llm takes seconds and wants CUDA.
VERSION_PROBE = "from importlib.metadata import version; print(version('tensorrt_llm'))"


def trtllm_version(target: str) -> str:
    """TensorRT-LLM's version in trtllm_python(), checked against target (MEGAPOD_TRTLLM_VERSION wins)."""
    version = os.environ.get("MEGAPOD_TRTLLM_VERSION")
    if not version:
        python = trtllm_python()
        try:
            probe = subprocess.run([python, "-c", VERSION_PROBE], capture_output=True, text=True, check=False)
        except OSError as exc:
            raise BuildError(f"cannot run {python} ({exc.strerror}); set {TRTLLM_PYTHON_ENV}") from None
        if probe.returncode:
            raise BuildError(
                f"TensorRT-LLM is not installed for {python} (no tensorrt_llm package); run the build in "
                f"the serving image (images/triton-trtllm, TensorRT-LLM {target}) or set {TRTLLM_PYTHON_ENV}"
            )
        version = probe.stdout.strip()
    if version != target:
        raise BuildError(
            f"this image carries TensorRT-LLM {version}, the spec targets {target} (serving.trtllm_version); "
            "build the image for the spec (megapod images SPEC)"
        )
    return version


def build_key(spec: Spec, checkpoint_digest: str, version: str) -> str:
    """Content key of a build: same inputs, same key, same directory."""
    material = json.dumps(
        {
            "backend": spec.backend,
            "build": spec.build.model_dump(mode="json"),
            "gpus_per_node": spec.cluster.gpus_per_node,
            "checkpoint": checkpoint_digest,
            "trtllm": version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


# --- commands ----------------------------------------------------------------------------------------


def available_gpus() -> int:
    """GPUs this pod can use: CUDA/NVIDIA_VISIBLE_DEVICES, else `nvidia-smi -L`, else 1."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = os.environ.get(var, "").strip()
        if value and value not in ("all", "void", "none"):
            return len([d for d in value.split(",") if d.strip()])
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
        return max(1, sum(1 for line in listing.splitlines() if line.startswith("GPU ")))
    return 1


def find_script(relative_paths: tuple[str, ...], name: str) -> Path:
    """A TensorRT-LLM example script: on PATH, or under TRTLLM_EXAMPLES_ROOT (default EXAMPLES_ROOT)."""
    if found := shutil.which(name):
        return Path(found)
    root = Path(os.environ.get("TRTLLM_EXAMPLES_ROOT") or EXAMPLES_ROOT)
    for rel in relative_paths:
        if (candidate := root / rel).is_file():
            return candidate
    raise BuildError(
        f"{name} not found on PATH or under {root} ({' or '.join(relative_paths)}); "
        "set TRTLLM_EXAMPLES_ROOT to the TensorRT-LLM source tree"
    )


def convert_command(spec: Spec, script: Path, checkpoint: Path, converted: Path) -> list[str]:
    """convert_checkpoint.py (or ModelOpt quantize.py for fp8/int4_awq) with flags from the spec,
    run by trtllm_python() (the reference runs both with the TensorRT-LLM image's python3)."""
    b = spec.build
    python = trtllm_python()
    if b.quantization in MODELOPT_QFORMATS:
        return [
            python, str(script), "--model_dir", str(checkpoint), "--output_dir", str(converted),
            "--dtype", b.dtype, "--qformat", MODELOPT_QFORMATS[b.quantization],
            "--tp_size", str(b.tp), "--pp_size", str(b.pp),
        ]  # fmt: skip
    command = [
        python, str(script), "--model_dir", str(checkpoint), "--output_dir", str(converted),
        "--dtype", b.dtype, "--tp_size", str(b.tp), "--pp_size", str(b.pp),
    ]  # fmt: skip
    if b.quantization == "int8_wo":
        command += ["--use_weight_only", "--weight_only_precision", "int8"]
    return [*command, "--load_by_shard", "--workers", str(b.convert_workers)]


def trtllm_build_command(spec: Spec, converted: Path, engines: Path, gpus: int) -> list[str]:
    """trtllm-build with flags from the spec; --workers = GPUs available (at most one per rank)."""
    b = spec.build
    command = [
        "trtllm-build", "--checkpoint_dir", str(converted), "--output_dir", str(engines),
        "--max_num_tokens", str(b.max_num_tokens), "--max_input_len", str(b.max_input_len),
        "--max_seq_len", str(b.max_seq_len), "--max_batch_size", str(b.max_batch_size),
        "--use_paged_context_fmha", "enable" if b.paged_context_fmha else "disable",
    ]  # fmt: skip
    if spec.cluster.gpus_per_node != TRTLLM_BUILD_DEFAULT_GPUS_PER_NODE:
        command += ["--gpus_per_node", str(spec.cluster.gpus_per_node)]
    command += [*b.extra_build_flags, "--workers", str(max(1, min(gpus, spec.world_size)))]
    return command


def check_build_options(spec: Spec) -> None:
    """Refuse option combinations TensorRT-LLM rejects at serving time."""
    b = spec.build
    if (b.enable_kv_cache_reuse or b.enable_chunked_context) and not b.paged_context_fmha:
        raise BadCheckpoint(
            "build.enable_kv_cache_reuse / build.enable_chunked_context need build.paged_context_fmha: true"
        )


def run_streaming(command: list[str], log_path: Path, label: str) -> None:
    """Run a command, streaming its output to our log and to log_path; raise with its tail on failure."""
    log.info("%s: %s", label, " ".join(command))
    tail: deque[str] = deque(maxlen=8)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except OSError as exc:
        raise BuildError(f"{label}: cannot run {command[0]}: {exc.strerror}") from None
    with log_path.open("a") as log_file, proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            tail.append(line.rstrip())
            log.info("[%s] %s", label, line.rstrip())
    if proc.returncode:
        last = " | ".join(tail) or "(no output)"
        raise BuildError(f"{label} failed with exit code {proc.returncode}: {last} (full log: {log_path})")


def check_engine_config(spec: Spec, engine_dir: Path) -> dict:
    """The engine's config.json must match the serving plan; ranks must all be there."""
    try:
        config = json.loads((engine_dir / "config.json").read_text())
        mapping = config["pretrained_config"]["mapping"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BuildError(f"{engine_dir}/config.json: missing or without pretrained_config.mapping") from None
    plan = {
        "tp_size": spec.build.tp,
        "pp_size": spec.build.pp,
        "world_size": spec.world_size,
        "gpus_per_node": spec.cluster.gpus_per_node,
    }
    wrong = [
        f"{key}={mapping.get(key)} (plan: {want})" for key, want in plan.items() if mapping.get(key) != want
    ]
    if wrong:
        raise BuildError(
            f"{engine_dir}/config.json does not match the serving plan: {', '.join(wrong)}; "
            "Triton would fail to load it (e.g. 'GPU number is incompatible with N gpusPerNode'); "
            "fix the spec or rebuild, never edit config.json by hand"
        )
    ranks = sorted(engine_dir.glob("rank*.engine"))
    if len(ranks) != spec.world_size:
        raise BuildError(f"{engine_dir}: {len(ranks)} rank*.engine files, the plan needs {spec.world_size}")
    return mapping


# --- the backends ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    """Where the built output is and whether the cache served it."""

    engines: Path
    key: str
    cached: bool


def cached(spec: Spec, target: Path) -> BuildResult | None:
    """An earlier build with the same key, if complete (re-checked against the plan for engines)."""
    manifest = read_manifest(target)
    if manifest is None:
        return None
    if spec.backend == "trtllm-engine":
        check_engine_config(spec, target)
    log.info(
        "build: cache hit, %s already built with key %s; skipping the build", spec.backend, manifest.revision
    )
    return BuildResult(target, manifest.revision, True)


def publish_dir(staging: Path, target: Path, manifest: Manifest) -> None:
    """Manifest into the staging dir, then one rename: readers see nothing or everything."""
    write_manifest(staging, manifest)
    if target.exists():  # an incomplete leftover without a manifest
        shutil.rmtree(target)
    os.replace(staging, target)


def build_engines(spec: Spec, checkpoint: Path, out_root: Path, *, gpus: int | None = None) -> BuildResult:
    """convert + trtllm-build into out_root/engines/<key>/, or reuse that directory."""
    check_build_options(spec)
    _, digest = validate_checkpoint(spec, checkpoint)
    assert spec.trtllm_version is not None  # trtllm-engine always has one
    version = trtllm_version(spec.trtllm_version)
    key = build_key(spec, digest, version)
    target = out_root / "engines" / key
    if hit := cached(spec, target):
        return hit
    quantize = spec.build.quantization in MODELOPT_QFORMATS
    script = (
        find_script((QUANTIZE_SCRIPT_PATH,), "quantize.py")
        if quantize
        else find_script(CONVERT_SCRIPT_PATHS, "convert_checkpoint.py")
    )
    staging = out_root / "engines" / f".{key}.partial"
    converted = out_root / "engines" / f".{key}.converted"
    log_path = out_root / "engines" / "logs" / f"{key}.log"
    for leftover in (staging, converted):
        shutil.rmtree(leftover, ignore_errors=True)
    gpus = gpus or available_gpus()
    commands = [
        convert_command(spec, script, checkpoint, converted),
        trtllm_build_command(spec, converted, staging, gpus),
    ]
    started = time.monotonic()
    try:
        run_streaming(commands[0], log_path, "quantize" if quantize else "convert")
        run_streaming(commands[1], log_path, "trtllm-build")
        mapping = check_engine_config(spec, staging)
        manifest = Manifest(
            kind="engine",
            source=str(checkpoint),
            revision=key,
            files=hash_tree(staging),
            extra={
                "backend": spec.backend,
                "trtllm_version": version,
                "commands": commands,
                "mapping": mapping,
                "spec_hash": spec.content_hash(),
                "build": spec.build.model_dump(mode="json"),
                "checkpoint_digest": digest,
                "gpus": gpus,
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        publish_dir(staging, target, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(converted, ignore_errors=True)
    log.info("build: engines ready in %s (%.0fs)", target, time.monotonic() - started)
    return BuildResult(target, key, False)


def llm_api_options(spec: Spec) -> dict:
    """The LLM-API options the PyTorch backend (trtllm-serve / Triton llmapi model) is started with."""
    b = spec.build
    options: dict = {
        "backend": "pytorch",
        "tensor_parallel_size": b.tp,
        "pipeline_parallel_size": b.pp,
        "max_batch_size": b.max_batch_size,
        "max_num_tokens": b.max_num_tokens,
        "max_seq_len": b.max_seq_len,
        "kv_cache_config": {
            "free_gpu_memory_fraction": b.kv_cache_free_gpu_mem_fraction,
            "enable_block_reuse": b.enable_kv_cache_reuse,
        },
        "enable_chunked_prefill": b.enable_chunked_context,
    }
    if b.quantization == "fp8":
        options["kv_cache_config"]["dtype"] = "fp8"
    return options


def prepare_without_engine(spec: Spec, checkpoint: Path, out_root: Path) -> BuildResult:
    """trtllm-pytorch / cpu-python: validate, then write the options file or the checkpoint pointer."""
    _, digest = validate_checkpoint(spec, checkpoint)
    key = build_key(spec, digest, spec.trtllm_version or "none")
    target = out_root / "engines" / key
    if hit := cached(spec, target):
        return hit
    staging = out_root / "engines" / f".{key}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pointer = {"checkpoint": str(checkpoint.resolve()), "checkpoint_digest": digest, "backend": spec.backend}
    (staging / CPU_POINTER).write_text(json.dumps(pointer, indent=1) + "\n")
    if spec.backend == "trtllm-pytorch":
        options = {"model": str(checkpoint.resolve()), **llm_api_options(spec)}
        (staging / LLM_API_OPTIONS).write_text(yaml.safe_dump(options, sort_keys=False))
    manifest = Manifest(
        kind="llmapi-options" if spec.backend == "trtllm-pytorch" else "cpu-pointer",
        source=str(checkpoint),
        revision=key,
        files=hash_tree(staging),
        extra={
            "backend": spec.backend,
            "spec_hash": spec.content_hash(),
            "checkpoint_digest": digest,
            # what the server will load, next to the spec's estimate (spec.weight_bytes)
            "weight_bytes": checkpoint_weight_bytes(checkpoint),
            "weight_bytes_estimate": round(spec.weight_bytes),
        },
    )
    publish_dir(staging, target, manifest)
    log.info("build: %s needs no engine; wrote %s", spec.backend, target)
    return BuildResult(target, key, False)


def build(spec: Spec, checkpoint: Path, out_root: Path, *, gpus: int | None = None) -> BuildResult:
    """Dispatch on spec.backend."""
    if spec.backend == "trtllm-engine":
        return build_engines(spec, checkpoint, out_root, gpus=gpus)
    return prepare_without_engine(spec, checkpoint, out_root)


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 ok, 1 build failed, 2 bad spec/checkpoint; one clear line on stderr."""
    parser = argparse.ArgumentParser(prog="python -m steps.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True, type=Path, help="the download step's checkpoint dir")
    parser.add_argument("--out", required=True, type=Path, help="root of the model volume")
    parser.add_argument("--outputs", type=Path, default=DEFAULT_OUTPUTS)
    args = parser.parse_args(argv)
    cli_logging()
    try:
        spec = load_spec(args.spec)
        result = build(spec, args.checkpoint, args.out)
    except SpecError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BadCheckpoint as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    write_outputs(args.outputs, engines=str(result.engines))
    print(f"engines {result.engines}{' (cached)' if result.cached else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
