"""Triton entry point of the single-model CPU `ensemble` (code in steps.cpu_backend.ensemble_model)."""

import os
import sys

# The python-backend stub's interpreter is isolated (it ignores PYTHONPATH), so the import path for
# numpy<2 and the megapod sources arrives in this variable (see steps.tritonenv.stub_environment).
sys.path[:0] = [
    p for p in os.environ.get("MEGAPOD_STUB_PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path
]

from steps.cpu_backend.ensemble_model import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
