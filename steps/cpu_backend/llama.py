"""A numpy Llama forward pass (RMSNorm, RoPE, GQA attention with a KV cache, SwiGLU) and greedy decoding.

It reads Hugging Face LlamaForCausalLM checkpoints (config.json + *.safetensors) and follows the HF
conventions (rotate-half RoPE, weights stored [out_features, in_features]), so it runs the tiny model
from steps.tinymodel as the CPU stand-in for TensorRT-LLM. It must work with numpy 1.26 (inside the
Triton python-backend stub) and numpy 2 (the main environment).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from steps.contract import CPU_POINTER


@dataclass(frozen=True)
class LlamaConfig:
    """The config.json fields the forward pass needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, raw: dict) -> LlamaConfig:
        """Parse a HF Llama config dict (eos_token_id may be an int or a list, as in Llama 3.1)."""
        if "LlamaForCausalLM" not in raw.get("architectures", []):
            raise ValueError(f"not a LlamaForCausalLM config (architectures={raw.get('architectures')})")
        if raw.get("rope_scaling"):
            raise ValueError("rope_scaling is not supported by the CPU backend; use a config without it")
        eos = raw.get("eos_token_id")
        heads = raw["num_attention_heads"]
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads", heads),
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            max_position_embeddings=raw["max_position_embeddings"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=raw.get("rope_theta", 10000.0),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
        )


