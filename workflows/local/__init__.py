"""`megapod run --local`: execute the rendered Argo DAG on this machine."""

from __future__ import annotations

from pathlib import Path


def run_local(spec_path: Path, *, resume: str | None, runs_dir: Path) -> int:
    """Render the spec's pipeline and run it locally; return the workflow's exit code."""
    from workflows.local.runner import run_local as run

    return run(spec_path, resume=resume, runs_dir=runs_dir)
