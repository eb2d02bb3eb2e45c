"""Publish the Triton model repository for the spec's backend, validated and atomically.

    python -m steps.publish --spec SPEC --engines DIR --tokenizer DIR --dest DIR|s3://bucket/prefix
                            [--templates DIR] [--outputs DIR]

`render_repository` writes, for trtllm-engine and cpu-python, the four models of
tensorrtllm_backend v0.12.0's all_models/inflight_batcher_llm (ensemble, preprocessing,
tensorrt_llm, postprocessing) with the upstream tensor names and the parameters of REFERENCE.md
derived from the spec (plus KV-cache fraction, KV-cache reuse, exclude_input_in_output, chunked
context); for trtllm-pytorch, the one python model `tensorrt_llm` of tensorrtllm_backend
v0.19.0's all_models/llmapi (its config.pbtxt tensors, no ensemble) configured by `1/model.yaml`:
the LLM-API options derived from the spec (steps.build.llm_api_options) with `model` = the
checkpoint (--engines: the checkpoint, or the build step's pointer to it). Because megapod runs
Triton with strict configs (--disable-auto-complete-config, as upstream's launch_triton_server.py
v0.19.0 does), model.py's auto_complete_config never runs: config.pbtxt itself carries the
max_batch_size and decoupled that model.yaml's triton_config gives model.py (0, true: streaming).
Configs are built as Triton `ModelConfig` protobufs and every written config.pbtxt is parsed back
with that protobuf and cross-checked (ensemble steps name existing models and tensors) before
publishing. The python models' code comes from a templates directory: the image's
all_models/inflight_batcher_llm (or all_models/llmapi for trtllm-pytorch: model.py, helpers.py)
at run time, steps/cpu_backend/models for backend cpu-python.

Publishing: a directory destination is staged next to it, verified, given its manifest, then
renamed into place. An s3:// destination gets the repository under a content-addressed prefix
(s3://bucket/prefix/<digest>/), each object verified (list, sizes, MD5 ETags), the manifest
uploaded only after every file it lists verified, and the pointer
s3://bucket/prefix/current.json written last. Output `repository`: the final path or URI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from steps.build import BadCheckpoint, llm_api_options, validate_checkpoint
from steps.contract import CPU_POINTER, ENSEMBLE
from steps.cpu_backend.repository import ENSEMBLE_INPUTS
from steps.manifest import (
    DEFAULT_OUTPUTS,
    FileEntry,
    Manifest,
    hash_tree,
    read_manifest,
    repository_manifest_path,
    repository_problem,
    sha256_file,
    write_manifest,
    write_outputs,
)
from steps.transfer import cli_logging, one_line, s3_client
from workflows.spec import Spec, SpecError, load_spec

log = logging.getLogger("megapod.publish")

PYTHON_MODELS = ("preprocessing", "postprocessing")
MODELS = ENSEMBLE.repository
CPU_TEMPLATES = Path(__file__).resolve().parent / "cpu_backend" / "models"
# Where the pipeline image (images/pipeline/Dockerfile) unpacks the release's Triton model templates,
# all_models/ of tensorrtllm_backend (or TensorRT-LLM's triton_backend/) at the spec's tag; the
# engine flow's are under inflight_batcher_llm/ (override with --templates or the environment).
IMAGE_MODELS = Path("/opt/tensorrtllm_backend/all_models")
IMAGE_TEMPLATES = Path(os.environ.get("MEGAPOD_TRITON_TEMPLATES", IMAGE_MODELS / "inflight_batcher_llm"))
# The PyTorch flow's model (tensorrt_llm/1/model.py, helpers.py) in the same release's all_models/.
IMAGE_LLMAPI_TEMPLATES = IMAGE_TEMPLATES.parent / "llmapi"
CPU_LLMAPI_TEMPLATES = CPU_TEMPLATES / "llmapi"  # the CPU stand-in of the llmapi model.py
LLMAPI_MODEL, LLMAPI_OPTIONS = "tensorrt_llm", "model.yaml"
# Per backend, where publish finds the python models' code when --templates is not given (read late:
# IMAGE_TEMPLATES may be patched).
DEFAULT_TEMPLATES = {
    "cpu-python": lambda: CPU_TEMPLATES,
    "trtllm-engine": lambda: IMAGE_TEMPLATES,
    "trtllm-pytorch": lambda: IMAGE_LLMAPI_TEMPLATES,
}
S3_POINTER = "current.json"
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class PublishError(RuntimeError):
    """Publishing cannot complete; one line for the user."""


# --- tensors (tensorrtllm_backend v0.12.0 names) ------------------------------------------------------
# "NAME:TYPE:dims[:opt]" with dims comma-separated; compact because there are many.


def tensors(spec_text: str, cls: type) -> list:
    """Parse the compact table into ModelInput / ModelOutput messages."""
    out = []
    for item in spec_text.split():
        name, dtype, dims, *flags = item.split(":")
        tensor = cls(
            name=name, data_type=mc.DataType.Value(f"TYPE_{dtype}"), dims=[int(d) for d in dims.split(",")]
        )
        if "opt" in flags:
            tensor.optional = True
        if "ragged" in flags:
            tensor.allow_ragged_batch = True
        if "scalar" in flags:
            tensor.reshape.SetInParent()  # reshape: { shape: [ ] }
        out.append(tensor)
    return out


PRE_IN = """QUERY:STRING:1 DECODER_QUERY:STRING:1:opt IMAGE:FP16:3,224,224:opt REQUEST_OUTPUT_LEN:INT32:1
BAD_WORDS_DICT:STRING:-1:opt STOP_WORDS_DICT:STRING:-1:opt EMBEDDING_BIAS_WORDS:STRING:-1:opt
EMBEDDING_BIAS_WEIGHTS:FP32:-1:opt END_ID:INT32:1:opt PAD_ID:INT32:1:opt
PROMPT_EMBEDDING_TABLE:FP16:-1,-1:opt:ragged"""
PRE_OUT = """INPUT_ID:INT32:-1 REQUEST_INPUT_LEN:INT32:1 DECODER_INPUT_ID:INT32:-1
REQUEST_DECODER_INPUT_LEN:INT32:1 BAD_WORDS_IDS:INT32:2,-1 STOP_WORDS_IDS:INT32:2,-1
EMBEDDING_BIAS:FP32:-1 REQUEST_OUTPUT_LEN:INT32:-1 OUT_END_ID:INT32:1 OUT_PAD_ID:INT32:1
OUT_PROMPT_EMBEDDING_TABLE:FP16:-1,-1"""
TRT_IN = """input_ids:INT32:-1:ragged input_lengths:INT32:1:scalar request_output_len:INT32:1:scalar
draft_input_ids:INT32:-1:opt:ragged decoder_input_ids:INT32:-1:opt:ragged
decoder_input_lengths:INT32:1:opt:scalar draft_logits:FP32:-1,-1:opt:ragged
draft_acceptance_threshold:FP32:1:opt:scalar end_id:INT32:1:opt:scalar pad_id:INT32:1:opt:scalar
stop_words_list:INT32:2,-1:opt:ragged bad_words_list:INT32:2,-1:opt:ragged
embedding_bias:FP32:-1:opt:ragged beam_width:INT32:1:opt:scalar temperature:FP32:1:opt:scalar
runtime_top_k:INT32:1:opt:scalar runtime_top_p:FP32:1:opt:scalar runtime_top_p_min:FP32:1:opt:scalar
runtime_top_p_decay:FP32:1:opt:scalar runtime_top_p_reset_ids:INT32:1:opt:scalar
len_penalty:FP32:1:opt:scalar early_stopping:BOOL:1:opt:scalar repetition_penalty:FP32:1:opt:scalar
min_length:INT32:1:opt:scalar beam_search_diversity_rate:FP32:1:opt:scalar
presence_penalty:FP32:1:opt:scalar frequency_penalty:FP32:1:opt:scalar
random_seed:UINT64:1:opt:scalar return_log_probs:BOOL:1:opt:scalar
return_context_logits:BOOL:1:opt:scalar return_generation_logits:BOOL:1:opt:scalar
stop:BOOL:1:opt:scalar streaming:BOOL:1:opt:scalar prompt_embedding_table:FP16:-1,-1:opt:ragged
prompt_vocab_size:INT32:1:opt:scalar lora_task_id:UINT64:1:opt:scalar
lora_weights:FP16:-1,-1:opt:ragged lora_config:INT32:-1,3:opt:ragged
exclude_input_in_output:BOOL:1:opt:scalar min_tokens:INT32:1:opt:scalar ignore_eos:BOOL:1:opt:scalar"""
TRT_OUT = """output_ids:INT32:-1,-1 sequence_length:INT32:-1 cum_log_probs:FP32:-1 output_log_probs:FP32:-1,-1
context_logits:FP32:-1,-1 generation_logits:FP32:-1,-1,-1 batch_index:INT32:1"""
POST_IN = """TOKENS_BATCH:INT32:-1,-1 SEQUENCE_LENGTH:INT32:-1 CUM_LOG_PROBS:FP32:-1:opt
OUTPUT_LOG_PROBS:FP32:-1,-1:opt CONTEXT_LOGITS:FP32:-1,-1:opt GENERATION_LOGITS:FP32:-1,-1,-1:opt
BATCH_INDEX:INT32:1:opt"""
POST_OUT = """OUTPUT:STRING:-1 OUT_CUM_LOG_PROBS:FP32:-1 OUT_OUTPUT_LOG_PROBS:FP32:-1,-1
OUT_CONTEXT_LOGITS:FP32:-1,-1 OUT_GENERATION_LOGITS:FP32:-1,-1,-1 OUT_BATCH_INDEX:INT32:1"""
# v0.12 ensemble inputs beyond the serving contract's (steps.cpu_backend.repository.ENSEMBLE_INPUTS).
ENSEMBLE_EXTRA_IN = """decoder_text_input:STRING:1:opt image_input:FP16:3,224,224:opt
prompt_embedding_table:FP16:-1,-1:opt
prompt_vocab_size:INT32:1:opt embedding_bias_words:STRING:-1:opt embedding_bias_weights:FP32:-1:opt"""
ENSEMBLE_OUT = """text_output:STRING:-1 cum_log_probs:FP32:-1 output_log_probs:FP32:-1,-1
context_logits:FP32:-1,-1
generation_logits:FP32:-1,-1,-1 batch_index:INT32:1"""

# tensorrtllm_backend v0.19.0 all_models/llmapi/tensorrt_llm/config.pbtxt (no batch dimension).
LLMAPI_IN = """text_input:STRING:-1 streaming:BOOL:1:opt sampling_param_beam_width:INT32:1:opt
sampling_param_temperature:FP32:1:opt sampling_param_top_k:INT32:1:opt sampling_param_top_p:FP32:1:opt
sampling_param_frequency_penalty:FP32:1:opt sampling_param_presence_penalty:FP32:1:opt
sampling_param_max_tokens:INT32:1:opt sampling_param_stop:STRING:-1:opt sampling_param_seed:UINT64:1:opt
sampling_param_exclude_input_from_output:BOOL:1:opt return_finish_reason:BOOL:1:opt
return_stop_reason:BOOL:1:opt return_cumulative_logprob:BOOL:1:opt"""
LLMAPI_OUT = "text_output:STRING:-1 finish_reason:STRING:-1 stop_reason:STRING:-1 cumulative_logprob:FP32:-1"
# model.yaml's triton_config: v0.19.0's model.py supports no batching (max_batch_size 0, its
# 1/model.yaml); decoupled so that `streaming` works.
LLMAPI_TRITON_CONFIG = {"max_batch_size": 0, "decoupled": True}

# Ensemble wiring: (model, {model input: ensemble tensor}, {model output: ensemble tensor}).
PRE_MAP = (
    "QUERY=text_input DECODER_QUERY=decoder_text_input IMAGE=image_input REQUEST_OUTPUT_LEN=max_tokens "
    "BAD_WORDS_DICT=bad_words STOP_WORDS_DICT=stop_words EMBEDDING_BIAS_WORDS=embedding_bias_words "
    "EMBEDDING_BIAS_WEIGHTS=embedding_bias_weights END_ID=end_id PAD_ID=pad_id "
    "PROMPT_EMBEDDING_TABLE=prompt_embedding_table",
    "REQUEST_INPUT_LEN=_REQUEST_INPUT_LEN INPUT_ID=_INPUT_ID "
    "REQUEST_DECODER_INPUT_LEN=_REQUEST_DECODER_INPUT_LEN "
    "DECODER_INPUT_ID=_DECODER_INPUT_ID "
    "REQUEST_OUTPUT_LEN=_REQUEST_OUTPUT_LEN STOP_WORDS_IDS=_STOP_WORDS_IDS "
    "BAD_WORDS_IDS=_BAD_WORDS_IDS EMBEDDING_BIAS=_EMBEDDING_BIAS OUT_END_ID=_PREPROCESSOR_END_ID "
    "OUT_PAD_ID=_PREPROCESSOR_PAD_ID OUT_PROMPT_EMBEDDING_TABLE=out_prompt_embedding_table",
)
TRT_MAP = (
    "input_ids=_INPUT_ID decoder_input_ids=_DECODER_INPUT_ID input_lengths=_REQUEST_INPUT_LEN "
    "decoder_input_lengths=_REQUEST_DECODER_INPUT_LEN request_output_len=_REQUEST_OUTPUT_LEN "
    "end_id=_PREPROCESSOR_END_ID pad_id=_PREPROCESSOR_PAD_ID "
    "embedding_bias=_EMBEDDING_BIAS runtime_top_k=top_k "
    "runtime_top_p=top_p temperature=temperature len_penalty=length_penalty "
    "repetition_penalty=repetition_penalty "
    "min_length=min_length presence_penalty=presence_penalty frequency_penalty=frequency_penalty "
    "random_seed=random_seed return_log_probs=return_log_probs return_context_logits=return_context_logits "
    "return_generation_logits=return_generation_logits beam_width=beam_width streaming=stream "
    "prompt_embedding_table=out_prompt_embedding_table prompt_vocab_size=prompt_vocab_size "
    "stop_words_list=_STOP_WORDS_IDS bad_words_list=_BAD_WORDS_IDS "
    "exclude_input_in_output=exclude_input_in_output min_tokens=min_tokens ignore_eos=ignore_eos",
    "output_ids=_TOKENS_BATCH sequence_length=_SEQUENCE_LENGTH cum_log_probs=_CUM_LOG_PROBS "
    "output_log_probs=_OUTPUT_LOG_PROBS context_logits=_CONTEXT_LOGITS generation_logits=_GENERATION_LOGITS "
    "batch_index=_BATCH_INDEX",
)
POST_MAP = (
    "TOKENS_BATCH=_TOKENS_BATCH CUM_LOG_PROBS=_CUM_LOG_PROBS OUTPUT_LOG_PROBS=_OUTPUT_LOG_PROBS "
    "CONTEXT_LOGITS=_CONTEXT_LOGITS GENERATION_LOGITS=_GENERATION_LOGITS SEQUENCE_LENGTH=_SEQUENCE_LENGTH "
    "BATCH_INDEX=_BATCH_INDEX",
    "OUTPUT=text_output OUT_OUTPUT_LOG_PROBS=output_log_probs OUT_CUM_LOG_PROBS=cum_log_probs "
    "OUT_CONTEXT_LOGITS=context_logits OUT_GENERATION_LOGITS=generation_logits OUT_BATCH_INDEX=batch_index",
)


def pairs(text: str) -> dict[str, str]:
    """'a=b c=d' -> {'a': 'b', 'c': 'd'}"""
    return dict(item.split("=", 1) for item in text.split())


# --- configs -----------------------------------------------------------------------------------------


def _params(config: mc.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _cpu_instances(config: mc.ModelConfig, count: int = 1) -> None:
    config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)


def python_model_config(
    name: str, spec: Spec, tokenizer_dir: Path, inputs: str, outputs: str
) -> mc.ModelConfig:
    """preprocessing / postprocessing: python models around the tokenizer."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=spec.build.max_batch_size)
    config.input.extend(tensors(inputs, mc.ModelInput))
    config.output.extend(tensors(outputs, mc.ModelOutput))
    params = {"tokenizer_dir": str(tokenizer_dir), "tokenizer_type": spec.model.family}
    params |= {"add_special_tokens": "true"} if name == "preprocessing" else {"skip_special_tokens": "true"}
    _params(config, params)
    _cpu_instances(config)
    return config


