"""The tiny HF-format Llama: real tensor names, a working tokenizer, byte-identical for a seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from steps.tinymodel import BOS, EOS, make_tiny_llama

FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def test_writes_hf_llama_layout(tiny_model: Path) -> None:
    assert sorted(p.name for p in tiny_model.iterdir()) == sorted(FILES)
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # exercises GQA
    weights = load_file(str(tiny_model / "model.safetensors"))
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    assert weights["model.embed_tokens.weight"].shape == (vocab, hidden)
    assert weights["lm_head.weight"].shape == (vocab, hidden)
    kv = config["num_key_value_heads"] * config["head_dim"]
    assert weights["model.layers.1.self_attn.k_proj.weight"].shape == (kv, hidden)
    assert weights["model.layers.0.mlp.down_proj.weight"].shape == (hidden, config["intermediate_size"])
    assert len(weights) == 2 + 1 + 9 * config["num_hidden_layers"]


def test_tokenizer_round_trips_and_adds_bos(tiny_model: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    config = json.loads((tiny_model / "config.json").read_text())
    assert 1000 <= tokenizer.get_vocab_size() == config["vocab_size"] <= 2000
    text = "What is machine learning? Zebras 42 ünïcode!"
    ids = tokenizer.encode(text).ids
    assert ids[0] == config["bos_token_id"] == tokenizer.token_to_id(BOS)
    assert tokenizer.decode(ids) == text
    assert config["eos_token_id"] == tokenizer.token_to_id(EOS)
    tokenizer_config = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == (BOS, EOS)


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, tiny_model: Path) -> None:
    again = make_tiny_llama(tmp_path / "again", seed=0)
    for name in FILES:
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes(), name
    other = load_file(str(make_tiny_llama(tmp_path / "other", seed=1) / "model.safetensors"))
    base = load_file(str(tiny_model / "model.safetensors"))
    assert not np.array_equal(other["lm_head.weight"], base["lm_head.weight"])


def test_cli_refuses_non_empty_output_and_leaves_it_alone(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "steps.tinymodel", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "not empty" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_transformers_autotokenizer_loads_it_offline(tiny_model: Path) -> None:
    """Benchmark clients (aiperf, genai-perf) load `--tokenizer DIR` with transformers, in their own venv."""
    python = Path(__file__).resolve().parents[1] / ".tools" / "aiperf-venv" / "bin" / "python"
    code = (
        "import sys, json; from transformers import AutoTokenizer\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = t('What is machine learning?')['input_ids']\n"
        "print(json.dumps([ids, t.decode(ids, skip_special_tokens=True), t.eos_token_id]))"
    )
    result = subprocess.run(
        [str(python), "-c", code, str(tiny_model)], capture_output=True, text=True, timeout=120, check=True
    )
    ids, text, eos_id = json.loads(result.stdout.strip().splitlines()[-1])
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert ids == tokenizer.encode("What is machine learning?").ids
    assert text == "What is machine learning?"
    assert eos_id == tokenizer.token_to_id(EOS)
