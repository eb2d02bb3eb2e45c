"""`tensorrt_llm` of the inflight-batcher layout on CPU: a decoupled python model running the numpy Llama.

Inputs/outputs use the TensorRT-LLM backend v0.12.0 names (input_ids, input_lengths,
request_output_len, end_id, pad_id, bad_words_list, stop_words_list, min_length, beam_width,
streaming -> output_ids [1, 1, n], sequence_length [1, 1], plus zero log-prob/logits/batch_index
dummies). Streaming sends one response per new token; otherwise one response with the prompt +
generated ids (or only generated ids with parameter/input exclude_input_in_output). Publishes the
backend's nv_trt_llm_* gauges. Parameters: `engine_dir` or `gpt_model_path` (HF checkpoint),
`exclude_input_in_output`; unknown upstream parameters are ignored.
"""

from __future__ import annotations

from steps.cpu_backend.inflight import TokenRequest, output_tensors, parse_token_request
from steps.cpu_backend.triton_common import (
    FINAL,
    DecoupledGenerationModel,
    engine_dir,
    model_parameters,
    output_names,
    request_inputs,
    tensors_response,
)

INPUTS = (
    "input_ids",
    "input_lengths",
    "request_output_len",
    "end_id",
    "pad_id",
    "bad_words_list",
    "stop_words_list",
    "min_length",
    "beam_width",
    "streaming",
    "exclude_input_in_output",
)


class TritonPythonModel(DecoupledGenerationModel):
    """Token ids in, token ids out, a thread per request, at most max_batch_size sequences decoding."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        eos = self.load_generator(args, engine_dir(args, params)).config.eos_token_ids
        self.default_end_id = eos[0] if eos else None
        self.exclude_input_default = params.get("exclude_input_in_output", "false").lower() == "true"
        self.declared = output_names(args)

    def parse(self, request) -> TokenRequest:
        return parse_token_request(
            request_inputs(request, INPUTS),
            default_end_id=self.default_end_id,
            exclude_input_default=self.exclude_input_default,
        )

    def serve(self, request: TokenRequest, sender) -> None:
        tokens = self.generator.tokens(request.prompt_ids, request.params, sender)
        if request.streaming:
            for token in tokens:
                sender.send(tensors_response(output_tensors([token]), self.declared))
            sender.send(flags=FINAL)
            return
        generated = list(tokens)
        ids = generated if request.exclude_input else request.prompt_ids + generated
        sender.send(tensors_response(output_tensors(ids), self.declared), flags=FINAL)
