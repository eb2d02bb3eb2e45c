"""A tiny HF-format Llama (random weights, real tensor names, a locally trained BPE tokenizer).

It stands in for Llama 3.1 wherever the pipeline runs on one machine: it loads and generates in
milliseconds with steps.cpu_backend.llama, and clients (aiperf, genai-perf, transformers) can load its
tokenizer directory offline.

    python -m steps.tinymodel --out DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = Path(__file__).resolve().parent / "cpu_backend" / "corpus.txt"
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
SPECIAL_TOKENS = (BOS, EOS)
VOCAB_TARGET = 1024

# Shaped like Llama 3.1 (GQA, SwiGLU, RMSNorm, RoPE) but small enough to run on numpy in milliseconds.
ARCHITECTURE = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
}


def train_tokenizer(corpus: Path = CORPUS, vocab_size: int = VOCAB_TARGET) -> Tokenizer:
    """Byte-level BPE (as in Llama 3) trained on the shipped corpus; adds BOS like Llama's tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(corpus)], trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tokenizer


def llama_config(vocab_size: int, bos_id: int, eos_id: int) -> dict:
    """config.json of a LlamaForCausalLM with the tiny architecture."""
    heads = ARCHITECTURE["num_attention_heads"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **ARCHITECTURE,
        "head_dim": ARCHITECTURE["hidden_size"] // heads,
        "vocab_size": vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "use_cache": True,
    }


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Weights under the Hugging Face LlamaForCausalLM tensor names, shapes [out_features, in_features]."""
    rng = np.random.default_rng(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config["head_dim"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim
    vocab = config["vocab_size"]

    def dense(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, config["initializer_range"] * 5, size=(rows, cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, size=hidden)).astype(np.float32)

    weights = {"model.embed_tokens.weight": dense(vocab, hidden)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        weights |= {
            f"{prefix}.input_layernorm.weight": norm(),
            f"{prefix}.self_attn.q_proj.weight": dense(q_out, hidden),
            f"{prefix}.self_attn.k_proj.weight": dense(kv_out, hidden),
            f"{prefix}.self_attn.v_proj.weight": dense(kv_out, hidden),
            f"{prefix}.self_attn.o_proj.weight": dense(hidden, q_out),
            f"{prefix}.post_attention_layernorm.weight": norm(),
            f"{prefix}.mlp.gate_proj.weight": dense(inter, hidden),
            f"{prefix}.mlp.up_proj.weight": dense(inter, hidden),
            f"{prefix}.mlp.down_proj.weight": dense(hidden, inter),
        }
    weights["model.norm.weight"] = norm()
    weights["lm_head.weight"] = dense(vocab, hidden)
    return weights


def tokenizer_files(bos_id: int, eos_id: int, max_length: int) -> dict[str, dict]:
    """The JSON files transformers' AutoTokenizer and the generation code read next to tokenizer.json."""
    return {
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": max_length,
            "model_input_names": ["input_ids", "attention_mask"],
        },
        "special_tokens_map.json": {"bos_token": BOS, "eos_token": EOS},
        "generation_config.json": {
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "do_sample": False,
            "max_length": max_length,
        },
    }


def make_tiny_llama(out: Path, *, seed: int = 0) -> Path:
    """Write the tiny model to `out` (created; must be empty or absent) and return it.

    Files are written to a sibling temp dir and renamed at the end, so a failure leaves nothing behind.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory {out} is not empty; pass a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = train_tokenizer()
        bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
        config = llama_config(tokenizer.get_vocab_size(), bos_id, eos_id)
        tokenizer.save(str(staging / "tokenizer.json"))
        save_file(random_weights(config, seed), str(staging / "model.safetensors"), metadata={"format": "pt"})
        files = {"config.json": config, **tokenizer_files(bos_id, eos_id, config["max_position_embeddings"])}
        for name, content in files.items():
            (staging / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        # mkdtemp makes the directory private; the model is read by other users' servers too.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: write the tiny model directory."""
    parser = argparse.ArgumentParser(prog="python -m steps.tinymodel", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="new or empty directory to write")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    try:
        path = make_tiny_llama(args.out, seed=args.seed)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the tiny model to {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
