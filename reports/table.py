"""The tidy results table: one row per (run, point, metric, statistic), the same for every tool.

Columns (RESULT_COLUMNS): run_id, started_at, tool, tool_version, model, backend, tp, pp, nodes, gpus,
concurrency, isl, osl, point, metric, stat, value, unit. Server-side metrics from Prometheus are
rows too, named `server.<name>`. Per-GPU throughput (`output_token_throughput_per_gpu`) is derived
when the GPU count is known.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from reports.points import Point

if TYPE_CHECKING:
    from workflows.spec import Spec

RESULT_COLUMNS = [
    "run_id",
    "started_at",
    "tool",
    "tool_version",
    "model",
    "backend",
    "tp",
    "pp",
    "nodes",
    "gpus",
    "concurrency",
    "isl",
    "osl",
    "point",
    "metric",
    "stat",
    "value",
    "unit",
]
INT_COLUMNS = ("tp", "pp", "nodes", "gpus", "concurrency", "isl", "osl")
PER_GPU_SOURCE = "output_token_throughput"
PER_GPU_METRIC = "output_token_throughput_per_gpu"
SERVER_PREFIX = "server."


@dataclass(frozen=True)
class RunInfo:
    """What was benchmarked, once per run: identity and the deployment's shape."""

    run_id: str
    started_at: str  # ISO 8601, UTC
    model: str | None = None
    backend: str | None = None
    tp: int | None = None
    pp: int | None = None
    nodes: int | None = None
    gpus: int | None = None
    name: str | None = None  # the spec's deployment name

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON and the report's configuration table."""
        return asdict(self)


def utc_now() -> str:
    """Now as an ISO 8601 UTC timestamp with seconds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def is_iso_time(value: object) -> bool:
    """Whether `value` is an ISO 8601 time string (what history file names are made from)."""
    try:
        datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _metric_rows(point: Point) -> Iterator[tuple[str, str, float, str]]:
    if point.export is None:
        return
    for metric, stats in point.export.metrics.items():
        for stat, value in stats.stats.items():
            yield metric, stat, value, stats.unit


def _server_rows(point: Point) -> Iterator[tuple[str, str, float, str]]:
    for name, entry in (point.server_metrics.get("metrics") or {}).items():
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield (
                SERVER_PREFIX + name,
                str(entry.get("stat", "value")),
                float(value),
                str(entry.get("unit", "")),
            )


def _per_gpu_rows(point: Point, gpus: int | None) -> Iterator[tuple[str, str, float, str]]:
    if not gpus or point.export is None or PER_GPU_SOURCE not in point.export.metrics:
        return
    source = point.export.metrics[PER_GPU_SOURCE]
    for stat, value in source.stats.items():
        yield PER_GPU_METRIC, stat, value / gpus, f"{source.unit}/gpu"


def results_frame(run: RunInfo, points: Iterable[Point]) -> pd.DataFrame:
    """The tidy table for one run (only points that produced numbers contribute rows)."""
    records = []
    for point in points:
        common = {
            "run_id": run.run_id,
            "started_at": run.started_at,
            "tool": point.tool,
            "tool_version": point.tool_version,
            "model": run.model,
            "backend": run.backend,
            "tp": run.tp,
            "pp": run.pp,
            "nodes": run.nodes,
            "gpus": run.gpus,
            "concurrency": point.concurrency,
            "isl": point.isl,
            "osl": point.osl,
            "point": point.name,
        }
        rows = [*_metric_rows(point), *_per_gpu_rows(point, run.gpus), *_server_rows(point)]
        for metric, stat, value, unit in rows:
            records.append({**common, "metric": metric, "stat": stat, "value": value, "unit": unit})
    return normalise(pd.DataFrame.from_records(records, columns=RESULT_COLUMNS))


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order and dtypes, so tables from different runs concatenate cleanly."""
    frame = frame.reindex(columns=RESULT_COLUMNS)
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    for column in set(RESULT_COLUMNS) - set(INT_COLUMNS) - {"value"}:
        frame[column] = frame[column].astype("string")
    return frame.reset_index(drop=True)


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path) then rename over `path`, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """results.parquet and results.csv in out_dir."""
    parquet, csv = out_dir / "results.parquet", out_dir / "results.csv"
    atomic_write(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
    atomic_write(csv, lambda tmp: frame.to_csv(tmp, index=False))
    return [parquet, csv]


def pick(frame: pd.DataFrame, metric: str, stat: str) -> pd.DataFrame:
    """Rows of one metric/stat with columns concurrency, isl, osl, value (sorted by concurrency)."""
    rows = frame[(frame["metric"] == metric) & (frame["stat"] == stat)]
    return rows[["concurrency", "isl", "osl", "value", "unit"]].sort_values("concurrency")


def model_name(spec: Spec) -> str:
    """The model's name as the reference figures know it: hub repo, else the last path part."""
    parts = spec.model.source_parts
    if "hf_repo" in parts:
        return parts["hf_repo"]
    return (parts.get("prefix") or parts.get("path") or spec.model.source).rstrip("/").rsplit("/", 1)[-1]


def deployment_info(spec: Spec) -> dict[str, Any]:
    """The deployment's shape for results rows: one model instance (group) times the minimum replicas.

    GPUs are unknown (None) for the CPU backend, so no per-GPU throughput is derived there.
    """
    replicas = spec.serving.replicas.min
    on_gpus = spec.backend != "cpu-python"
    return {
        "name": spec.name,
        "model": model_name(spec),
        "backend": str(spec.backend),
        "tp": spec.build.tp,
        "pp": spec.build.pp,
        "nodes": spec.group_size * replicas,
        "gpus": spec.world_size * replicas if on_gpus else None,
    }
