"""What stands in for the cloud during `megapod run --local`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from workflows.local.engine import LocalEnvironment
from workflows.local.runner import default_environment


@contextmanager
def cloud_stand_ins(spec: Any, run_dir: Path, console: Console) -> Iterator[LocalEnvironment]:
    """The local environment for the spec's pipeline (servers started here stop on exit)."""
    yield default_environment(spec.images.pipeline)
