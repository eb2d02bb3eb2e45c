"""The single-model `ensemble`: the TRT-LLM ensemble contract served by one decoupled python model.

text_input + max_tokens (+ stream, exclude_input_in_output, min_tokens/min_length, ignore_eos,
bad_words, stop_words, end_id, pad_id) in, text_output out; one response per generated token when
streaming, one response with the whole text otherwise. Tokenizer and numpy Llama run in-process.
Config parameters: `engine_dir` or `gpt_model_path` (HF checkpoint directory) and `tokenizer_dir`
(defaults to the checkpoint).
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from steps.cpu_backend.repository import ENSEMBLE_INPUTS
from steps.cpu_backend.textgen import IncrementalDecoder, TextCodec, TextRequest, parse_text_request
from steps.cpu_backend.triton_common import (
    FINAL,
    DecoupledGenerationModel,
    engine_dir,
    max_batch_size,
    model_parameters,
    request_inputs,
    resolve_dir,
)

# min_length is v0.12's name for what later releases (and our contract) call min_tokens.
ALIASES = {"min_length": "min_tokens"}


class TritonPythonModel(DecoupledGenerationModel):
    """Decoupled text-generation model: a thread per request, at most max_batch_size decoding at once."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        checkpoint = engine_dir(args, params)
        tokenizer_dir = resolve_dir(args, params.get("tokenizer_dir") or str(checkpoint), "tokenizer_dir")
        self.codec = TextCodec(tokenizer_dir)
        self.batched = max_batch_size(args) > 0
        self.load_generator(args, checkpoint)

    def parse(self, request) -> TextRequest:
        found = request_inputs(request, (name for name, *_ in ENSEMBLE_INPUTS))
        return parse_text_request(
            {ALIASES.get(name, name): value for name, value in found.items()}, self.codec
        )

    def _text(self, text: str) -> pb_utils.InferenceResponse:
        shape = (1, 1) if self.batched else (1,)
        data = np.array([text.encode("utf-8")], dtype=np.object_).reshape(shape)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", data)])

    def serve(self, request: TextRequest, sender) -> None:
        tokens = self.generator.tokens(request.prompt_ids, request.params, sender)
        if request.stream:
            decoder = IncrementalDecoder(self.codec)
            for token in tokens:
                sender.send(self._text(decoder.push(token)))
            # A trailing incomplete UTF-8 sequence was held back; it rides on the final response.
            rest = decoder.flush()
            sender.send(self._text(rest) if rest else None, flags=FINAL)
            return
        generated = list(tokens)
        ids = generated if request.exclude_input else request.prompt_ids + generated
        sender.send(self._text(self.codec.decode(ids)), flags=FINAL)
