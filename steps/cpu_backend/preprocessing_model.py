"""`preprocessing` of the inflight-batcher layout on CPU: tokenizer only, upstream v0.12.0 tensor names.

QUERY, REQUEST_OUTPUT_LEN, BAD_WORDS_DICT, STOP_WORDS_DICT, END_ID, PAD_ID in; INPUT_ID,
REQUEST_INPUT_LEN, DECODER_INPUT_ID, REQUEST_DECODER_INPUT_LEN, BAD_WORDS_IDS, STOP_WORDS_IDS,
EMBEDDING_BIAS, REQUEST_OUTPUT_LEN, OUT_END_ID, OUT_PAD_ID out (only those config.pbtxt declares).
Parameters: `tokenizer_dir`, `add_special_tokens` (default true, as upstream).
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from steps.cpu_backend.inflight import pad_ids, word_list_tensor
from steps.cpu_backend.textgen import RequestError, TextCodec
from steps.cpu_backend.triton_common import (
    model_parameters,
    output_names,
    request_inputs,
    resolve_dir,
    tensors_response,
)

INPUTS = ("QUERY", "REQUEST_OUTPUT_LEN", "BAD_WORDS_DICT", "STOP_WORDS_DICT", "END_ID", "PAD_ID")
TRUE_WORDS = {"true", "1", "t", "y", "yes"}


class TritonPythonModel:
    """Tokenizes a batch of queries; one response per request."""

    def initialize(self, args: dict) -> None:
        params = model_parameters(args)
        self.codec = TextCodec(resolve_dir(args, params.get("tokenizer_dir", ""), "tokenizer_dir"))
        add_special = params.get("add_special_tokens", "true").lower()
        self.add_special_tokens = add_special in TRUE_WORDS or add_special.startswith("${")
        self.declared = output_names(args)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(
                    tensors_response(self._outputs(request_inputs(request, INPUTS)), self.declared)
                )
            except (RequestError, UnicodeDecodeError, KeyError) as exc:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                )
        return responses

    def _outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "QUERY" not in inputs or "REQUEST_OUTPUT_LEN" not in inputs:
            raise RequestError("QUERY and REQUEST_OUTPUT_LEN are required")
        query = inputs["QUERY"]
        batch = query.shape[0]
        prompts = [
            self.codec.encode(row.reshape(-1)[0].decode("utf-8"), add_special_tokens=self.add_special_tokens)
            for row in query
        ]
        end_id = inputs.get("END_ID", np.full((batch, 1), self.codec.eos_id, dtype=np.int32))
        pad_id = inputs.get("PAD_ID", np.full((batch, 1), self.codec.pad_id, dtype=np.int32))
        input_id, input_len = pad_ids(prompts, int(np.asarray(pad_id).reshape(-1)[0]))
        return {
            "INPUT_ID": input_id,
            "REQUEST_INPUT_LEN": input_len,
            "DECODER_INPUT_ID": np.asarray(pad_id, dtype=np.int32).reshape(batch, 1),
            "REQUEST_DECODER_INPUT_LEN": np.ones((batch, 1), dtype=np.int32),
            "BAD_WORDS_IDS": word_list_tensor(self.codec, inputs.get("BAD_WORDS_DICT"), batch),
            "STOP_WORDS_IDS": word_list_tensor(self.codec, inputs.get("STOP_WORDS_DICT"), batch),
            "EMBEDDING_BIAS": np.empty((batch, 0), dtype=np.float32),
            "REQUEST_OUTPUT_LEN": np.asarray(inputs["REQUEST_OUTPUT_LEN"], dtype=np.int32),
            "OUT_END_ID": np.asarray(end_id, dtype=np.int32).reshape(batch, 1),
            "OUT_PAD_ID": np.asarray(pad_id, dtype=np.int32).reshape(batch, 1),
        }
