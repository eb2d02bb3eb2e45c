#!/usr/bin/env python3
"""Test double of TensorRT-LLM v0.12 examples/llama/convert_checkpoint.py (no GPU, no TensorRT here).

Writes the real output layout: <output_dir>/config.json (a TRT-LLM checkpoint config with the
`mapping`) and one rank<i>.safetensors per rank (placeholders), after recording its argv.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flags, record


def main() -> int:
    record("convert_checkpoint.py")
    opts = flags(sys.argv[1:])
    hf_config = json.loads((Path(opts["model_dir"]) / "config.json").read_text())
    tp, pp = int(opts.get("tp_size", 1)), int(opts.get("pp_size", 1))
    out = Path(opts["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": hf_config["architectures"][0],
        "dtype": opts.get("dtype", "float16"),
        "num_hidden_layers": hf_config["num_hidden_layers"],
        "num_attention_heads": hf_config["num_attention_heads"],
        "hidden_size": hf_config["hidden_size"],
        "vocab_size": hf_config["vocab_size"],
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp, "gpus_per_node": 8},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for rank in range(tp * pp):
        (out / f"rank{rank}.safetensors").write_bytes(b"converted weights placeholder")
        print(f"[TensorRT-LLM] converted rank {rank}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
