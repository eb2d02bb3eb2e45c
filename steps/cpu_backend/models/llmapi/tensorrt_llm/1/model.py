"""Triton entry point of the CPU stand-in for the LLM-API `tensorrt_llm` (steps.cpu_backend.llmapi_model)."""

import os
import sys

# The stub's interpreter ignores PYTHONPATH; steps.tritonenv passes the import path in this variable.
sys.path[:0] = [p for p in os.environ.get("MEGAPOD_STUB_PYTHONPATH", "").split(os.pathsep) if p]

from steps.cpu_backend.llmapi_model import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
