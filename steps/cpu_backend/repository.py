"""Writes Triton model repositories for the CPU backend's single-model `ensemble`.

The input/output names and types follow tensorrtllm_backend v0.12.0
all_models/inflight_batcher_llm/ensemble/config.pbtxt, plus the fields later releases added and our
serving contract promises (exclude_input_in_output, min_tokens, ignore_eos). Sampling inputs are
accepted so that clients sending them are not rejected; decoding is greedy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from steps.contract import SERVED_MODEL

MODELS_DIR = Path(__file__).resolve().parent / "models"
ENSEMBLE_SINGLE_SOURCE = MODELS_DIR / "ensemble_single" / "1" / "model.py"
DEFAULT_MAX_BATCH_SIZE = 8

# (name, data_type, dims, optional)
ENSEMBLE_INPUTS: tuple[tuple[str, str, tuple[int, ...], bool], ...] = (
    ("text_input", "TYPE_STRING", (1,), False),
    ("max_tokens", "TYPE_INT32", (1,), False),
    ("bad_words", "TYPE_STRING", (-1,), True),
    ("stop_words", "TYPE_STRING", (-1,), True),
    ("end_id", "TYPE_INT32", (1,), True),
    ("pad_id", "TYPE_INT32", (1,), True),
    ("top_k", "TYPE_INT32", (1,), True),
    ("top_p", "TYPE_FP32", (1,), True),
    ("temperature", "TYPE_FP32", (1,), True),
    ("length_penalty", "TYPE_FP32", (1,), True),
    ("repetition_penalty", "TYPE_FP32", (1,), True),
    ("min_length", "TYPE_INT32", (1,), True),
    ("presence_penalty", "TYPE_FP32", (1,), True),
    ("frequency_penalty", "TYPE_FP32", (1,), True),
    ("random_seed", "TYPE_UINT64", (1,), True),
    ("return_log_probs", "TYPE_BOOL", (1,), True),
    ("return_context_logits", "TYPE_BOOL", (1,), True),
    ("return_generation_logits", "TYPE_BOOL", (1,), True),
    ("beam_width", "TYPE_INT32", (1,), True),
    ("stream", "TYPE_BOOL", (1,), True),
    ("exclude_input_in_output", "TYPE_BOOL", (1,), True),
    ("min_tokens", "TYPE_INT32", (1,), True),
    ("ignore_eos", "TYPE_BOOL", (1,), True),
)
ENSEMBLE_OUTPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (("text_output", "TYPE_STRING", (-1,)),)


def tensor_block(kind: str, entries: list[str]) -> str:
    """`input [ {...}, ... ]` / `output [ ... ]` in config.pbtxt text format."""
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def tensor_entry(name: str, data_type: str, dims: tuple[int, ...], optional: bool = False) -> str:
    dims_text = ", ".join(str(d) for d in dims)
    optional_text = "\n    optional: true" if optional else ""
    fields = f'name: "{name}"\n    data_type: {data_type}\n    dims: [ {dims_text} ]{optional_text}'
    return f"  {{\n    {fields}\n  }}"


def parameters_block(parameters: dict[str, str]) -> str:
    return "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
        for key, value in parameters.items()
    )


def ensemble_single_config(
    name: str, engine_dir: Path, tokenizer_dir: Path, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> str:
    """config.pbtxt of the decoupled python `ensemble` serving the model in engine_dir."""
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        "model_transaction_policy {\n  decoupled: true\n}\n"
        + tensor_block("input", [tensor_entry(*spec) for spec in ENSEMBLE_INPUTS])
        + tensor_block("output", [tensor_entry(*spec) for spec in ENSEMBLE_OUTPUTS])
        + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
        + parameters_block({"engine_dir": str(engine_dir), "tokenizer_dir": str(tokenizer_dir)})
    )


def write_ensemble_single(
    repository: Path,
    model_dir: Path,
    *,
    name: str = SERVED_MODEL,
    tokenizer_dir: Path | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> Path:
    """Add the single-model ensemble (config.pbtxt + 1/model.py) to `repository`; return the model dir."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a HF model directory (no config.json)")
    target = Path(repository) / name
    (target / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ENSEMBLE_SINGLE_SOURCE, target / "1" / "model.py")
    config = ensemble_single_config(
        name, model_dir, Path(tokenizer_dir or model_dir).resolve(), max_batch_size=max_batch_size
    )
    (target / "config.pbtxt").write_text(config)
    return target
