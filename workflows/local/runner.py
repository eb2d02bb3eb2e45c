"""`megapod run --local SPEC`: render the pipeline, start what stands in for the cloud, run the DAG.

A run folder `runs/<spec name>-<UTC timestamp>/` holds everything: the rendered YAML
(`rendered/`), `status.json` (the node list, rewritten as it changes), one folder per task
(`tasks/<task>/log.txt`, the task's private files under `root/`), the volumes
(`volumes/<claim>/`), and collected output artifacts (`artifacts/<task>/<name>`; a file artifact
as `<name>/<file name>`, the way Argo keys it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from workflows.local.documents import Documents, load_documents
from workflows.local.engine import Executor, LocalEnvironment
from workflows.local.errors import LocalRunError, UnsupportedFeature
from workflows.local.expressions import ERROR, FAILED, SUCCEEDED
from workflows.local.nodes import Node, read_status
from workflows.local.prometheus import TOOLS_BIN
from workflows.local.view import NodeView, format_duration

SECRETS_ENV = "MEGAPOD_SECRETS"
DEFAULT_SECRETS = Path("~/.config/megapod/secrets.yaml")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
LOG_TAIL_LINES = 8


def run_local(spec_path: Path, *, resume: str | None, runs_dir: Path) -> int:
    """Render the spec's pipeline and run it on this machine; 0 when the workflow succeeded."""
    from workflows.spec import SpecError, load_spec

    console = Console(stderr=True)
    stop_on_sigterm()
    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        for problem in exc.problems:
            console.print(f"[red]error:[/red] {problem}", highlight=False)
        return EXIT_BAD_INPUT
    try:
        # Tasks run in their own folders: every path handed to them must be absolute.
        run_dir, previous = prepare_run_folder(spec, resume, runs_dir.resolve())
        documents = render_pipeline(spec, run_dir)
        from workflows.local.standins import cloud_stand_ins

        with cloud_stand_ins(spec, run_dir, console) as standins:
            return execute(
                documents,
                run_dir,
                standins.environment,
                on_change=standins.on_change,
                resume=previous,
                metadata={"spec": str(spec_path), "spec_hash": spec.content_hash()},
                console=console,
            )
    except UnsupportedFeature as exc:
        for problem in exc.problems:
            console.print(f"[red]error:[/red] {problem}", highlight=False)
        return EXIT_BAD_INPUT
    except LocalRunError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return EXIT_BAD_INPUT


