"""Find every sweep point under an input directory: its point.json, its tool export, its server metrics.

A point is the nearest directory holding a `point.json` (written by steps.benchmark); exports found
outside any such directory form a point of their own, identified by the tool's `input_config`.
One unreadable file makes its point "unreadable" with the error naming the file; other points
are unaffected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.errors import InputError
from reports.exports import EXPORT_STEMS, ToolExport, read_tool_export, tool_for_file

POINT_FILE = "point.json"
PROMETHEUS_FILE = "prometheus.json"
RUN_FILE = "run.json"
# Load and lengths are whole numbers from 1 to this (the results table stores them as int64;
# anything larger is no benchmark setting but a broken file).
MAX_LOAD = 2**31 - 1

# Where each tool's input_config keeps the load and the sequence lengths (first match wins).
CONFIG_PATHS: dict[str, dict[str, Sequence[str]]] = {
    "concurrency": {
        "genai-perf": ("perf_analyzer.stimulus.concurrency",),
        "aiperf": ("phases.profiling.concurrency",),
    },
    "isl": {
        "genai-perf": ("input.synthetic_tokens.mean",),
        "aiperf": ("datasets.main.prompts.isl.mean",),
    },
    "osl": {
        "genai-perf": ("input.output_tokens.mean",),
        "aiperf": ("datasets.main.prompts.osl.mean",),
    },
}


@dataclass
class Point:
    """One sweep point: where it lives, its load and lengths, its status and what was measured."""

    directory: Path
    name: str
    tool: str | None = None
    tool_version: str | None = None
    concurrency: int | None = None
    isl: int | None = None
    osl: int | None = None
    status: str = "ok"  # ok | failed (the tool failed) | unreadable (its files are not usable)
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    export: ToolExport | None = None
    server_metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int, int]:
        """Sort/join key: (isl, osl, concurrency), unknowns first."""
        return (self.isl or 0, self.osl or 0, self.concurrency or 0)

    @property
    def label(self) -> str:
        """Short human label, e.g. 'c4 128/64'."""
        return f"c{self.concurrency} {self.isl}/{self.osl}"


def dotted(config: Mapping[str, Any], path: str) -> Any:
    """config['a']['b'] for 'a.b', or None when any step is missing.

    In a list, a step picks the item whose "name" equals it (aiperf keeps `phases` and `datasets`
    as lists of named items: `phases.profiling.concurrency`).
    """
    node: Any = config
    for part in path.split("."):
        if isinstance(node, list):
            node = next(
                (item for item in node if isinstance(item, Mapping) and item.get("name") == part), None
            )
        elif isinstance(node, Mapping):
            node = node.get(part)
        else:
            return None
        if node is None:
            return None
    return node


def load_value(value: Any, what: str, source: Path) -> int:
    """A concurrency / ISL / OSL as an int; InputError naming the file for NaN, 1e30, -3, true..."""
    whole = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if not whole or not 1 <= value <= MAX_LOAD:
        raise InputError(source, f"{what} {value!r} is not a whole number from 1 to {MAX_LOAD}")
    return int(value)


def _from_config(export: ToolExport, what: str) -> int | None:
    for path in CONFIG_PATHS[what].get(export.tool, ()):
        value = dotted(export.input_config, path)
        if value is not None:
            return load_value(value, what, export.path)
    return None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a small metadata file; InputError naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    if not text.strip():
        raise InputError(path, "empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON at line {exc.lineno} ({exc.msg}); truncated?") from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, got a {type(data).__name__}")
    return data


def _owner(export_file: Path, root: Path, point_dirs: set[Path], export_dirs: set[Path]) -> Path:
    """The point directory an export belongs to: the nearest point.json directory above it, else
    the nearest directory above it holding an export itself (aiperf's phases/<phase>/ copies), else
    its own directory."""
    ancestors = [p for p in export_file.parents if p == root or root in p.parents]
    for parent in ancestors:
        if parent in point_dirs:
            return parent
    for parent in ancestors[1:]:
        if parent in export_dirs:
            return parent
    return export_file.parent


def _group_exports(root: Path, point_dirs: set[Path]) -> dict[Path, dict[str, dict[str, Path]]]:
    """owner dir -> tool -> {'.json': path, '.csv': path}, both from the shallowest directory.

    aiperf also writes per-phase copies under phases/<phase>/; the top-level export is the
    profiling phase's, and warm-up numbers must never be reported.
    """
    exports = [
        (path, tool)
        for stem in EXPORT_STEMS.values()
        for path in root.rglob(f"{stem}.*")
        if (tool := tool_for_file(path)) and path.is_file() and "warmup" not in path.relative_to(root).parts
    ]
    export_dirs = {path.parent for path, _ in exports}
    found: dict[tuple[Path, str], dict[Path, dict[str, Path]]] = {}
    for path, tool in exports:
        owner = _owner(path, root, point_dirs, export_dirs)
        found.setdefault((owner, tool), {}).setdefault(path.parent, {})[path.suffix] = path
    groups: dict[Path, dict[str, dict[str, Path]]] = {}
    for (owner, tool), by_dir in sorted(found.items()):
        shallowest = min(by_dir, key=lambda d: (len(d.parts), str(d)))
        groups.setdefault(owner, {})[tool] = by_dir[shallowest]
    return groups


def _apply_meta(point: Point, meta: Mapping[str, Any]) -> None:
    point.meta = dict(meta)
    point.tool = meta.get("tool") or point.tool
    point.tool_version = meta.get("tool_version") or point.tool_version
    for what in ("concurrency", "isl", "osl"):
        if meta.get(what) is not None:
            setattr(point, what, load_value(meta[what], what, point.directory / POINT_FILE))
    if meta.get("status") == "failed":
        point.status = "failed"
        point.error = str(meta.get("error") or "the benchmark tool failed (no error recorded)")


def _apply_export(point: Point, files: Mapping[str, Mapping[str, Path]]) -> None:
    if len(files) > 1:
        point.warnings.append(
            f"{point.directory}: exports of several tools ({', '.join(files)}); using {next(iter(files))}"
        )
    tool, paths = next(iter(files.items()))
    export = read_tool_export(paths.get(".json"), paths.get(".csv"), tool)
    point.export = export
    point.tool = point.tool or tool
    point.tool_version = point.tool_version or export.tool_version
    point.warnings.extend(export.warnings)
    for what in ("concurrency", "isl", "osl"):
        if getattr(point, what) is None:
            setattr(point, what, _from_config(export, what))


def _load_point(directory: Path, root: Path, files: Mapping[str, Mapping[str, Path]]) -> Point:
    point = Point(directory=directory, name=str(directory.relative_to(root)) if directory != root else ".")
    meta_file = directory / POINT_FILE
    try:
        if meta_file.is_file():
            _apply_meta(point, read_json_object(meta_file))
        if (directory / PROMETHEUS_FILE).is_file():
            point.server_metrics = read_json_object(directory / PROMETHEUS_FILE)
        if point.status == "failed":
            return point
        if not files:
            raise InputError(
                meta_file,
                f"says the point ran but no {' or '.join(EXPORT_STEMS.values())} .json/.csv is beside it",
            )
        _apply_export(point, files)
        missing = [what for what in ("concurrency", "isl", "osl") if getattr(point, what) is None]
        if missing:
            raise InputError(
                point.export.path if point.export else directory,
                f"cannot tell {'/'.join(missing)}: no point.json and not in the tool's input_config",
            )
    except InputError as exc:
        point.status, point.error, point.export = "unreadable", str(exc), None
    return point


def discover_points(root: Path) -> list[Point]:
    """Every point under `root`, sorted by (isl, osl, concurrency); unreadable ones included."""
    point_dirs = {path.parent for path in root.rglob(POINT_FILE) if path.is_file()}
    groups = _group_exports(root, point_dirs)
    owners = sorted(point_dirs | set(groups))
    points = [_load_point(owner, root, groups.get(owner, {})) for owner in owners]
    return sorted(points, key=lambda p: (p.key, p.name))


def read_run_meta(root: Path) -> dict[str, Any]:
    """The benchmark run's run.json (written by steps.benchmark) when present, else {}."""
    path = root / RUN_FILE
    return read_json_object(path) if path.is_file() else {}
