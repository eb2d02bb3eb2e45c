"""CPU stand-in for the LLM-API Triton model `tensorrt_llm` (tensorrtllm_backend v0.19.0 all_models/llmapi).

What it takes and returns is what v0.19.0's tensorrt_llm/1/model.py and helpers.py do:
- configured by `1/model.yaml` (or $LLM_CONFIG_PATH, relative to the version directory); a missing
  file fails the load. `model` is the checkpoint, `max_batch_size` bounds the sequences decoding at
  once (the LLM API's batch), `triton_config.decoupled` decides whether streaming is allowed;
- inputs `text_input` (1-D: one prompt; a 2-D tensor is refused, as upstream), `streaming`,
  `sampling_param_max_tokens` (default 32, SamplingParams' default), `sampling_param_stop`,
  `sampling_param_exclude_input_from_output` (default false: the prompt is part of the text),
  `sampling_param_beam_width` (1 only), `return_finish_reason`, `return_stop_reason`; the other
  sampling inputs are accepted and ignored (decoding is greedy);
- output `text_output`: when streaming, every response carries the whole text generated so far
  (RequestOutput.outputs[0].text), the last one flagged final; otherwise one final response. Stop
  strings are cut from the final text (include_stop_str_in_output defaults to false).
  `finish_reason` ("length" | "stop") and `stop_reason` (the stop string, or "None") on request;
- no nv_trt_llm_* metric families (v0.19.0's model.py creates none);
- a failed request gets `text_output` "N/A" with the error, flagged final.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

from steps.cpu_backend.llama import GenerationParams, LlamaModel, checkpoint_dir
from steps.cpu_backend.textgen import RequestError, TextCodec, first_scalar, words
from steps.cpu_backend.triton_common import (
    FINAL,
    ConcurrentGenerator,
    request_inputs,
    resolve_dir,
    run_in_thread,
)
from workflows.backend_metrics import TRTLLM_PYTORCH_0_19

OPTIONS_FILE, OPTIONS_ENV = "model.yaml", "LLM_CONFIG_PATH"
DEFAULT_MAX_TOKENS = 32  # tensorrt_llm SamplingParams.max_tokens
INPUTS = (
    "text_input",
    "streaming",
    "sampling_param_beam_width",
    "sampling_param_max_tokens",
    "sampling_param_stop",
    "sampling_param_exclude_input_from_output",
    "return_finish_reason",
    "return_stop_reason",
    "return_cumulative_logprob",
)


def llm_options(version_dir: Path) -> dict:
    """model.yaml (or $LLM_CONFIG_PATH) of the version directory, as upstream's get_model_config reads it."""
    path = version_dir / os.environ.get(OPTIONS_ENV, OPTIONS_FILE)
    if not path.is_file():
        raise ValueError(f"'{path.name}' containing TRT-LLM engine args not found in '{version_dir}'")
    return yaml.safe_load(path.read_text()) or {}


@dataclass(frozen=True)
class LlmApiRequest:
    """One request: prompt, decoding, and what the responses carry."""

    prompt_ids: list[int]
    stop: tuple[str, ...]
    params: GenerationParams
    streaming: bool
    exclude_input: bool
    finish_reason: bool
    stop_reason: bool


def parse_request(inputs: dict[str, np.ndarray], codec: TextCodec) -> LlmApiRequest:
    """Validate one request's inputs the way upstream's _convert_request and helpers do."""
    text = inputs.get("text_input")
    if text is None:
        raise RequestError("text_input is missing from the request")
    if text.ndim > 1:
        raise RequestError("The current implementation only supports text_input being a 1D tensor.")
    if int(first_scalar(inputs.get("sampling_param_beam_width"), 1)) != 1:
        raise RequestError("sampling_param_beam_width: the CPU stand-in decodes greedily (beam width 1 only)")
    if first_scalar(inputs.get("return_cumulative_logprob"), False):
        raise RequestError("return_cumulative_logprob: the CPU stand-in computes no log probabilities")
    prompt = text[0].decode("utf-8") if isinstance(text[0], bytes) else str(text[0])
    stop = tuple(words(inputs.get("sampling_param_stop")))
    return LlmApiRequest(
        prompt_ids=codec.encode(prompt),
        stop=stop,
        params=GenerationParams(
            max_new_tokens=int(first_scalar(inputs.get("sampling_param_max_tokens"), DEFAULT_MAX_TOKENS)),
            end_id=codec.eos_id,
            stop_words=codec.word_ids(list(stop)),
        ),
        streaming=bool(first_scalar(inputs.get("streaming"), False)),
        exclude_input=bool(first_scalar(inputs.get("sampling_param_exclude_input_from_output"), False)),
        finish_reason=bool(first_scalar(inputs.get("return_finish_reason"), False)),
        stop_reason=bool(first_scalar(inputs.get("return_stop_reason"), False)),
    )


