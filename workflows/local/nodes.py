"""Nodes of a local run (one per DAG task, like the Argo UI's node list) and the run's status file."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workflows.local.expressions import DONE_PHASES, PENDING


@dataclass
class Node:
    """One task of the run: its phase, timing, attempts and outputs."""

    key: str  # "deploy", nested: "exit-handler.teardown", exit hook: "onExit"
    template: str
    phase: str = PENDING
    message: str = ""
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    exit_code: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)  # output parameters
    artifacts: dict[str, str] = field(default_factory=dict)  # output artifact -> path in the run folder
    log: str | None = None  # path of the task's log, relative to the run folder
    resumed: bool = False

    @property
    def done(self) -> bool:
        return self.phase in DONE_PHASES

    def duration(self, now: float | None = None) -> float | None:
        """Seconds from start to finish (or to now while running); None before it starts."""
        if self.started is None:
            return None
        return (self.finished or now or time.time()) - self.started

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_s"] = None if self.started is None else round(self.duration() or 0.0, 3)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def iso(timestamp: float | None) -> str | None:
    """RFC 3339 UTC time, as Argo writes timestamps."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_status(run_dir: Path) -> dict[str, Any]:
    """The status.json of an earlier run (for --resume)."""
    path = run_dir / "status.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir}: no status.json; is this a megapod run folder?") from None
