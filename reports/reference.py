"""Published reference figures (reports/reference.json) and how this run compares to them.

The figures are shipped as package data because the report runs in a container that only has the
project itself. An entry applies when its `model_match` appears in the run's model name
(case-insensitive); with `concurrency: null` it is a best-case figure compared with the best
value over the sweep's concurrency at that ISL/OSL.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

REFERENCE_FILE = Path(__file__).with_name("reference.json")
COLUMNS = ["label", "setup", "point", "metric", "stat", "unit", "reference", "measured", "ratio", "better"]


@cache
def reference_entries() -> tuple[dict[str, Any], ...]:
    """Every entry of reference.json."""
    return tuple(json.loads(REFERENCE_FILE.read_text())["entries"])


def matching_entries(model: str | None) -> list[dict[str, Any]]:
    """Entries that apply to this model name."""
    name = (model or "").lower()
    return [entry for entry in reference_entries() if name and entry["model_match"] in name]


def _measured(results: pd.DataFrame, entry: dict[str, Any], metric: dict[str, Any]) -> float | None:
    rows = results[
        (results["metric"] == metric["metric"])
        & (results["stat"] == metric["stat"])
        & (results["isl"] == entry["isl"])
        & (results["osl"] == entry["osl"])
    ]
    if entry["concurrency"] is not None:
        rows = rows[rows["concurrency"] == entry["concurrency"]]
    if rows.empty:
        return None
    values = rows["value"]
    best = values.max() if metric["better"] == "higher" else values.min()
    return float(best)


def compare_to_reference(results: pd.DataFrame, model: str | None) -> pd.DataFrame:
    """One row per applicable reference figure: reference, measured (or NaN), measured/reference."""
    rows = []
    for entry in matching_entries(model):
        load = f"c{entry['concurrency']}" if entry["concurrency"] is not None else "best c"
        for metric in entry["metrics"]:
            measured = _measured(results, entry, metric)
            rows.append(
                {
                    "label": entry["label"],
                    "setup": entry["setup"],
                    "point": f"{load} {entry['isl']}/{entry['osl']}",
                    "metric": metric["metric"],
                    "stat": metric["stat"],
                    "unit": metric["unit"],
                    "reference": float(metric["value"]),
                    "measured": measured,
                    "ratio": None if measured is None else measured / float(metric["value"]),
                    "better": metric["better"],
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)