@dataclass
class KVCache:
    """Keys/values of one sequence: [layers, kv_heads, capacity, head_dim]; `length` positions are filled."""

    keys: np.ndarray
    values: np.ndarray
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) * weight over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def checkpoint_dir(path: Path | str) -> Path:
    """The HF checkpoint a directory stands for: itself, or the one steps.build's cpu-python pointer names."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    pointer = path / CPU_POINTER
    if pointer.is_file():
        return Path(json.loads(pointer.read_text())["checkpoint"])
    raise FileNotFoundError(f"{path} holds neither a HF checkpoint (config.json) nor a {CPU_POINTER} pointer")


class LlamaModel:
    """Weights of one Llama checkpoint plus the forward pass for a single sequence."""

    def __init__(self, config: LlamaConfig, weights: dict[str, np.ndarray]):
        self.config = config
        self.w = {name: np.asarray(t, dtype=np.float32) for name, t in weights.items()}
        self._check_shapes()
        half = np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim
        self.inv_freq = 1.0 / (config.rope_theta**half)

    @classmethod
    def load(cls, model_dir: Path | str) -> LlamaModel:
        """Load config.json and every *.safetensors shard of a HF Llama checkpoint (or a build pointer)."""
        model_dir = checkpoint_dir(model_dir)
        config = LlamaConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
        shards = sorted(model_dir.glob("*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"no *.safetensors in {model_dir}")
        weights: dict[str, np.ndarray] = {}
        for shard in shards:
            weights.update(load_file(str(shard)))
        return cls(config, weights)

    def _check_shapes(self) -> None:
        c = self.config
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        expected = {
            "model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
            "model.norm.weight": (c.hidden_size,),
        }
        if not c.tie_word_embeddings:
            expected["lm_head.weight"] = (c.vocab_size, c.hidden_size)
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}"
            expected |= {
                f"{p}.input_layernorm.weight": (c.hidden_size,),
                f"{p}.post_attention_layernorm.weight": (c.hidden_size,),
                f"{p}.self_attn.q_proj.weight": (q, c.hidden_size),
                f"{p}.self_attn.k_proj.weight": (kv, c.hidden_size),
                f"{p}.self_attn.v_proj.weight": (kv, c.hidden_size),
                f"{p}.self_attn.o_proj.weight": (c.hidden_size, q),
                f"{p}.mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
                f"{p}.mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
                f"{p}.mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
            }
        for name, shape in expected.items():
            if name not in self.w:
                raise ValueError(f"checkpoint lacks tensor {name}")
            if self.w[name].shape != shape:
                raise ValueError(f"tensor {name} has shape {self.w[name].shape}, config implies {shape}")

    def new_cache(self, capacity: int | None = None) -> KVCache:
        """An empty KV cache for up to `capacity` positions (default: max_position_embeddings)."""
        c = self.config
        capacity = capacity or c.max_position_embeddings
        shape = (c.num_hidden_layers, c.num_key_value_heads, capacity, c.head_dim)
        return KVCache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def _rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        freqs = positions[:, None].astype(np.float64) * self.inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    def _attention(
        self, layer: int, x: np.ndarray, cache: KVCache, cos: np.ndarray, sin: np.ndarray
    ) -> np.ndarray:
        c, p = self.config, f"model.layers.{layer}.self_attn"
        steps, start = x.shape[0], cache.length
        q = (x @ self.w[f"{p}.q_proj.weight"].T).reshape(steps, c.num_attention_heads, c.head_dim)
        k = (x @ self.w[f"{p}.k_proj.weight"].T).reshape(steps, c.num_key_value_heads, c.head_dim)
        v = (x @ self.w[f"{p}.v_proj.weight"].T).reshape(steps, c.num_key_value_heads, c.head_dim)
        q = q * cos[:, None] + rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        cache.keys[layer, :, start : start + steps] = k.transpose(1, 0, 2)
        cache.values[layer, :, start : start + steps] = v.transpose(1, 0, 2)
        total = start + steps
        group = c.num_attention_heads // c.num_key_value_heads
        keys = np.repeat(cache.keys[layer, :, :total], group, axis=0)  # [heads, total, head_dim]
        values = np.repeat(cache.values[layer, :, :total], group, axis=0)
        scores = q.transpose(1, 0, 2) @ keys.transpose(0, 2, 1) / np.sqrt(c.head_dim)  # [heads, steps, total]
        causal = np.arange(total)[None, :] > (start + np.arange(steps))[:, None]
        scores = np.where(causal[None], -np.inf, scores)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        out = (probs @ values).transpose(1, 0, 2).reshape(steps, c.num_attention_heads * c.head_dim)
        return out @ self.w[f"{p}.o_proj.weight"].T

    def _mlp(self, layer: int, x: np.ndarray) -> np.ndarray:
        p = f"model.layers.{layer}.mlp"
        gate = silu(x @ self.w[f"{p}.gate_proj.weight"].T)
        return (gate * (x @ self.w[f"{p}.up_proj.weight"].T)) @ self.w[f"{p}.down_proj.weight"].T

    def forward(self, token_ids: Sequence[int] | np.ndarray, cache: KVCache) -> np.ndarray:
        """Run `token_ids` after the cache, extend it, return logits [len(token_ids), vocab]."""
        c = self.config
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token ids must be in [0, {c.vocab_size}), got {ids.min()}..{ids.max()}")
        if cache.length + ids.size > cache.capacity:
            raise ValueError(
                f"sequence of {cache.length + ids.size} tokens exceeds the cache ({cache.capacity})"
            )
        cos, sin = self._rope(np.arange(cache.length, cache.length + ids.size))
        x = self.w["model.embed_tokens.weight"][ids]
        for layer in range(c.num_hidden_layers):
            p = f"model.layers.{layer}"
            x = x + self._attention(
                layer, rms_norm(x, self.w[f"{p}.input_layernorm.weight"], c.rms_norm_eps), cache, cos, sin
            )
            x = x + self._mlp(
                layer, rms_norm(x, self.w[f"{p}.post_attention_layernorm.weight"], c.rms_norm_eps)
            )
        cache.length += ids.size
        head = self.w["model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"]
        return rms_norm(x, self.w["model.norm.weight"], c.rms_norm_eps) @ head.T


@dataclass(frozen=True)
class GenerationParams:
    """Per-request decoding options (the TRT-LLM request fields the CPU backend honours)."""

    max_new_tokens: int
    end_id: int | None = None
    min_new_tokens: int = 0
    ignore_eos: bool = False
    bad_words: tuple[tuple[int, ...], ...] = field(default=())
    stop_words: tuple[tuple[int, ...], ...] = field(default=())


def _banned_tokens(context: list[int], bad_words: tuple[tuple[int, ...], ...]) -> list[int]:
    """Last tokens of bad words whose prefix the context ends with (single-token words are always banned)."""
    banned = []
    for word in bad_words:
        prefix = list(word[:-1])
        if not prefix or context[-len(prefix) :] == prefix:
            banned.append(word[-1])
    return banned


def _ends_with_stop_word(generated: list[int], stop_words: tuple[tuple[int, ...], ...]) -> bool:
    return any(word and generated[-len(word) :] == list(word) for word in stop_words)


def check_fits(model: LlamaModel, prompt_len: int, max_new_tokens: int) -> None:
    """Raise ValueError unless prompt + new tokens fit the model's context window."""
    limit = model.config.max_position_embeddings
    if prompt_len < 1:
        raise ValueError("the prompt must have at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_new_tokens}")
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_tokens ({max_new_tokens}) "
            f"exceeds the context window of {limit}"
        )


def generate(model: LlamaModel, prompt_ids: Sequence[int], params: GenerationParams) -> Iterator[int]:
    """Greedy decoding: yield new token ids one by one.

    Stops after max_new_tokens, at end_id (not yielded; suppressed until min_new_tokens, ignored with
    ignore_eos), or right after a stop word (yielded, as TensorRT-LLM includes it).
    """
    prompt = [int(t) for t in prompt_ids]
    check_fits(model, len(prompt), params.max_new_tokens)
    cache = model.new_cache(len(prompt) + params.max_new_tokens)
    logits = model.forward(prompt, cache)[-1]
    generated: list[int] = []
    while True:
        logits = logits.copy()
        banned = _banned_tokens(prompt + generated, params.bad_words)
        if params.end_id is not None and (params.ignore_eos or len(generated) < params.min_new_tokens):
            banned.append(params.end_id)
        if banned:
            logits[banned] = -np.inf
        token = int(np.argmax(logits))
        if token == params.end_id:
            return
        generated.append(token)
        yield token
        if len(generated) >= params.max_new_tokens or _ends_with_stop_word(generated, params.stop_words):
            return
        logits = model.forward([token], cache)[-1]
