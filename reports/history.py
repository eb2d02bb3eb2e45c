"""Run history: one Parquet file per run in a directory or under an s3:// prefix, and regressions.

Each run is written under a name of its own (`<UTC time>_<run id>_<random>.parquet`), created
without overwriting, so concurrent cron runs never lose each other's results and nothing needs a
lock. A baseline is the previous comparable run (same model, backend, tp, pp and tool) or a pinned
run id; a regression is a relative change beyond the per-metric threshold from the spec.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from reports.errors import ReportError
from reports.exports import STATS
from reports.table import RunInfo, normalise

SUFFIX = ".parquet"
COMPARABLE = ("model", "backend", "tp", "pp", "tool")
# How many recent runs to open when looking for a comparable previous run.
MAX_CANDIDATES = 50
POINT_COLUMNS = ["concurrency", "isl", "osl"]


class HistoryStore(Protocol):
    """Where run files live: list names, read one, create one (never overwriting)."""

    location: str

    def names(self) -> list[str]: ...
    def read(self, name: str) -> bytes: ...
    def create(self, name: str, data: bytes) -> None: ...


@dataclass
class DirHistory:
    """History in a local (or mounted RWX) directory."""

    root: Path

    @property
    def location(self) -> str:
        return str(self.root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.suffix == SUFFIX and not p.name.startswith(".")
        )

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def create(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        try:
            os.link(tmp, self.root / name)  # fails instead of overwriting an existing run
        finally:
            tmp.unlink(missing_ok=True)


@dataclass
class S3History:
    """History under s3://bucket/prefix/ (any S3-compatible store through boto3)."""

    bucket: str
    prefix: str
    client: Any

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def names(self) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.prefix}/" if self.prefix else ""
        names = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(start) :]
                if "/" not in name and name.endswith(SUFFIX):
                    names.append(name)
        return sorted(names)

    def read(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()

    def create(self, name: str, data: bytes) -> None:
        # The name carries a random part, so two writers can never pick the same key.
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)


S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")


# An unreachable S3 endpoint fails in seconds, not after botocore's default minute per attempt.
S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 3}}


def open_history(
    location: str, *, endpoint_url: str | None = None, region: str | None = None
) -> HistoryStore:
    """A usable history store for a directory path or an s3://bucket/prefix URI; ReportError
    (one line) when it cannot be listed or created, before anything is written."""
    if location.startswith("s3://"):
        match = S3_URI.match(location)
        if not match:
            raise ReportError(f"history {location!r} is not a valid s3://bucket/prefix URI")
        import boto3  # only S3 histories need it
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=Config(**S3_TIMEOUTS)
        )
        store: HistoryStore = S3History(match["bucket"], (match["prefix"] or "").strip("/"), client)
    else:
        store = DirHistory(Path(location))
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReportError(
                f"history {location}: cannot use it as a directory ({exc.strerror or exc}); "
                "use a writable directory or s3://bucket/prefix"
            ) from None
    try:
        store.names()
    except Exception as exc:  # botocore's many connection/credential/client errors
        raise ReportError(f"history {store.location}: cannot list it ({one_line(exc)})") from None
    return store


def one_line(exc: BaseException) -> str:
    """An exception's first line, or its type when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "run"


def _compact_time(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y%m%dT%H%M%SZ")


def run_file_name(run: RunInfo) -> str:
    """`<UTC time>_<run id>_<random>.parquet`: sorts by time, unique per writer."""
    return f"{_compact_time(run.started_at)}_{_safe(run.run_id)}_{uuid.uuid4().hex[:12]}{SUFFIX}"


def parse_run_file_name(name: str) -> tuple[str, str] | None:
    """(compact time, run id) from a history file name, or None for other files."""
    parts = name.removesuffix(SUFFIX).split("_")
    return (parts[0], parts[1]) if len(parts) == 3 else None


def append_run(store: HistoryStore, run: RunInfo, frame: pd.DataFrame) -> str:
    """Add one run's table to the history; returns the new file's name."""
    buffer = io.BytesIO()
    normalise(frame).to_parquet(buffer, index=False)
    name = run_file_name(run)
    store.create(name, buffer.getvalue())
    return name


def read_run(store: HistoryStore, name: str) -> pd.DataFrame:
    """One run's table from the history."""
    try:
        return normalise(pd.read_parquet(io.BytesIO(store.read(name))))
    except Exception as exc:  # pyarrow, pandas and the store each raise their own errors
        problem = one_line(exc)
        raise ReportError(f"{store.location}/{name}: not a readable results table ({problem})") from None


