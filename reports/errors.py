"""Errors for input the report cannot use: each names the file and says what was wrong."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A benchmark export (or other input file) that is truncated, empty or not what its name says."""

    def __init__(self, path: Path | str, what: str):
        super().__init__(f"{path}: {what}")
        self.path = Path(path)
        self.what = what


class ReportError(RuntimeError):
    """A report that cannot be built at all (no inputs, unusable history, unknown baseline)."""
