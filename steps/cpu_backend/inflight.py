"""Tensor formats of tensorrtllm_backend v0.12.0 `all_models/inflight_batcher_llm` (pure numpy, no triton).

preprocessing turns text into INPUT_ID/REQUEST_INPUT_LEN and the bad/stop word lists in TRT-LLM's
[batch, 2, n] layout (row 0: concatenated token ids, row 1: cumulative end offsets padded with -1);
tensorrt_llm reads those back; postprocessing decodes TOKENS_BATCH [batch, beam, len] up to
SEQUENCE_LENGTH [batch, beam]. Shapes and dtypes follow the upstream model.py files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from steps.cpu_backend.llama import GenerationParams
from steps.cpu_backend.textgen import RequestError, TextCodec, first_scalar, words


def word_list_tensor(codec: TextCodec, word_lists: np.ndarray | None, batch_size: int) -> np.ndarray:
    """BAD_WORDS_IDS / STOP_WORDS_IDS [batch, 2, n] int32 from BAD_WORDS_DICT / STOP_WORDS_DICT [batch, k]."""
    if word_lists is None:
        return np.empty([batch_size, 2, 0], dtype=np.int32)
    flat_ids, offsets = [], []
    for row in word_lists:
        ids = codec.word_ids(words(row))
        flat_ids.append([t for word in ids for t in word])
        offsets.append(np.cumsum([len(word) for word in ids]).tolist())
    pad_to = max([1, *(len(ids) for ids in flat_ids)])
    flat = [ids + [0] * (pad_to - len(ids)) for ids in flat_ids]
    offs = [o + [-1] * (pad_to - len(o)) for o in offsets]
    return np.array([flat, offs], dtype=np.int32).transpose((1, 0, 2))


def word_lists_from_tensor(tensor: np.ndarray | None) -> tuple[tuple[int, ...], ...]:
    """Token sequences of one request's [1, 2, n] (or [2, n]) word list; inverse of word_list_tensor."""
    if tensor is None:
        return ()
    array = np.asarray(tensor)
    array = array.reshape(array.shape[-2:]) if array.ndim == 3 and array.shape[0] == 1 else array
    if array.ndim != 2 or array.shape[0] != 2:
        raise RequestError(f"word list must have shape [1, 2, n], got {list(np.shape(tensor))}")
    ids, ends = array[0].tolist(), [e for e in array[1].tolist() if e >= 0]
    starts = [0, *ends[:-1]][: len(ends)]
    return tuple(tuple(ids[s:e]) for s, e in zip(starts, ends, strict=True) if e > s)


def pad_ids(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """INPUT_ID [batch, max_len] (right-padded with pad_id) and REQUEST_INPUT_LEN [batch, 1], int32."""
    longest = max(len(s) for s in sequences)
    ids = np.array([s + [pad_id] * (longest - len(s)) for s in sequences], dtype=np.int32)
    return ids, np.array([[len(s)] for s in sequences], dtype=np.int32)


def decode_tokens_batch(
    codec: TextCodec, tokens_batch: np.ndarray, sequence_lengths: np.ndarray
) -> list[bytes]:
    """OUTPUT strings (UTF-8) for every batch item and beam, as upstream postprocessing decodes them."""
    tokens_batch = np.asarray(tokens_batch)
    if tokens_batch.ndim == 2:  # [beam, len] when the model has no batch dimension
        tokens_batch, sequence_lengths = tokens_batch[None], np.asarray(sequence_lengths)[None]
    lengths = np.asarray(sequence_lengths).reshape(tokens_batch.shape[:2])
    return [
        codec.decode(beam[: int(lengths[b, k])]).encode("utf-8")
        for b, beams in enumerate(tokens_batch)
        for k, beam in enumerate(beams)
    ]


@dataclass(frozen=True)
class TokenRequest:
    """One tensorrt_llm request: prompt tokens and how to decode."""

    prompt_ids: list[int]
    params: GenerationParams
    streaming: bool
    exclude_input: bool


def parse_token_request(
    inputs: Mapping[str, np.ndarray], *, default_end_id: int | None, exclude_input_default: bool
) -> TokenRequest:
    """Validate tensorrt_llm inputs (input_ids, input_lengths, request_output_len, ...) of one request."""
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        raise RequestError("input_ids (INT32 [1, len]) is required")
    input_ids = np.asarray(input_ids)
    if input_ids.ndim == 2 and input_ids.shape[0] != 1:
        raise RequestError(f"one sequence per request is supported, got a batch of {input_ids.shape[0]}")
    length = first_scalar(inputs.get("input_lengths"), input_ids.shape[-1])
    output_len = first_scalar(inputs.get("request_output_len"))
    if output_len is None:
        raise RequestError("request_output_len (INT32) is required")
    beam_width = int(first_scalar(inputs.get("beam_width"), 1))
    if beam_width != 1:
        raise RequestError(f"beam_width {beam_width} is not supported by the CPU backend (only 1)")
    end_id = first_scalar(inputs.get("end_id"), default_end_id)
    return TokenRequest(
        prompt_ids=[int(t) for t in input_ids.reshape(-1)[: int(length)]],
        params=GenerationParams(
            max_new_tokens=int(output_len),
            end_id=None if end_id is None else int(end_id),
            min_new_tokens=int(first_scalar(inputs.get("min_length"), 0)),
            bad_words=word_lists_from_tensor(inputs.get("bad_words_list")),
            stop_words=word_lists_from_tensor(inputs.get("stop_words_list")),
        ),
        streaming=bool(first_scalar(inputs.get("streaming"), False)),
        exclude_input=bool(first_scalar(inputs.get("exclude_input_in_output"), exclude_input_default)),
    )


def output_tensors(tokens: list[int]) -> dict[str, np.ndarray]:
    """tensorrt_llm outputs for one response (batch 1, beam 1); log probs and logits are zero dummies."""
    return {
        "output_ids": np.array([[tokens]], dtype=np.int32),
        "sequence_length": np.array([[len(tokens)]], dtype=np.int32),
        "cum_log_probs": np.zeros((1, 1), dtype=np.float32),
        "output_log_probs": np.zeros((1, 1, max(1, len(tokens))), dtype=np.float32),
        "context_logits": np.zeros((1, 1, 1), dtype=np.float32),
        "generation_logits": np.zeros((1, 1, 1, 1), dtype=np.float32),
        "batch_index": np.zeros((1, 1), dtype=np.int32),
    }
