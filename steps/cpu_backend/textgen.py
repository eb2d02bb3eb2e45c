"""Text in, tokens out: the pure parts of the CPU backend's Triton models (no triton imports here).

Request fields arrive as numpy arrays named like the TRT-LLM ensemble inputs; this module turns them
into a prompt + GenerationParams, detokenizes streamed tokens incrementally, and keeps the counters
behind the nv_trt_llm_* gauges.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from steps.cpu_backend.llama import GenerationParams

# Matches TensorRT-LLM's default paged KV-cache block size; only used for the kv_cache gauges.
TOKENS_PER_BLOCK = 64


class RequestError(ValueError):
    """A request the backend rejects; the message is sent back to the client."""


def first_scalar(array: np.ndarray | None, default=None):
    """The single value of a [1] or [1, 1] request tensor (Triton adds the batch dimension)."""
    if array is None:
        return default
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0:
        return default
    if flat.size != 1:
        raise RequestError(f"expected one value per request, got shape {list(np.shape(array))}")
    value = flat[0]
    return (
        value.decode("utf-8")
        if isinstance(value, bytes)
        else value.item()
        if hasattr(value, "item")
        else value
    )


def words(array: np.ndarray | None) -> list[str]:
    """The non-empty strings of a BYTES tensor (bad_words / stop_words), in order."""
    if array is None:
        return []
    items = (v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(array).reshape(-1))
    return [w for w in items if w]


class TextCodec:
    """The model's tokenizer (tokenizer.json) with the ids the generation code needs."""

    def __init__(self, tokenizer_dir: Path | str):
        tokenizer_dir = Path(tokenizer_dir)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        config_path = tokenizer_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        self.eos_id = self._special_id(config.get("eos_token"))
        self.pad_id = self._special_id(config.get("pad_token")) or self.eos_id

    def _special_id(self, token) -> int | None:
        if isinstance(token, dict):  # AddedToken serialised by transformers
            token = token.get("content")
        return self.tokenizer.token_to_id(token) if token else None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def word_ids(self, items: list[str]) -> tuple[tuple[int, ...], ...]:
        """Token sequences of bad/stop words (encoded without BOS, empty encodings dropped)."""
        encoded = (tuple(self.encode(w, add_special_tokens=False)) for w in items)
        return tuple(ids for ids in encoded if ids)


@dataclass
class IncrementalDecoder:
    """Turns a growing token list into text deltas; holds back incomplete UTF-8 sequences."""

    codec: TextCodec
    prefix: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""

    def push(self, token: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self.tokens.append(int(token))
        text = self.codec.decode(self.prefix + self.tokens)
        if text.endswith("\ufffd"):
            return ""
        delta, self.emitted = text[len(self.emitted) :], text
        return delta

    def flush(self) -> str:
        """Text still held back at the end (an incomplete UTF-8 tail, as replacement characters)."""
        text = self.codec.decode(self.prefix + self.tokens)
        delta, self.emitted = text[len(self.emitted) :], text
        return delta


@dataclass(frozen=True)
class TextRequest:
    """One parsed ensemble request."""

    prompt_ids: list[int]
    params: GenerationParams
    stream: bool
    exclude_input: bool


def parse_text_request(inputs: Mapping[str, np.ndarray | None], codec: TextCodec) -> TextRequest:
    """Validate the TRT-LLM ensemble inputs (text_input, max_tokens, ...) and tokenize the prompt."""
    text = first_scalar(inputs.get("text_input"))
    if not isinstance(text, str):
        raise RequestError("text_input (BYTES, one string) is required")
    max_tokens = first_scalar(inputs.get("max_tokens"))
    if max_tokens is None:
        raise RequestError("max_tokens (INT32) is required")
    end_id = first_scalar(inputs.get("end_id"), codec.eos_id)
    params = GenerationParams(
        max_new_tokens=int(max_tokens),
        end_id=None if end_id is None else int(end_id),
        min_new_tokens=int(first_scalar(inputs.get("min_tokens"), 0)),
        ignore_eos=bool(first_scalar(inputs.get("ignore_eos"), False)),
        bad_words=codec.word_ids(words(inputs.get("bad_words"))),
        stop_words=codec.word_ids(words(inputs.get("stop_words"))),
    )
    if params.max_new_tokens < 1:
        raise RequestError(f"max_tokens must be >= 1, got {params.max_new_tokens}")
    return TextRequest(
        prompt_ids=codec.encode(text),
        params=params,
        stream=bool(first_scalar(inputs.get("stream"), False)),
        exclude_input=bool(first_scalar(inputs.get("exclude_input_in_output"), False)),
    )


class SchedulerStats:
    """Thread-safe counts behind the nv_trt_llm_* gauges, named by the labels upstream gives them.

    Meanings as TensorRT-LLM's IterationStats feeds them in tensorrtllm_backend v0.12.0
    (model_instance_state.cc WaitForStats): `active` requests hold a batch slot (at most `max`; the
    rest wait in the executor's queue, counted nowhere), `scheduled` run this iteration (all active
    ones here), `context` are still in their context phase; KV blocks `used` + `free` = `max`.
    """

    def __init__(self, max_active: int, max_sequence_len: int, tokens_per_block: int = TOKENS_PER_BLOCK):
        self.max_active = max_active
        self.tokens_per_block = tokens_per_block
        self.max_blocks = max_active * math.ceil(max_sequence_len / tokens_per_block)
        self._lock = threading.Lock()
        self._context = 0
        self._lengths: dict[int, int] = {}

    def context(self, delta: int) -> None:
        with self._lock:
            self._context += delta

    def set_length(self, request_id: int, length: int | None) -> None:
        """Track an active sequence's length; None when it finished."""
        with self._lock:
            if length is None:
                self._lengths.pop(request_id, None)
            else:
                self._lengths[request_id] = length

    def request_values(self) -> dict[str, float]:
        """nv_trt_llm_request_metrics by request_type."""
        with self._lock:
            active = len(self._lengths)
            return {"active": active, "max": self.max_active, "scheduled": active, "context": self._context}

    def kv_cache_values(self) -> dict[str, float]:
        """nv_trt_llm_kv_cache_block_metrics by kv_cache_block_type."""
        with self._lock:
            used = sum(math.ceil(n / self.tokens_per_block) for n in self._lengths.values())
        return {
            "max": self.max_blocks,
            "free": self.max_blocks - used,
            "used": used,
            "tokens_per": self.tokens_per_block,
        }
