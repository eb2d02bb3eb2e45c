"""Read genai-perf and aiperf summary exports (JSON preferred, CSV cross-checked) into one shape.

Both tools write `profile_export_<tool>.json`: a JSON object whose metric entries look like
`{"unit": "ms", "avg": .., "p50": .., ...}` (aiperf deliberately mirrors genai-perf), plus an
`input_config` object. Their CSVs hold the same numbers rounded to 2 decimals in several tables
separated by blank lines; genai-perf writes numbers >= 1000 as quoted "1,052.64".
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.errors import InputError

GENAI_PERF = "genai-perf"
AIPERF = "aiperf"
# Export file stems per tool: <stem>.json and <stem>.csv.
EXPORT_STEMS = {GENAI_PERF: "profile_export_genai_perf", AIPERF: "profile_export_aiperf"}

# The tools' shared metric keys; the report and history use exactly these names.
CANONICAL_METRICS = (
    "time_to_first_token",
    "inter_token_latency",
    "request_latency",
    "output_token_throughput",
    "output_token_throughput_per_user",
    "request_throughput",
    "output_sequence_length",
    "input_sequence_length",
    "request_count",
)
# Metrics that only a benchmark export has: a JSON without any of them is not one.
SIGNATURE_METRICS = ("request_throughput", "request_latency", "time_to_first_token")
STATS = ("avg", "min", "max", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "std")
# Both CSVs round to 2 decimals; allow that rounding (and a little float noise) when comparing.
CSV_ROUNDING = 0.005 * 1.01
UNIT_ALIASES = {"requests/sec": "requests/s", "tokens/sec": "tokens/s", "tokens/sec/user": "tokens/s/user"}


@dataclass(frozen=True)
class MetricStats:
    """One metric's statistics (avg, p50, ...) in one unit."""

    unit: str
    stats: Mapping[str, float]


@dataclass
class ToolExport:
    """One tool run's summary: metrics by canonical name, the tool's own config, and warnings."""

    tool: str
    path: Path
    metrics: dict[str, MetricStats]
    input_config: dict[str, Any] = field(default_factory=dict)
    tool_version: str | None = None
    warnings: list[str] = field(default_factory=list)


def tool_for_file(path: Path) -> str | None:
    """The tool that writes a file of this name, or None for any other file."""
    for tool, stem in EXPORT_STEMS.items():
        if path.stem == stem and path.suffix in (".json", ".csv"):
            return tool
    return None


def canonical_unit(unit: str) -> str:
    """One spelling per unit across tools (genai-perf says requests/sec, aiperf requests/sec too)."""
    unit = unit.strip()
    return UNIT_ALIASES.get(unit, unit)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text (a binary or foreign file?)") from None
    if not text.strip():
        raise InputError(path, "empty file (the benchmark tool did not finish writing it?)")
    return text


def metrics_from_json(data: Mapping[str, Any]) -> dict[str, MetricStats]:
    """Every entry that looks like a metric: a mapping with a unit and numeric statistics."""
    metrics: dict[str, MetricStats] = {}
    for name, entry in data.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("unit"), str):
            continue
        stats = {stat: num for stat in STATS if (num := _number(entry.get(stat))) is not None}
        if stats:
            metrics[name] = MetricStats(canonical_unit(entry["unit"]), stats)
    return metrics