def tensorrt_llm_config(spec: Spec, engines_dir: Path) -> mc.ModelConfig:
    """The model that runs the engine (C++ tensorrtllm backend; python for the CPU profile)."""
    b = spec.build
    backend = "python" if spec.backend == "cpu-python" else "tensorrtllm"
    config = mc.ModelConfig(name="tensorrt_llm", backend=backend, max_batch_size=b.max_batch_size)
    config.model_transaction_policy.decoupled = True
    config.dynamic_batching.preferred_batch_size.append(b.max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = 0
    config.input.extend(tensors(TRT_IN, mc.ModelInput))
    config.output.extend(tensors(TRT_OUT, mc.ModelOutput))
    _cpu_instances(config)
    params = {
        "max_beam_width": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": str(engines_dir),
        "kv_cache_free_gpu_mem_fraction": str(b.kv_cache_free_gpu_mem_fraction),
        "enable_kv_cache_reuse": _flag(b.enable_kv_cache_reuse),
        "enable_chunked_context": _flag(b.enable_chunked_context),
        "exclude_input_in_output": "true",
        "batch_scheduler_policy": "guaranteed_no_evict",
    }
    if spec.backend == "cpu-python":
        pointer = engines_dir / CPU_POINTER
        if pointer.exists():
            params["model_dir"] = json.loads(pointer.read_text())["checkpoint"]
    _params(config, params)
    return config


def ensemble_config(spec: Spec) -> mc.ModelConfig:
    """The ensemble clients call: text in, text out, through the three models."""
    config = mc.ModelConfig(name="ensemble", platform="ensemble", max_batch_size=spec.build.max_batch_size)
    contract = [
        f"{n}:{t.removeprefix('TYPE_')}:{','.join(map(str, d))}{':opt' if o else ''}"
        for n, t, d, o in ENSEMBLE_INPUTS
    ]
    config.input.extend(tensors(" ".join(contract) + " " + ENSEMBLE_EXTRA_IN, mc.ModelInput))
    config.output.extend(tensors(ENSEMBLE_OUT, mc.ModelOutput))
    for model, (inputs, outputs) in (
        ("preprocessing", PRE_MAP),
        ("tensorrt_llm", TRT_MAP),
        ("postprocessing", POST_MAP),
    ):
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(pairs(inputs))
        step.output_map.update(pairs(outputs))
    return config


def llmapi_config() -> mc.ModelConfig:
    """The LLM-API python model, its tensors as upstream's; batching and decoupling as model.yaml's."""
    config = mc.ModelConfig(
        name=LLMAPI_MODEL, backend="python", max_batch_size=LLMAPI_TRITON_CONFIG["max_batch_size"]
    )
    config.model_transaction_policy.decoupled = LLMAPI_TRITON_CONFIG["decoupled"]
    config.input.extend(tensors(LLMAPI_IN, mc.ModelInput))
    config.output.extend(tensors(LLMAPI_OUT, mc.ModelOutput))
    _cpu_instances(config)
    return config


def llmapi_options(spec: Spec, checkpoint: Path) -> dict:
    """1/model.yaml: the LLM-API options of the spec, the checkpoint to load, and triton_config."""
    return {"model": str(checkpoint), **llm_api_options(spec), "triton_config": LLMAPI_TRITON_CONFIG}


def checkpoint_of(engines_dir: Path) -> Path:
    """The checkpoint --engines stands for: the build step's pointer names it, or it is one."""
    pointer = engines_dir / CPU_POINTER
    if pointer.is_file():
        return Path(json.loads(pointer.read_text())["checkpoint"])
    if not (engines_dir / "config.json").is_file():
        raise PublishError(
            f"--engines {engines_dir}: neither a checkpoint (config.json) nor the build step's {CPU_POINTER}"
        )
    return engines_dir


# --- render + validate -------------------------------------------------------------------------------


def template_for(templates_dir: Path, model: str) -> Path:
    """The model.py of one python model in the templates directory."""
    return templates_dir / model / "1" / "model.py"


def render_repository(
    spec: Spec, engines_dir: Path, tokenizer_dir: Path, templates_dir: Path, out_dir: Path
) -> Path:
    """Write the spec's backend's repository into out_dir (created) and validate it."""
    if spec.backend == "trtllm-pytorch":
        return render_llmapi_repository(spec, engines_dir, templates_dir, out_dir)
    python_models = [*PYTHON_MODELS, *(["tensorrt_llm"] if spec.backend == "cpu-python" else [])]
    check_templates(templates_dir, python_models)
    configs = {
        "ensemble": ensemble_config(spec),
        "preprocessing": python_model_config("preprocessing", spec, tokenizer_dir, PRE_IN, PRE_OUT),
        "tensorrt_llm": tensorrt_llm_config(spec, engines_dir),
        "postprocessing": python_model_config("postprocessing", spec, tokenizer_dir, POST_IN, POST_OUT),
    }
    for name, config in configs.items():
        version_dir = write_config(out_dir, config)
        if name in python_models:
            shutil.copy2(template_for(templates_dir, name), version_dir / "model.py")
        else:
            (version_dir / ".keep").write_text("")  # Triton needs the version directory to exist
    validate_repository(out_dir)
    return out_dir


def render_llmapi_repository(spec: Spec, engines_dir: Path, templates_dir: Path, out_dir: Path) -> Path:
    """The one-model llmapi repository: config.pbtxt, 1/model.yaml, and the template's python files."""
    check_templates(templates_dir, [LLMAPI_MODEL])
    version_dir = write_config(out_dir, llmapi_config())
    # model.py and what it imports from its own directory (upstream: helpers.py).
    for source in sorted(template_for(templates_dir, LLMAPI_MODEL).parent.glob("*.py")):
        shutil.copy2(source, version_dir / source.name)
    # No build stage runs for this backend: what build checks (FP8 really in the checkpoint, the
    # weights fit) is checked here, before a repository that could never load is published.
    checkpoint = checkpoint_of(engines_dir)
    validate_checkpoint(spec, checkpoint)
    options = llmapi_options(spec, checkpoint)
    (version_dir / LLMAPI_OPTIONS).write_text(yaml.safe_dump(options, sort_keys=False))
    validate_repository(out_dir)
    return out_dir


def check_templates(templates_dir: Path, models: list[str]) -> None:
    """Every python model's model.py is in the templates directory."""
    missing = [str(path) for path in (template_for(templates_dir, m) for m in models) if not path.is_file()]
    if missing:
        raise PublishError(f"templates {templates_dir}: missing {', '.join(missing)}; pass --templates DIR")


def write_config(out_dir: Path, config: mc.ModelConfig) -> Path:
    """<name>/config.pbtxt; returns the (created) version directory <name>/1."""
    version_dir = out_dir / config.name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))
    return version_dir


