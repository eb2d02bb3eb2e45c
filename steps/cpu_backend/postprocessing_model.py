"""`postprocessing` of the inflight-batcher layout on CPU: TOKENS_BATCH + SEQUENCE_LENGTH -> OUTPUT.

Like upstream v0.12.0, each response is decoded on its own (in streaming, one token at a time) and
the optional log-prob / logits / batch-index inputs are passed through as OUT_* (zeros when absent).
Parameters: `tokenizer_dir`.
"""

from __future__ import annotations

import numpy as np

from steps.cpu_backend.inflight import decode_tokens_batch
from steps.cpu_backend.textgen import TextCodec
from steps.cpu_backend.triton_common import (
    model_parameters,
    output_names,
    request_inputs,
    resolve_dir,
    tensors_response,
)

# Optional inputs passed through, with the placeholder upstream sends when one is missing.
PASSTHROUGH = {
    "CUM_LOG_PROBS": ("OUT_CUM_LOG_PROBS", np.zeros((1, 1), dtype=np.float32)),
    "OUTPUT_LOG_PROBS": ("OUT_OUTPUT_LOG_PROBS", np.zeros((1, 1, 1), dtype=np.float32)),
    "CONTEXT_LOGITS": ("OUT_CONTEXT_LOGITS", np.zeros((1, 1, 1), dtype=np.float32)),
    "GENERATION_LOGITS": ("OUT_GENERATION_LOGITS", np.zeros((1, 1, 1, 1), dtype=np.float32)),
    "BATCH_INDEX": ("OUT_BATCH_INDEX", np.zeros((1, 1), dtype=np.int32)),
}


class TritonPythonModel:
    """Detokenizes tensorrt_llm's output ids; one response per request."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        self.codec = TextCodec(resolve_dir(args, params.get("tokenizer_dir", ""), "tokenizer_dir"))
        self.declared = output_names(args)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            inputs = request_inputs(request, ("TOKENS_BATCH", "SEQUENCE_LENGTH", *PASSTHROUGH))
            texts = decode_tokens_batch(self.codec, inputs["TOKENS_BATCH"], inputs["SEQUENCE_LENGTH"])
            outputs = {"OUTPUT": np.array(texts, dtype=np.object_)}
            for name, (out_name, placeholder) in PASSTHROUGH.items():
                outputs[out_name] = inputs.get(name, placeholder)
            responses.append(tensors_response(outputs, self.declared))
        return responses