def parse_json_export(path: Path, tool: str) -> ToolExport:
    """Read `profile_export_<tool>.json`; raise InputError naming the file if it is not one."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            path, f"not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); truncated?"
        ) from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object of metrics, got a {type(data).__name__}")
    metrics = metrics_from_json(data)
    if not any(name in metrics for name in SIGNATURE_METRICS):
        raise InputError(
            path, f"no benchmark metrics ({', '.join(SIGNATURE_METRICS)}): not a {tool} summary export"
        )
    config = data.get("input_config")
    export = ToolExport(tool, path, metrics, config if isinstance(config, dict) else {})
    export.tool_version = data.get("aiperf_version") if tool == AIPERF else None
    if data.get("is_complete") is False or data.get("was_cancelled") is True:
        reason = data.get("incomplete_reason") or "cancelled"
        export.warnings.append(f"{path}: the tool reports an incomplete run ({reason})")
    return export


_NAME_WITH_UNIT = re.compile(r"^(?P<name>.*?)\s*\((?P<unit>[^()]*)\)$")


def _csv_metric_name(cell: str) -> tuple[str, str]:
    """'Time To First Token (ms)' -> ('time_to_first_token', 'ms')."""
    match = _NAME_WITH_UNIT.match(cell.strip())
    name, unit = (match["name"], match["unit"]) if match else (cell.strip(), "")
    return re.sub(r"[\s-]+", "_", name.strip().lower()), canonical_unit(unit)


def _csv_number(cell: str) -> float | None:
    cell = cell.strip().replace(",", "")
    try:
        value = float(cell)
    except ValueError:
        return None  # "", "N/A"
    return value if math.isfinite(value) else None


def _csv_sections(rows: Iterable[list[str]]) -> list[list[list[str]]]:
    sections: list[list[list[str]]] = [[]]
    for row in rows:
        if not any(cell.strip() for cell in row):
            if sections[-1]:
                sections.append([])
            continue
        sections[-1].append(row)
    return [section for section in sections if section]


def parse_csv_export(path: Path, tool: str) -> dict[str, MetricStats]:
    """Read the metric tables of `profile_export_<tool>.csv` (blank-line separated sections).

    Tables whose header starts with "Metric" are read: a ["Metric", "Value"] table gives `avg`,
    a ["Metric", "avg", "min", ...] table gives each named statistic. Other sections (GPU
    telemetry, ...) are skipped.
    """
    text = _read_text(path)
    metrics: dict[str, MetricStats] = {}
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(path, f"not valid CSV ({exc})") from None
    for section in _csv_sections(rows):
        header = [cell.strip() for cell in section[0]]
        if not header or header[0] != "Metric":
            continue
        columns = ["avg"] if header[1:] == ["Value"] else header[1:]
        for row in section[1:]:
            name, unit = _csv_metric_name(row[0])
            stats = {
                stat: num
                for stat, cell in zip(columns, row[1:], strict=False)
                if stat in STATS and (num := _csv_number(cell)) is not None
            }
            if stats:
                metrics[name] = MetricStats(unit, stats)
    if not any(name in metrics for name in SIGNATURE_METRICS):
        raise InputError(
            path, f"no metric table with {', '.join(SIGNATURE_METRICS)}: not a {tool} CSV export (truncated?)"
        )
    return metrics


def cross_check(
    json_metrics: Mapping[str, MetricStats], csv_metrics: Mapping[str, MetricStats], csv_path: Path
) -> list[str]:
    """Where the CSV disagrees with the JSON beyond its 2-decimal rounding, one line each."""
    problems = []
    for name, from_csv in csv_metrics.items():
        from_json = json_metrics.get(name)
        if from_json is None:
            continue
        for stat, csv_value in from_csv.stats.items():
            json_value = from_json.stats.get(stat)
            if json_value is not None and abs(json_value - csv_value) > CSV_ROUNDING + 1e-9 * abs(json_value):
                problems.append(
                    f"{csv_path}: {name} {stat} is {csv_value:g} but the JSON says {json_value:g}"
                )
    return problems


def read_tool_export(json_path: Path | None, csv_path: Path | None, tool: str) -> ToolExport:
    """The export of one tool run: the JSON when it is readable, else the CSV; cross-checked."""
    json_error: InputError | None = None
    export = None
    if json_path is not None:
        try:
            export = parse_json_export(json_path, tool)
        except InputError as exc:
            json_error = exc
    if csv_path is None:
        if export is None:
            raise json_error or InputError("?", "no export file")
        return export
    try:
        csv_metrics = parse_csv_export(csv_path, tool)
    except InputError as csv_error:
        if export is None:
            raise json_error or csv_error from None
        export.warnings.append(str(csv_error))
        return export
    if export is None:
        export = ToolExport(tool, csv_path, csv_metrics)
        if json_error is not None:
            export.warnings.append(f"{json_error} (using the CSV instead)")
        return export
    export.warnings.extend(cross_check(export.metrics, csv_metrics, csv_path))
    return export
