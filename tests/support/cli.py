"""Run the `megapod` CLI in a subprocess, for inputs that could hang an in-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def megapod_on_fifo(command: str, fifo: Path) -> subprocess.CompletedProcess[str]:
    """`megapod <command> FIFO` with a timeout: opening a FIFO for reading blocks until a writer
    comes (fifo(7)), so a CLI that opens it first would hang, not fail."""
    os.mkfifo(fifo)
    return subprocess.run(
        [sys.executable, "-m", "workflows.cli", command, str(fifo)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
