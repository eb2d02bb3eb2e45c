"""Shared by the TensorRT-LLM test doubles: argv recording and the knobs tests turn.

Environment:
- TRTLLM_DOUBLE_RECORD: append {"tool", "argv"} as one JSON line per run to this file;
- TRTLLM_DOUBLE_FAIL: name of a tool ("convert_checkpoint.py" / "trtllm-build") that exits 3;
- TRTLLM_DOUBLE_GPUS_PER_NODE: gpus_per_node trtllm-build records (the value a mismatched
  build environment would bake into config.json; default: --gpus_per_node or 8).
"""

from __future__ import annotations

import json
import os
import sys


def record(tool: str) -> None:
    """Append this invocation to the record file, then fail if the test asked for it."""
    path = os.environ.get("TRTLLM_DOUBLE_RECORD")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"tool": tool, "argv": sys.argv[1:]}) + "\n")
    print(f"[TensorRT-LLM] {tool} (test double) starting", flush=True)
    if os.environ.get("TRTLLM_DOUBLE_FAIL") == tool:
        print(f"[TensorRT-LLM][ERROR] {tool}: CUDA out of memory (test double failure)", flush=True)
        sys.exit(3)


def flags(argv: list[str]) -> dict[str, str]:
    """--key value pairs (a flag followed by another flag or nothing is 'true')."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        key = argv[i].removeprefix("--")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[key] = argv[i + 1]
            i += 2
        else:
            out[key] = "true"
            i += 1
    return out
