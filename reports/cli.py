"""`megapod report` / `python -m reports`: benchmark exports -> results table, HTML + Markdown report,
history and regression check.

Exit codes: 0 report written; 1 report written but no benchmark point succeeded (the run measured
nothing), a regression was flagged with --fail-on-regression, or some export was unreadable;
2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports import REPORT_PAGE
from reports import benchmark_sections as bench
from reports.errors import InputError, ReportError
from reports.history import append_run, compare, find_baseline, open_history
from reports.page import render_html, render_markdown
from reports.points import POINT_FILE, RUN_FILE, Point, discover_points, read_run_meta
from reports.sections import ReportContext, Section, find_autoscale_dir, plugin_sections
from reports.table import (
    RunInfo,
    atomic_write,
    deployment_info,
    is_iso_time,
    results_frame,
    utc_now,
    write_results,
)


@dataclass
class Options:
    """The command line, parsed."""

    input_dir: Path
    out_dir: Path
    spec_path: Path | None = None
    history: str | None = None
    baseline: str | None = None
    fail_on_regression: bool = False
    autoscale_dir: Path | None = None
    run_id: str | None = None
    serving_mode: str | None = None


@dataclass
class Outcome:
    """What a report run produced and found."""

    files: list[Path] = field(default_factory=list)
    regressions: int = 0
    unreadable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    history_file: str | None = None
    nothing_measured: str | None = None  # why the run counts as failed although the report was written


def parser() -> argparse.ArgumentParser:
    """The report command's arguments (the same for `megapod report` and `python -m reports`)."""
    p = argparse.ArgumentParser(prog="megapod report", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--input", required=True, type=Path, help="directory with benchmark exports (searched recursively)"
    )
    p.add_argument("--out", required=True, type=Path, help="where results.*, report.html and summary.md go")
    p.add_argument("--spec", type=Path, help="the deployment spec (shape, thresholds, history defaults)")
    p.add_argument(
        "--history", help="history directory or s3://bucket/prefix (default: spec reports.history)"
    )
    p.add_argument(
        "--baseline", help="'previous' or a run id to compare with (default: spec reports.baseline)"
    )
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is flagged")
    p.add_argument(
        "--autoscale", type=Path, help="autoscale-test output directory (default: found under --input)"
    )
    p.add_argument("--run-id", help="this run's id (default: run.json's, else generated)")
    p.add_argument(
        "--serving-mode",
        help="how the deployment's pods ran (deploy's isolation output): kubernetes, netns or processes",
    )
    return p


def _options(argv: list[str]) -> Options:
    a = parser().parse_args(argv)
    return Options(
        a.input,
        a.out,
        a.spec,
        a.history,
        a.baseline,
        a.fail_on_regression,
        a.autoscale,
        a.run_id,
        a.serving_mode,
    )


def _started_at(run_meta: dict, points: list[Point], warnings: list[str]) -> str:
    """run.json's started_at, else the earliest point's, else now; an invalid one is warned about
    and skipped (history file names and run ids are made from it)."""

    def valid(name: str, value: object) -> str | None:
        if value is None or value == "":
            return None
        if is_iso_time(value):
            return str(value)
        warnings.append(f"{name}: started_at {str(value)[:80]!r} is not an ISO 8601 time; ignored")
        return None

    own = valid(RUN_FILE, run_meta.get("started_at"))
    starts = sorted(filter(None, (valid(f"{p.name}/{POINT_FILE}", p.meta.get("started_at")) for p in points)))
    return own or (starts[0] if starts else utc_now())


def run_info(
    spec, run_meta: dict, points: list[Point], run_id: str | None, warnings: list[str] | None = None
) -> RunInfo:
    """Identity and deployment shape: spec first, then run.json, then any point.json."""
    deployment = deployment_info(spec) if spec is not None else None
    for source in (run_meta, *(p.meta for p in points)):
        if deployment is None and isinstance(source.get("deployment"), dict):
            deployment = source["deployment"]
    deployment = deployment or {}
    started = _started_at(run_meta, points, [] if warnings is None else warnings)
    name = deployment.get("name") or "run"
    run_id = run_id or run_meta.get("run_id") or f"{name}-{started.replace(':', '').replace('+0000', 'Z')}"
    fields = {k: deployment.get(k) for k in ("model", "backend", "tp", "pp", "nodes", "gpus", "name")}
    return RunInfo(run_id=str(run_id), started_at=str(started), **fields)


def _load_spec(path: Path | None):
    if path is None:
        return None
    from workflows.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as exc:
        raise ReportError(str(exc)) from None


def _s3_settings(spec) -> dict:
    s3 = spec.cluster.s3 if spec is not None else None
    return {"endpoint_url": s3.endpoint_url, "region": s3.region} if s3 is not None else {}


def _history(opts: Options, spec, run: RunInfo, results: pd.DataFrame, warnings: list[str]) -> dict:
    """Baseline comparison (before this run is added) and the store to append to."""
    location = opts.history or (spec.reports.history if spec is not None else None)
    if location is None:
        return {}
    baseline = opts.baseline or (spec.reports.baseline if spec is not None else "previous")
    store = open_history(location, **_s3_settings(spec))
    found = find_baseline(store, results, run, baseline, skipped=warnings)
    thresholds = spec.reports.thresholds.model_dump() if spec is not None else _default_thresholds()
    info = {"store": store, "history_location": store.location}
    if found is None:
        info["history_note"] = (
            f"No earlier comparable run in {store.location}; this run becomes the baseline."
        )
    else:
        info["baseline_name"], baseline_frame = found
        info["comparison"] = compare(results, baseline_frame, thresholds)
    return info


