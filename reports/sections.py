"""The report is a list of sections; each is built from one ReportContext by a plain function.

Contributed sections (e.g. reports/autoscaling.py, see /work/notes/report-autoscale-interface.md)
expose `build_section(ctx) -> Section | None` and are imported lazily by `plugin_sections`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from reports.errors import InputError

if TYPE_CHECKING:
    from reports.points import Point
    from reports.table import RunInfo
    from workflows.spec import Spec

# Modules that may contribute one section each, in report order (after the benchmark sections).
PLUGIN_MODULES = ("reports.autoscaling",)
AUTOSCALE_MARKERS = ("milestones.json", "timeline.parquet")


@dataclass(frozen=True)
class Section:
    """One part of the report: an HTML fragment (no scripts, images inline) and its Markdown."""

    id: str
    title: str
    html: str
    markdown: str = ""
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportContext:
    """Everything a section may draw on."""

    input_dir: Path
    out_dir: Path
    autoscale_dir: Path | None
    spec: Spec | None
    run_id: str
    results: pd.DataFrame
    run: RunInfo | None = None
    run_meta: dict[str, Any] = field(default_factory=dict)
    points: tuple[Point, ...] = ()
    comparison: pd.DataFrame | None = None  # history.compare() output, None without a baseline
    baseline_name: str | None = None
    history_location: str | None = None
    history_note: str | None = None
    problems: tuple[str, ...] = ()
    serving_mode: str | None = None  # deploy's isolation: kubernetes, or netns / processes locally


SectionBuilder = Callable[[ReportContext], Section | None]


def find_autoscale_dir(input_dir: Path, explicit: Path | None) -> Path | None:
    """--autoscale DIR when given, else the first directory under input holding autoscale results."""
    if explicit is not None:
        return explicit
    found = sorted(
        path.parent for marker in AUTOSCALE_MARKERS for path in input_dir.rglob(marker) if path.is_file()
    )
    return found[0] if found else None


def _failed_section(module: str, exc: InputError) -> Section:
    from reports.html_util import note

    return Section(
        id=module.rsplit(".", 1)[-1],
        title=module.rsplit(".", 1)[-1].capitalize(),
        html=note(str(exc), "bad"),
        markdown=f"**{exc}**",
        problems=(str(exc),),
    )


def plugin_sections(ctx: ReportContext, modules: tuple[str, ...] = PLUGIN_MODULES) -> list[Section]:
    """Sections from contributed modules; a module that does not exist (yet) contributes nothing."""
    sections = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        try:
            section = module.build_section(ctx)
        except InputError as exc:
            section = _failed_section(module_name, exc)
        if section is not None:
            sections.append(section)
    return sections
