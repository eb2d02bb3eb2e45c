"""Run the sweep: one bounded tool run per point, a point.json each, failures recorded, never fatal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reports.points import POINT_FILE, PROMETHEUS_FILE, RUN_FILE
from reports.table import atomic_write, deployment_info
from steps.benchmark import prometheus
from steps.benchmark.tools import (
    COMMANDS,
    GENAI_PERF,
    WARMUPS,
    PointPlan,
    Target,
    plan_sweep,
    tool_environment,
    tool_version,
)
from workflows.spec import Spec

LOG_FILE = "tool.log"
WARMUP_LOG_FILE = "warmup.log"
ERROR_LINES = 12
KILL_GRACE_S = 10
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EXPORT_GLOB = "profile_export_*.json"

Logger = Callable[[str], None]


@dataclass
class ToolRun:
    """How one tool process ended."""

    returncode: int | None  # None: killed at the time limit
    error: str | None = None


@dataclass
class SweepResult:
    """Everything the sweep did (also written to run.json)."""

    run_id: str
    points: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for p in self.points if p["status"] != "ok")


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def log_tail(path: Path, lines: int = ERROR_LINES) -> str:
    """The last non-empty lines of a tool log, without terminal colours."""
    text = ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run_tool(
    command: list[str], *, cwd: Path, log_path: Path, timeout_s: float, env: dict[str, str]
) -> ToolRun:
    """Run one client process in its own session, output to log_path; kill its group at the limit."""
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return ToolRun(returncode=127, error=f"cannot start {command[0]}: {exc}")
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return ToolRun(None, f"timed out after {timeout_s:g}s (point_timeout_s); killed")
    if process.returncode != 0:
        return ToolRun(process.returncode, f"exit code {process.returncode}: {log_tail(log_path)}")
    return ToolRun(0)


def _kill_group(process: subprocess.Popen) -> None:
    # The tool was started in its own session: its group holds it and its workers only.
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


Runner = Callable[..., ToolRun]


@dataclass(frozen=True)
class Sweep:
    """What every point of one sweep shares."""

    spec: Spec
    run_id: str
    target: Target
    tokenizer: Path
    out: Path
    version: str | None
    env: dict[str, str]
    runner: Runner = run_tool

    @property
    def tool(self) -> str:
        return self.spec.benchmark.tool


def _point_meta(sweep: Sweep, point: PointPlan, command: list[str]) -> dict[str, Any]:
    bench = sweep.spec.benchmark
    return {
        "schema": "megapod.benchmark.point/1",
        "run_id": sweep.run_id,
        "point": point.name,
        "tool": sweep.tool,
        "tool_version": sweep.version,
        "concurrency": point.concurrency,
        "isl": point.isl,
        "osl": point.osl,
        "request_count": bench.request_count,
        "warmup_requests": bench.warmup_requests,
        "streaming": bench.streaming,
        "time_limit_s": bench.point_timeout_s,
        "url": sweep.target.grpc_url if sweep.tool == GENAI_PERF else sweep.target.http_url,
        "model": sweep.target.model,
        "deployment": deployment_info(sweep.spec),
        "command": command,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def _warm_up(sweep: Sweep, point: PointPlan, point_dir: Path) -> ToolRun:
    """The tool's separate warm-up run, if it needs one; its artifacts are thrown away."""
    with tempfile.TemporaryDirectory(prefix="warmup-", dir=point_dir) as scratch:
        warmup = WARMUPS[sweep.tool]
        command = warmup(sweep.spec.benchmark, point, sweep.target, sweep.tokenizer, Path(scratch))
        if command is None:
            return ToolRun(0)
        outcome = sweep.runner(
            command,
            cwd=Path(scratch),
            log_path=point_dir / WARMUP_LOG_FILE,
            timeout_s=sweep.spec.benchmark.point_timeout_s,
            env=tool_environment(sweep.tool, sweep.env),
        )
    return outcome if outcome.error is None else ToolRun(outcome.returncode, f"warm-up: {outcome.error}")