def stop_hit(request: LlmApiRequest, codec: TextCodec, generated: list[int]) -> str | None:
    """The stop string the generated tokens end with, if any."""
    for string in request.stop:
        ids = codec.word_ids([string])
        if ids and generated[-len(ids[0]) :] == list(ids[0]):
            return string
    return None


def strings(*values: str) -> np.ndarray:
    """A BYTES tensor of shape [len(values)] (the model has no batch dimension)."""
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


class TritonPythonModel:
    """A thread per request; at most model.yaml's max_batch_size sequences decode at once."""

    def initialize(self, args: dict) -> None:
        options = llm_options(Path(args["model_repository"]) / args["model_version"])
        self.decoupled = bool((options.get("triton_config") or {}).get("decoupled", False))
        if "max_batch_size" not in options:
            raise ValueError(f"{OPTIONS_FILE}: max_batch_size is not set; the CPU stand-in needs it")
        checkpoint = checkpoint_dir(resolve_dir(args, str(options.get("model", "")), f"{OPTIONS_FILE} model"))
        tokenizer = options.get("tokenizer")
        self.codec = TextCodec(resolve_dir(args, str(tokenizer), "tokenizer") if tokenizer else checkpoint)
        self.generator = ConcurrentGenerator(
            LlamaModel.load(checkpoint),
            max_active=int(options["max_batch_size"]),
            model_name=args["model_name"],
            version=args["model_version"],
            standing_in=TRTLLM_PYTORCH_0_19,
        )

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = parse_request(request_inputs(request, INPUTS), self.codec)
                if parsed.streaming and not self.decoupled:
                    raise RequestError("Streaming is only supported in decoupled mode.")
            except (RequestError, UnicodeDecodeError) as exc:
                self._fail(sender, exc)
                continue
            run_in_thread(lambda parsed=parsed, sender=sender: self._serve(parsed, sender), sender)
        return None

    def _fail(self, sender, exc: Exception) -> None:
        error = pb_utils.TritonError(f"Error generating request: {exc}")
        response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", strings("N/A"))],
                                              error=error)  # fmt: skip
        sender.send(response, flags=FINAL)

    def _response(self, request: LlmApiRequest, generated: list[int], stop: str | None, final: bool):
        """One response: the whole text so far (stop string cut when final), reasons on request."""
        ids = generated if request.exclude_input else request.prompt_ids + generated
        if final and stop is not None:
            ids = ids[: len(ids) - len(self.codec.word_ids([stop])[0])]
        tensors = [pb_utils.Tensor("text_output", strings(self.codec.decode(ids)))]
        length = len(generated) >= request.params.max_new_tokens
        if request.finish_reason:
            reason = "None" if not final else "length" if length and stop is None else "stop"
            tensors.append(pb_utils.Tensor("finish_reason", strings(reason)))
        if request.stop_reason:
            tensors.append(pb_utils.Tensor("stop_reason", strings(str(stop))))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _serve(self, request: LlmApiRequest, sender) -> None:
        generated: list[int] = []
        stop = None
        for token in self.generator.tokens(request.prompt_ids, request.params, sender):
            generated.append(token)
            stop = stop_hit(request, self.codec, generated)
            if stop is not None or len(generated) >= request.params.max_new_tokens:
                break  # this step finishes the request: its response is the final one
            if request.streaming:
                sender.send(self._response(request, generated, None, False))
        # Also after the end id (never part of the text): a final response with the text so far.
        sender.send(self._response(request, generated, stop, True), flags=FINAL)