def parse_config(path: Path) -> mc.ModelConfig:
    """A config.pbtxt parsed with Triton's ModelConfig protobuf, or PublishError naming the problem."""
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise PublishError(f"{path}: not a valid Triton ModelConfig: {one_line(exc)}") from None


def validate_repository(repo: Path) -> None:
    """Every config parses; names match directories; the ensemble wires existing models and tensors."""
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = parse_config(path)
        if config.name != path.parent.name:
            raise PublishError(
                f"{path}: name {config.name!r} differs from its directory {path.parent.name!r}"
            )
        configs[config.name] = config
    for name, config in configs.items():
        if not config.ensemble_scheduling.step:
            continue
        available = {t.name for t in config.input}
        for step in config.ensemble_scheduling.step:
            target = configs.get(step.model_name)
            if target is None:
                raise PublishError(
                    f"{repo}/{name}: step uses model {step.model_name!r} which is not in the repository"
                )
            model_inputs, model_outputs = {t.name for t in target.input}, {t.name for t in target.output}
            for key, value in step.input_map.items():
                if key not in model_inputs or value not in available:
                    raise PublishError(
                        f"{repo}/{name}: input_map {key}={value} does not match {step.model_name} "
                        "inputs or earlier tensors"
                    )
            for key, value in step.output_map.items():
                if key not in model_outputs:
                    raise PublishError(
                        f"{repo}/{name}: output_map {key} is not an output of {step.model_name}"
                    )
                available.add(value)
        missing = [t.name for t in config.output if t.name not in available]
        if missing:
            raise PublishError(f"{repo}/{name}: outputs {missing} are produced by no step")