def run_point(sweep: Sweep, point: PointPlan) -> dict[str, Any]:
    """Run one point and write its point.json; a failure is recorded, not raised."""
    point_dir = sweep.out / point.name
    point_dir.mkdir(parents=True, exist_ok=True)
    command = COMMANDS[sweep.tool](sweep.spec.benchmark, point, sweep.target, sweep.tokenizer, point_dir)
    meta = _point_meta(sweep, point, command)
    outcome = _warm_up(sweep, point, point_dir)
    started = time.time()
    if outcome.error is None:
        outcome = sweep.runner(
            command,
            cwd=point_dir,
            log_path=point_dir / LOG_FILE,
            timeout_s=sweep.spec.benchmark.point_timeout_s,
            env=tool_environment(sweep.tool, sweep.env),
        )
    ended = time.time()
    if outcome.returncode == 0 and not any(point_dir.rglob(EXPORT_GLOB)):
        tail = log_tail(point_dir / LOG_FILE)
        outcome = ToolRun(0, f"{sweep.tool} exited 0 but wrote no {EXPORT_GLOB}: {tail}")
    meta.update(
        {
            "started_at": iso(started),
            "ended_at": iso(ended),
            "start_unix": started,
            "end_unix": ended,
            "duration_s": round(ended - started, 3),
            "exit_code": outcome.returncode,
            "status": "ok" if outcome.error is None else "failed",
            "error": outcome.error,
        }
    )
    write_json(point_dir / POINT_FILE, meta)
    return meta


def attach_server_metrics(out: Path, points: list[dict[str, Any]], prometheus_url: str) -> None:
    """prometheus.json beside each point.json, queried over that point's window."""
    for meta in points:
        data = prometheus.snapshot(prometheus_url, meta["start_unix"], meta["end_unix"])
        write_json(out / meta["point"] / PROMETHEUS_FILE, data)


def run_sweep(
    spec: Spec,
    target: Target,
    tokenizer: Path,
    out: Path,
    *,
    prometheus_url: str | None = None,
    settle_s: float = 0.0,
    log: Logger = print,
    env: dict[str, str] | None = None,
    runner: Runner = run_tool,
) -> SweepResult:
    """Every point of the spec's sweep in order; run.json at the end lists them all."""
    started = time.time()
    run_id = f"{spec.name}-{datetime.fromtimestamp(started, UTC):%Y%m%dT%H%M%SZ}"
    version = tool_version(spec.benchmark.tool)
    sweep = Sweep(
        spec, run_id, target, tokenizer, out, version, dict(os.environ if env is None else env), runner
    )
    plan = plan_sweep(spec.benchmark)
    log(f"benchmark: {sweep.tool} {version or '(version unknown)'}, {len(plan)} point(s) -> {out}")
    result = SweepResult(run_id)
    for index, point in enumerate(plan, 1):
        meta = run_point(sweep, point)
        result.points.append(meta)
        status = "ok" if meta["status"] == "ok" else f"FAILED: {meta['error'].splitlines()[0]}"
        log(f"benchmark: [{index}/{len(plan)}] {point.name} {meta['duration_s']:.1f}s {status}")
    if prometheus_url:
        time.sleep(settle_s)  # let Prometheus scrape the last point's final samples
        attach_server_metrics(out, result.points, prometheus_url)
        log(f"benchmark: server metrics from {prometheus_url} for {len(result.points)} point(s)")
    write_json(out / RUN_FILE, run_record(sweep, result, started, prometheus_url))
    return result


def run_record(
    sweep: Sweep, result: SweepResult, started: float, prometheus_url: str | None
) -> dict[str, Any]:
    """run.json: the sweep's identity, deployment, settings and each point's status."""
    return {
        "schema": "megapod.benchmark.run/1",
        "run_id": sweep.run_id,
        "tool": sweep.tool,
        "tool_version": sweep.version,
        "started_at": iso(started),
        "ended_at": iso(time.time()),
        "deployment": deployment_info(sweep.spec),
        "benchmark": sweep.spec.benchmark.model_dump(mode="json"),
        "url": sweep.target.http_url,
        "grpc_url": sweep.target.grpc_url,
        "prometheus": prometheus_url,
        "points": [{"point": p["point"], "status": p["status"]} for p in result.points],
    }