def _identity(frame: pd.DataFrame) -> tuple:
    if frame.empty:
        return ()
    first = frame.iloc[0]
    return tuple(None if pd.isna(first[c]) else str(first[c]) for c in COMPARABLE)


def find_baseline(
    store: HistoryStore,
    current: pd.DataFrame,
    run: RunInfo,
    baseline: str,
    skipped: list[str] | None = None,
) -> tuple[str, pd.DataFrame] | None:
    """The baseline run's (file name, table): 'previous' comparable run, or the pinned run id.

    Looking for the previous run, an unreadable history file is skipped (its error appended to
    `skipped`): one corrupt file must not fail every later report. A pinned one is an error."""
    entries = [(parsed, name) for name in store.names() if (parsed := parse_run_file_name(name))]
    if baseline != "previous":
        pinned = [name for (_, run_id), name in entries if run_id == _safe(baseline)]
        if not pinned:
            known = ", ".join(sorted({run_id for (_, run_id), _ in entries})[-10:]) or "none"
            raise ReportError(
                f"baseline run {baseline!r} is not in history {store.location} (runs there: {known})"
            )
        return pinned[-1], read_run(store, pinned[-1])
    now, me = _compact_time(run.started_at), _safe(run.run_id)
    earlier = [name for (when, run_id), name in entries if when <= now and run_id != me]
    wanted = _identity(current)
    for name in reversed(earlier[-MAX_CANDIDATES:]):
        try:
            frame = read_run(store, name)
        except ReportError as exc:
            if skipped is not None:
                skipped.append(f"{exc}; skipped")
            continue
        if _identity(frame) == wanted:
            return name, frame
    return None


def parse_thresholds(thresholds: Mapping[str, float]) -> dict[tuple[str, str], float]:
    """{'time_to_first_token_p95': 0.1, 'output_token_throughput': -0.05} -> {(metric, stat): limit}."""
    parsed = {}
    for key, limit in thresholds.items():
        metric, _, stat = key.rpartition("_")
        if stat in STATS and metric:
            parsed[(metric, stat)] = float(limit)
        else:
            parsed[(key, "avg")] = float(limit)
    return parsed


def compare(current: pd.DataFrame, baseline: pd.DataFrame, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """Per point and thresholded metric: baseline, current, relative change, limit, regressed."""
    limits = parse_thresholds(thresholds)
    columns = [
        *POINT_COLUMNS,
        "metric",
        "stat",
        "unit",
        "baseline",
        "current",
        "change",
        "limit",
        "regressed",
    ]
    wanted = pd.DataFrame([{"metric": m, "stat": s, "limit": v} for (m, s), v in limits.items()])
    if wanted.empty or current.empty or baseline.empty:
        return pd.DataFrame(columns=columns)
    keys = [*POINT_COLUMNS, "metric", "stat"]
    now = current[[*keys, "value", "unit"]].rename(columns={"value": "current"})
    before = baseline[[*keys, "value"]].rename(columns={"value": "baseline"})
    joined = now.merge(before, on=keys).merge(wanted, on=["metric", "stat"])
    joined = joined[joined["baseline"] != 0].copy()
    joined["change"] = (joined["current"] - joined["baseline"]) / joined["baseline"]
    worse_down = (joined["limit"] < 0) & (joined["change"] < joined["limit"])
    worse_up = (joined["limit"] > 0) & (joined["change"] > joined["limit"])
    joined["regressed"] = worse_down | worse_up
    return joined[columns].sort_values([*POINT_COLUMNS, "metric"]).reset_index(drop=True)