def stop_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C: stop the tasks, run the exit hook, stop the stand-ins."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def new_run_folder(runs_dir: Path, spec_name: str) -> Path:
    """`<name>-<UTC time>`, or `<name>-<UTC time>-<n>` when another run took that second already.

    mkdir without exist_ok is the claim: two runs started in the same second never share a folder.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{spec_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    for attempt in range(1, 1000):
        run_dir = runs_dir / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise LocalRunError(f"{runs_dir}: more than 999 runs of {spec_name} started in one second")


def prepare_run_folder(spec: Any, resume: str | None, runs_dir: Path) -> tuple[Path, dict[str, Any] | None]:
    """A new run folder, or the one to resume with the node list of its earlier run."""
    if resume is None:
        return new_run_folder(runs_dir, spec.name), None
    run_dir = find_run(resume, runs_dir, spec.name)
    status = read_status(run_dir)
    recorded = status.get("metadata", {}).get("spec_hash")
    if recorded != spec.content_hash():
        raise LocalRunError(
            f"{run_dir}: the spec changed since that run; resume only with the same spec (or start a new run)"
        )
    return run_dir, status.get("nodes", {})


def find_run(resume: str, runs_dir: Path, spec_name: str) -> Path:
    """`--resume` takes a run folder, a run id under runs_dir, or `last` (newest run of this spec)."""
    if resume == "last":
        runs = sorted(p for p in runs_dir.glob(f"{spec_name}-*") if (p / "status.json").is_file())
        if not runs:
            raise LocalRunError(f"--resume last: no earlier run of {spec_name} under {runs_dir}")
        return runs[-1]
    for candidate in (Path(resume), runs_dir / resume):
        if (candidate / "status.json").is_file():
            return candidate
    raise LocalRunError(f"--resume {resume}: no run folder with a status.json (looked in . and {runs_dir})")


def render_pipeline(spec: Any, run_dir: Path) -> Documents:
    """Render every document into the run folder and load the pipeline WorkflowTemplate to run."""
    from workflows.argo.common import PIPELINE, document_name
    from workflows.render import WORKFLOWS_DIR, render_to_dir

    written = render_to_dir(spec, run_dir / "rendered")
    workflows = [p for p in written if p.parent.name == WORKFLOWS_DIR]
    return load_documents(workflows, entry=document_name(spec, PIPELINE))


def local_secrets() -> tuple[dict[str, dict[str, str]], str]:
    """Secrets for `secretKeyRef`s from the local secrets file, and a hint naming that file."""
    path = Path(os.environ.get(SECRETS_ENV, str(DEFAULT_SECRETS))).expanduser()
    hint = f"add it to {path} as `<secret name>: {{<key>: <value>}}` (or point {SECRETS_ENV} at such a file)"
    if not path.is_file():
        return {}, hint
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise LocalRunError(f"{path}: expected `<secret name>: {{<key>: <value>}}` mappings")
    return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data.items()}, hint


def default_environment(images: Iterable[str]) -> LocalEnvironment:
    """Every stage image is this interpreter's environment; project tools are on PATH.

    The serving image runs the build stage on a cluster (TensorRT-LLM's tools); the local
    profile's backend needs none of them, so megapod's own interpreter stands in for it too."""
    secrets, hint = local_secrets()
    return LocalEnvironment(
        images=dict.fromkeys(images, Path(sys.executable)),
        path_dirs=[TOOLS_BIN] if TOOLS_BIN.is_dir() else [],
        secrets=secrets,
        secrets_hint=hint,
    )


def execute(
    documents: Documents,
    run_dir: Path,
    environment: LocalEnvironment,
    *,
    parameters: dict[str, str] | None = None,
    resume: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    console: Console | None = None,
    on_change: Callable[[Node], None] | None = None,
) -> int:
    """Run the documents' workflow in run_dir with a live node view; 0 when it succeeded."""
    console = console or Console(stderr=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    view = NodeView(f"{documents.name}  ({run_dir})", console)
    executor = Executor(
        documents,
        run_dir,
        environment,
        parameters=parameters,
        resume=resume,
        on_change=view.update if on_change is None else lambda node: (view.update(node), on_change(node)),
        metadata=metadata,
    )
    with view:
        phase = executor.run()
    for note in executor.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    summarize(executor, console)
    return 0 if phase == SUCCEEDED else EXIT_FAILED


def summarize(executor: Executor, console: Console) -> None:
    """The final lines: phase, duration, the end of failed tasks' logs, where artifacts are."""
    status = executor.status()
    color = "green" if executor.phase == SUCCEEDED else "red"
    console.print(
        f"[{color}]{executor.phase}[/{color}] in {format_duration(status['duration_s'])}: "
        f"{executor.run_dir / 'status.json'}",
        highlight=False,
    )
    for node in executor.nodes.values():
        if node.phase in (FAILED, ERROR):
            console.print(f"[red]{node.key}[/red]: {node.message}", highlight=False, soft_wrap=True)
            if node.log:
                log = executor.run_dir / node.log
                for line in log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]:
                    console.print(f"  | {line}", highlight=False, markup=False, soft_wrap=True)
                console.print(f"  log: {log}", highlight=False, soft_wrap=True)
        for name, path in node.artifacts.items():
            artifact = executor.run_dir / path
            pages = sorted(artifact.glob("*.html")) if artifact.is_dir() else []
            shown = pages[0] if pages else artifact
            console.print(f"artifact {node.key}/{name}: {shown}", highlight=False, soft_wrap=True)