def _default_thresholds() -> dict[str, float]:
    from workflows.spec import RegressionThresholds

    return RegressionThresholds().model_dump()


def _sections(ctx: ReportContext) -> list[Section]:
    built = [builder(ctx) for builder in bench.BENCHMARK_SECTIONS]
    built += plugin_sections(ctx)
    built += [builder(ctx) for builder in bench.CLOSING_SECTIONS]
    sections = [s for s in built if s is not None]
    problems = bench.problems_section(ctx, [line for s in sections for line in s.problems])
    return [*sections, problems] if problems else sections


def make_report(opts: Options) -> Outcome:
    """Build everything in memory, then write results, report.html, summary.md and the history entry."""
    if not opts.input_dir.is_dir():
        raise ReportError(f"--input {opts.input_dir}: no such directory")
    if opts.out_dir.exists() and not opts.out_dir.is_dir():
        raise ReportError(f"--out {opts.out_dir}: exists and is not a directory; give a directory")
    spec = _load_spec(opts.spec_path)
    points = discover_points(opts.input_dir)
    autoscale_dir = find_autoscale_dir(opts.input_dir, opts.autoscale_dir)
    if not points and autoscale_dir is None:
        raise ReportError(
            f"--input {opts.input_dir}: no benchmark results found (expected point.json or "
            "profile_export_genai_perf.json/.csv or profile_export_aiperf.json/.csv somewhere below it)"
        )
    problems: list[str] = []
    try:
        run_meta = read_run_meta(opts.input_dir)
    except InputError as exc:
        run_meta, problems = {}, [str(exc)]
    warnings: list[str] = []
    run = run_info(spec, run_meta, points, opts.run_id, warnings)
    results = results_frame(run, points)
    history = _history(opts, spec, run, results, warnings)
    ctx = ReportContext(
        input_dir=opts.input_dir,
        out_dir=opts.out_dir,
        autoscale_dir=autoscale_dir,
        spec=spec,
        run_id=run.run_id,
        results=results,
        run=run,
        run_meta=run_meta,
        points=tuple(points),
        comparison=history.get("comparison"),
        baseline_name=history.get("baseline_name"),
        history_location=history.get("history_location"),
        history_note=history.get("history_note"),
        problems=tuple(problems),
        serving_mode=opts.serving_mode,
    )
    sections = _sections(ctx)
    title = f"Benchmark report: {run.name or run.model or 'megapod'}"
    subtitle = f"run {run.run_id} · started {run.started_at} · {len(points)} point(s)"
    outcome = Outcome(files=write_results(results, opts.out_dir), warnings=warnings)
    for name, text in (
        (REPORT_PAGE, render_html(title, subtitle, sections)),
        ("summary.md", render_markdown(title, subtitle, sections)),
    ):
        atomic_write(opts.out_dir / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        outcome.files.append(opts.out_dir / name)
    if "store" in history and not results.empty:
        outcome.history_file = append_run(history["store"], run, results)
    if ctx.comparison is not None:
        outcome.regressions = int(ctx.comparison["regressed"].sum())
    outcome.unreadable = [p.error or p.name for p in points if p.status == "unreadable"] + problems
    outcome.nothing_measured = nothing_measured(points, results)
    return outcome


def nothing_measured(points: list[Point], results: pd.DataFrame) -> str | None:
    """Why a run without one successful benchmark point measured nothing (None when it measured).

    A green run with an empty table hides a dead deployment (e.g. a resumed run whose server was
    torn down): the report is still written, for the failures it lists, but the run fails."""
    if any(p.status == "ok" for p in points) and not results.empty:
        return None
    if not points:
        return "the benchmark stage produced no point at all (no point.json or tool export in --input)"
    counts = Counter(p.status for p in points)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    bad = [p for p in points if p.status != "ok"]
    detail = f"first: {bad[0].name}: {bad[0].error}" if bad else "their exports hold no metric"
    return f"no benchmark point succeeded ({summary}): the benchmark stage measured nothing; {detail}"


def main(argv: list[str] | None = None) -> int:
    """Run the report command; returns the process exit code."""
    opts = _options(sys.argv[1:] if argv is None else list(argv))
    try:
        outcome = make_report(opts)
    except ReportError as exc:
        print(f"megapod report: {exc}", file=sys.stderr)
        return 2
    for line in outcome.warnings:
        print(f"megapod report: warning: {line}", file=sys.stderr)
    for line in outcome.unreadable:
        print(f"megapod report: unreadable input: {line}", file=sys.stderr)
    print(
        f"report: wrote {', '.join(str(f) for f in outcome.files)}"
        + (f"; history += {outcome.history_file}" if outcome.history_file else "")
    )
    if outcome.regressions:
        print(
            f"megapod report: {outcome.regressions} regression(s) against the baseline (see report.html)",
            file=sys.stderr,
        )
        if opts.fail_on_regression or _spec_fails_on_regression(opts):
            return 1
    if outcome.nothing_measured:
        print(f"megapod report: {outcome.nothing_measured}", file=sys.stderr)
        return 1
    return 1 if outcome.unreadable else 0


def _spec_fails_on_regression(opts: Options) -> bool:
    spec = _load_spec(opts.spec_path)
    return bool(spec and spec.reports.fail_on_regression)
