"""The serving contract every client of a megapod deployment speaks, one per backend.

- `trtllm-engine` and `cpu-python` serve the TensorRT-LLM inflight-batcher `ensemble`
  (tensorrtllm_backend v0.12.0 all_models/inflight_batcher_llm/ensemble/config.pbtxt):
  text_input / max_tokens / stream in, text_output out, one response per token when streaming,
  each carrying the text that token adds; min_length pins the output length.
- `trtllm-pytorch` serves the LLM-API python model `tensorrt_llm` (tensorrtllm_backend v0.19.0
  all_models/llmapi/tensorrt_llm/config.pbtxt and 1/model.py): text_input / streaming /
  sampling_param_max_tokens in, text_output out. It has no batch dimension (model.yaml's
  triton_config.max_batch_size 0: model.py refuses a 2-D text_input), no input that pins the
  output length (SamplingParams min_tokens / ignore_eos are not exposed), returns the prompt
  unless sampling_param_exclude_input_from_output is true (helpers.py defaults it to false), and
  each streamed response carries the whole text generated so far (RequestOutput.outputs[i].text,
  not text_diff).

Benchmarks (aiperf, genai-perf), the load generator and the deploy smoke request build their
requests from `contract_for(backend)`; nothing else names a request field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What the build step writes for backends that load the checkpoint as it is (cpu-python,
# trtllm-pytorch): a pointer naming the checkpoint. Read by publish and, inside Triton's python
# stub, by the CPU backend, whose environment has none of the spec's dependencies.
CPU_POINTER = "checkpoint.json"


@dataclass(frozen=True)
class Contract:
    """What one backend's served model takes and returns."""

    model: str  # the model clients address: /v2/models/<model>/generate_stream, gRPC model name
    text: str  # request field carrying the prompt (BYTES)
    max_tokens: str  # request field bounding the output length (INT32)
    stream: str  # request field asking for one response per step (BOOL)
    output: str  # response field carrying the text (BYTES)
    min_tokens: str | None  # request field pinning the output length; None: max_tokens is a bound only
    fixed: dict[str, Any] = field(default_factory=dict)  # constant fields every request sends
    batched: bool = True  # requests carry a batch dimension of 1 (max_batch_size > 0)
    cumulative: bool = False  # streamed responses carry the whole text so far, not the new piece
    repository: tuple[str, ...] = ()  # the Triton models a published repository holds

    def request(self, prompt: Any, max_tokens: Any, *, stream: Any) -> dict[str, Any]:
        """The request's fields (the generate / generate_stream JSON body); values may be placeholders."""
        body: dict[str, Any] = {self.text: prompt, self.max_tokens: max_tokens}
        if self.min_tokens:
            body[self.min_tokens] = max_tokens  # every request does the same work
        return {**body, self.stream: stream, **self.fixed}


ENSEMBLE = Contract(
    model="ensemble",
    text="text_input",
    max_tokens="max_tokens",
    stream="stream",
    output="text_output",
    min_tokens="min_length",
    fixed={"exclude_input_in_output": True},
    repository=("ensemble", "preprocessing", "tensorrt_llm", "postprocessing"),
)
LLMAPI = Contract(
    model="tensorrt_llm",
    text="text_input",
    max_tokens="sampling_param_max_tokens",
    stream="streaming",
    output="text_output",
    min_tokens=None,
    fixed={"sampling_param_exclude_input_from_output": True},
    batched=False,
    cumulative=True,
    repository=("tensorrt_llm",),
)
CONTRACTS = {"trtllm-engine": ENSEMBLE, "trtllm-pytorch": LLMAPI, "cpu-python": ENSEMBLE}
SERVED_MODEL = ENSEMBLE.model  # the engine path's and the local profile's model name


def contract_for(backend: str) -> Contract:
    """The contract of a spec's backend (workflows.spec.Backend values)."""
    return CONTRACTS[str(backend)]
