"""The timeline: sampler rows and load-generator records as parquet tables.

timeline.parquet: tidy rows `time_s, series, group, value, detail, simulated` (time_s since load
start; `simulated` true for rows of the HPA simulator, written when no cluster was there to sample).
requests.parquet: one row per request (steps.autoscale.loadgen.RequestRecord + start_time epoch).
Both are written atomically (a temp file renamed into place), so a reader never sees half a table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

TIMELINE_COLUMNS = ["time_s", "series", "group", "value", "detail", "simulated"]
REQUEST_COLUMNS = ["start_s", "stage", "worker", "ttft_s", "end_s", "tokens", "error", "group", "start_time"]


def timeline_frame(rows: list[dict], lws_name: str | None = None) -> pd.DataFrame:
    """Rows as a DataFrame; Prometheus leader labels `<lws>-<index>` become the group index."""
    frame = pd.DataFrame(rows, columns=TIMELINE_COLUMNS)
    frame["simulated"] = frame["simulated"].eq(True)  # rows without the flag are measured
    if lws_name and not frame.empty:
        leader = re.compile(rf"^{re.escape(lws_name)}-(\d+)$")
        frame["group"] = frame["group"].map(lambda g: m.group(1) if (m := leader.match(str(g))) else g)
    return frame.astype({"time_s": float, "series": str, "group": str, "value": float, "detail": str,
                         "simulated": bool})


def requests_frame(rows: list[dict]) -> pd.DataFrame:
    """Load-generator records as a DataFrame with stable column types."""
    frame = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    return frame.astype({"start_s": float, "ttft_s": float, "end_s": float, "tokens": "int64",
                         "worker": "int64", "start_time": float})


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` to `path` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def series(frame: pd.DataFrame, name: str, group: str | None = None) -> pd.Series:
    """Values of one series over time (summed over groups unless `group` is given)."""
    picked = frame[frame["series"] == name]
    if group is not None:
        picked = picked[picked["group"] == group]
    return picked.groupby("time_s")["value"].sum(min_count=1).sort_index()