# --- publish -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """Where the repository went."""

    repository: str
    manifest: Manifest


def publish_directory(staging: Path, dest: Path, manifest: Manifest) -> str:
    """Manifest last into the staging dir, then renames: dest is the old or the new repository."""
    existing = read_manifest(dest, path=repository_manifest_path(dest))
    if existing is not None and existing.digest() == manifest.digest():
        # Equal manifests say nothing about the files: a damaged copy is replaced (repaired).
        damage = repository_problem(dest)
        if damage is None:
            log.info("publish: %s already holds this repository", dest)
            shutil.rmtree(staging)
            return str(dest)
        log.warning("publish: %s is damaged (%s); publishing it again", dest, damage)
    write_manifest(staging, manifest, path=repository_manifest_path(staging))
    old = dest.with_name(f"{_leftover_prefix(dest)}old-{uuid.uuid4().hex[:8]}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return str(dest)


def _leftover_prefix(dest: Path) -> str:
    """Name prefix of the staging and old directories publish keeps next to `dest`."""
    return f".{dest.name}."


def clean_leftovers(dest: Path) -> None:
    """Remove the staging and old directories a killed publish to `dest` left behind."""
    for kind in ("staging", "old"):
        for leftover in dest.parent.glob(f"{_leftover_prefix(dest)}{kind}-*"):
            log.info("publish: removing %s, left by an interrupted publish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def check_destination(dest: str) -> None:
    """A directory destination must be (or be creatable as) a directory: SpecError otherwise."""
    if dest.startswith("s3://"):
        return
    path = Path(dest)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise SpecError(
            [f"--dest {dest}: {blocker} is a file; pass a directory (created if missing) or s3://bucket/prefix"]
        )


def publish_s3(staging: Path, uri: str, manifest: Manifest, spec: Spec) -> str:
    """Upload under s3://bucket/prefix/<digest>/, verify every object, then write the pointer."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise PublishError(f"{uri}: missing bucket; use s3://bucket/prefix")
    s3 = spec.cluster.s3
    client = s3_client(s3.endpoint_url if s3 else None, s3.region if s3 else None)
    root = f"{prefix.strip('/')}/{manifest.digest()[:20]}".lstrip("/")
    write_manifest(staging, manifest, path=repository_manifest_path(staging))
    files = {e.path: e for e in manifest.files}
    manifest_entry = _manifest_entry(staging)
    entries = {**files, **manifest_entry}
    # The manifest says "complete": it is uploaded only once every file it lists is verified.
    for batch in (files, manifest_entry):
        _upload_verified(client, staging, (bucket, root, uri), batch, entries)
    pointer = {"repository": f"s3://{bucket}/{root}", "digest": manifest.digest(), "files": len(entries)}
    client.put_object(
        Bucket=bucket,
        Key=f"{prefix.strip('/')}/{S3_POINTER}".lstrip("/"),
        Body=json.dumps(pointer).encode(),
        ContentType="application/json",
    )
    return pointer["repository"]


def _upload_verified(
    client,
    staging: Path,
    where: tuple[str, str, str],
    batch: dict[str, FileEntry],
    entries: dict[str, FileEntry],
) -> None:
    """Upload `batch` under s3://bucket/root/ until every object of it verifies (3 rounds at most)."""
    bucket, root, uri = where
    pending = dict(batch)
    for attempt in range(1, 4):
        _upload_together(client, staging, bucket, root, list(pending))
        wrong = _unverified(client, bucket, root, entries, staging)
        pending = {rel: entry for rel, entry in wrong.items() if rel in batch}
        if not pending:
            return
        log.warning(
            "publish: %d object(s) failed verification, re-uploading (round %d)", len(pending), attempt
        )
    raise PublishError(f"{uri}: objects still wrong after 3 uploads: {', '.join(sorted(pending))}")


def _upload_together(client, staging: Path, bucket: str, root: str, rels: list[str]) -> None:
    """Upload files through one transfer manager (boto3's default part size and concurrency).

    All files are submitted at once, so the manager's threads stay busy across file boundaries
    instead of idling through each file's last parts and its CompleteMultipartUpload.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    with create_transfer_manager(client, TransferConfig()) as manager:
        futures = [manager.upload(str(staging / rel), bucket, f"{root}/{rel}") for rel in rels]
        for future in futures:
            future.result()


def _manifest_entry(staging: Path) -> dict[str, FileEntry]:
    """The manifest itself is uploaded and verified like every other file."""
    path = repository_manifest_path(staging)
    rel = path.relative_to(staging).as_posix()
    return {rel: FileEntry(rel, path.stat().st_size, sha256_file(path))}


def _unverified(
    client, bucket: str, root: str, entries: dict[str, FileEntry], staging: Path
) -> dict[str, FileEntry]:
    """Entries whose object is missing, of the wrong size, or whose MD5 ETag disagrees; extras are errors."""
    listed = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{root}/"):
        for obj in page.get("Contents", []):
            listed[obj["Key"][len(root) + 1 :]] = obj
    extra = set(listed) - set(entries)
    if extra:
        raise PublishError(
            f"s3://{bucket}/{root}/ holds objects that are not in the repository: {sorted(extra)}"
        )
    bad = {}
    for rel, entry in entries.items():
        obj = listed.get(rel)
        etag = obj["ETag"].strip('"') if obj else ""
        if obj is None or obj["Size"] != entry.size:
            bad[rel] = entry
        elif (
            "-" not in etag
            and etag != hashlib.md5((staging / rel).read_bytes(), usedforsecurity=False).hexdigest()
        ):
            bad[rel] = entry  # single-part uploads: the ETag is the MD5 of what S3 stored
    return bad


def publish(
    spec: Spec, engines_dir: Path, tokenizer_dir: Path, dest: str, templates_dir: Path | None = None
) -> Published:
    """Render into a staging directory, validate, and publish to a directory or s3:// URI."""
    templates = templates_dir or DEFAULT_TEMPLATES[spec.backend]()
    if dest.startswith("s3://"):
        staging = Path(os.environ.get("TMPDIR", "/tmp")) / f"megapod-publish-{uuid.uuid4().hex[:8]}"
    else:
        target = Path(dest)
        clean_leftovers(target)
        staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex[:8]}")
    try:
        render_repository(spec, engines_dir, tokenizer_dir, templates, staging)
        manifest = Manifest(
            kind="repository",
            source=str(engines_dir),
            revision="",
            files=hash_tree(staging),
            extra={
                "backend": spec.backend,
                "spec_hash": spec.content_hash(),
                "tokenizer": str(tokenizer_dir),
            },
        )
        manifest.revision = manifest.digest()[:20]
        location = (
            publish_s3(staging, dest, manifest, spec)
            if dest.startswith("s3://")
            else publish_directory(staging, Path(dest), manifest)
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("publish: repository at %s", location)
    return Published(location, manifest)


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 ok, 1 failed, 2 bad input; one clear line on stderr."""
    parser = argparse.ArgumentParser(prog="python -m steps.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--engines", required=True, type=Path, help="the build step's engines dir")
    parser.add_argument("--tokenizer", required=True, type=Path)
    parser.add_argument("--dest", required=True, help="directory or s3://bucket/prefix")
    parser.add_argument("--templates", type=Path, default=None, help="dir with <model>/1/model.py templates")
    parser.add_argument("--outputs", type=Path, default=DEFAULT_OUTPUTS)
    args = parser.parse_args(argv)
    cli_logging()
    try:
        spec = load_spec(args.spec)
        for name, path in (("--engines", args.engines), ("--tokenizer", args.tokenizer)):
            if not path.is_dir():
                raise SpecError([f"{name} {path}: no such directory"])
        check_destination(args.dest)
        result = publish(spec, args.engines, args.tokenizer, args.dest, args.templates)
    except SpecError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BadCheckpoint as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # boto3 errors after its retries: one line, not a traceback
        print(f"error: publish to {args.dest} failed: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    write_outputs(args.outputs, repository=result.repository)
    print(f"repository {result.repository}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
