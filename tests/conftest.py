"""Shared pytest setup: the project's tools on PATH. Server fixtures live in tests/support/."""

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
GO_BIN = ROOT / ".tools" / "go" / "bin"  # the Go toolchain bootstrap fetches when the machine has none
os.environ["PATH"] = os.pathsep.join([str(TOOLS_BIN), str(GO_BIN), os.environ["PATH"]])

# Real-server fixtures shared by every part's tests: tritonserver + tiny model, moto S3.
pytest_plugins = ["tests.support.fixtures", "tests.support.moto", "tests.support.cluster"]


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """A step's main() configures logging for its process; in one pytest process that would leak
    into later tests (extra lines on their stderr), so every test gets the configuration back."""
    loggers = [logging.getLogger(), logging.getLogger("megapod")]
    saved = [(logger, list(logger.handlers), logger.level) for logger in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
