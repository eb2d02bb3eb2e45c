"""Shared pytest setup: the project's tools on PATH. Server fixtures live in tests/support/."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
os.environ["PATH"] = f"{TOOLS_BIN}{os.pathsep}{os.environ['PATH']}"

# Real-server fixtures shared by every part's tests: tritonserver + tiny model, moto S3.
pytest_plugins = ["tests.support.fixtures", "tests.support.moto"]
