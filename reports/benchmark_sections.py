"""The benchmark report's own sections: overview, configuration, charts, points, server metrics,
regressions, reference figures, problems. Each is `build(ctx) -> Section | None`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from reports import charts
from reports.exports import CANONICAL_METRICS
from reports.html_util import esc, fmt, key_values, note, table
from reports.reference import compare_to_reference
from reports.sections import ReportContext, Section
from reports.table import PER_GPU_METRIC, SERVER_PREFIX
from steps.localgroup import NETNS, PROCESSES

DETAIL_STATS = ["avg", "min", "p50", "p90", "p95", "p99", "max"]
HEADLINE = [  # (metric, stat, column title) for the all-points table
    ("output_token_throughput", "avg", "output tok/s"),
    (PER_GPU_METRIC, "avg", "tok/s/GPU"),
    ("output_token_throughput_per_user", "avg", "tok/s/user"),
    ("time_to_first_token", "p50", "TTFT p50 ms"),
    ("time_to_first_token", "p95", "TTFT p95 ms"),
    ("inter_token_latency", "p50", "ITL p50 ms"),
    ("request_latency", "p95", "latency p95 ms"),
    ("request_throughput", "avg", "req/s"),
]


def md_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _value(results: pd.DataFrame, point: str, metric: str, stat: str) -> float | None:
    rows = results[(results["point"] == point) & (results["metric"] == metric) & (results["stat"] == stat)]
    return None if rows.empty else float(rows["value"].iloc[0])


def headline_frame(ctx: ReportContext) -> pd.DataFrame:
    """One row per point: load, lengths, status and the headline numbers."""
    rows = []
    metrics = [
        (m, s, t) for m, s, t in HEADLINE if ((ctx.results["metric"] == m) & (ctx.results["stat"] == s)).any()
    ]
    for point in ctx.points:
        row: dict[str, Any] = {
            "concurrency": point.concurrency,
            "ISL": point.isl,
            "OSL": point.osl,
            "status": point.status,
        }
        for metric, stat, title in metrics:
            row[title] = _value(ctx.results, point.name, metric, stat)
        rows.append(row)
    return pd.DataFrame(rows)


def overview(ctx: ReportContext) -> Section:
    """Headline numbers: best throughput, latency at the lightest load, point and regression counts."""
    ok = [p for p in ctx.points if p.status == "ok"]
    cards: dict[str, str] = {"points measured": f"{len(ok)} / {len(ctx.points)}"}
    throughput = ctx.results[
        (ctx.results["metric"] == "output_token_throughput") & (ctx.results["stat"] == "avg")
    ]
    if not throughput.empty:
        best = throughput.loc[throughput["value"].idxmax()]
        cards["peak output tokens/s"] = (
            f"{fmt(float(best['value']))} (c{best['concurrency']} {best['isl']}/{best['osl']})"
        )
    ttft = ctx.results[(ctx.results["metric"] == "time_to_first_token") & (ctx.results["stat"] == "p50")]
    if not ttft.empty:
        lightest = ttft.sort_values(["concurrency", "isl"]).iloc[0]
        where = f"c{lightest['concurrency']} {lightest['isl']}/{lightest['osl']}"
        cards["TTFT p50 at lightest load"] = f"{fmt(float(lightest['value']))} ms ({where})"
    if ctx.comparison is not None:
        regressions = int(ctx.comparison["regressed"].sum())
        cards["regressions vs baseline"] = str(regressions)
    html = (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{esc(k)}</div><div class="value">{esc(v)}</div></div>'
            for k, v in cards.items()
        )
        + "</div>"
    )
    markdown = "\n".join(f"- **{k}**: {v}" for k, v in cards.items())
    return Section("overview", "Overview", html, markdown)


# What a reader should know about how the pods ran (deploy's isolation); nothing to add on a cluster.
SERVING_MODE_NOTES = {
    NETNS: (
        "Local run: each pod of the group ran on this machine in its own network namespace (its own "
        "address and hostname), talking over a bridge as pods do over the cluster network.",
        "info",
    ),
    PROCESSES: (
        "Local run without network isolation: network namespaces were unavailable, so the group's "
        '"pods" were plain local processes sharing this machine\'s network (loopback, distinct ports).',
        "warn",
    ),
}


def configuration(ctx: ReportContext) -> Section:
    """What ran: the deployment's shape and the benchmark's settings."""
    pairs: dict[str, Any] = {"run id": ctx.run_id}
    if ctx.run is not None:
        pairs.update({k: v for k, v in ctx.run.as_dict().items() if k != "run_id" and v is not None})
    bench = ctx.run_meta.get("benchmark") or {}
    for key in (
        "tool",
        "tool_version",
        "url",
        "request_count",
        "warmup_requests",
        "streaming",
        "point_timeout_s",
    ):
        if ctx.run_meta.get(key) is not None or bench.get(key) is not None:
            pairs[key.replace("_", " ")] = ctx.run_meta.get(key, bench.get(key))
    if ctx.spec is not None:
        summary = ctx.spec.summary()
        for key in ("world_size", "group_size", "gpus_per_pod"):
            pairs.setdefault(key.replace("_", " "), summary[key])
    if ctx.history_location:
        pairs["history"] = ctx.history_location
    if ctx.serving_mode:
        pairs["serving mode"] = ctx.serving_mode
    markdown = "\n".join(f"- {k}: {fmt(v)}" for k, v in pairs.items())
    html = key_values(pairs)
    if ctx.serving_mode in SERVING_MODE_NOTES:
        text, kind = SERVING_MODE_NOTES[ctx.serving_mode]
        html, markdown = note(text, kind) + html, f"{text}\n\n{markdown}"
    return Section("configuration", "Configuration", html, markdown)


def _by_sequence(results: pd.DataFrame, metric: str, stat: str) -> dict[str, tuple[list, list]]:
    rows = results[(results["metric"] == metric) & (results["stat"] == stat)].sort_values("concurrency")
    return {
        f"{isl}/{osl}": (group["concurrency"].astype(int).tolist(), group["value"].tolist())
        for (isl, osl), group in rows.groupby(["isl", "osl"])
    }


def _concurrency_axis(series: dict[str, tuple[list, list]]) -> dict[str, bool]:
    xs = [x for data in series.values() for x in data[0]]
    return {"logx": max(xs) / max(min(xs), 1) >= 8, "integer_x": True}


def _latency_chart(results: pd.DataFrame, metric: str, title: str) -> str | None:
    """avg (solid) and p95 (dashed, same colour) per ISL/OSL against concurrency."""
    series, styles = {}, {}
    for index, (name, data) in enumerate(_by_sequence(results, metric, "avg").items()):
        colour = charts.PALETTE[index % len(charts.PALETTE)]
        series[f"{name} avg"], styles[f"{name} avg"] = data, {"color": colour}
        p95 = _by_sequence(results, metric, "p95").get(name)
        if p95:
            series[f"{name} p95"], styles[f"{name} p95"] = p95, {"color": colour, "linestyle": "--"}
    if not series:
        return None
    return charts.line_chart(
        series, title=title, xlabel="concurrency", ylabel="ms", styles=styles, **_concurrency_axis(series)
    )


def _throughput_metric(results: pd.DataFrame) -> tuple[str, str]:
    if (results["metric"] == PER_GPU_METRIC).any():
        return PER_GPU_METRIC, "output tokens/s per GPU"
    return "output_token_throughput", "output tokens/s (whole deployment)"


def _pareto(results: pd.DataFrame) -> str | None:
    metric, label = _throughput_metric(results)
    speed = results[(results["metric"] == "output_token_throughput_per_user") & (results["stat"] == "avg")]
    volume = results[(results["metric"] == metric) & (results["stat"] == "avg")]
    joined = speed.merge(volume, on=["isl", "osl", "concurrency"], suffixes=("_x", "_y")).sort_values(
        "concurrency"
    )
    if joined.empty:
        return None
    series, labels = {}, {}
    for (isl, osl), group in joined.groupby(["isl", "osl"]):
        series[f"{isl}/{osl}"] = (group["value_x"].tolist(), group["value_y"].tolist())
        labels[f"{isl}/{osl}"] = [f"c{c}" for c in group["concurrency"]]
    return charts.pareto_chart(
        series,
        title="Throughput vs per-user speed (Pareto)",
        xlabel="output tokens/s per user",
        ylabel=label,
        annotate=labels,
    )


def _throughput_chart(results: pd.DataFrame) -> str | None:
    metric, label = _throughput_metric(results)
    series = _by_sequence(results, metric, "avg")
    if not series:
        return None
    return charts.line_chart(
        series,
        title="Output throughput vs concurrency",
        xlabel="concurrency",
        ylabel=label,
        **_concurrency_axis(series),
    )


def charts_section(ctx: ReportContext) -> Section | None:
    """The Pareto curve, TTFT and ITL vs concurrency, and (per-GPU) tokens/s."""
    figures = [
        _pareto(ctx.results),
        _latency_chart(ctx.results, "time_to_first_token", "Time to first token vs concurrency"),
        _latency_chart(ctx.results, "inter_token_latency", "Inter-token latency vs concurrency"),
        _throughput_chart(ctx.results),
    ]
    figures = [f for f in figures if f]
    if not figures:
        return None
    html = '<div class="charts">' + "".join(f"<figure>{svg}</figure>" for svg in figures) + "</div>"
    return Section("charts", "Throughput and latency", html, "")


def _point_detail(ctx: ReportContext, point_name: str) -> pd.DataFrame:
    """The canonical metrics of one point (aiperf exports dozens more; they stay in results.*)."""
    wanted = [*CANONICAL_METRICS, "time_to_second_token", PER_GPU_METRIC]
    rows = ctx.results[(ctx.results["point"] == point_name) & ctx.results["metric"].isin(wanted)]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index=["metric", "unit"], columns="stat", values="value", aggfunc="first")
    columns = [s for s in DETAIL_STATS if s in wide.columns]
    return wide[columns].reset_index()


def points_section(ctx: ReportContext) -> Section:
    """All points at a glance, then one table per point (folded, no script needed)."""
    overview_frame = headline_frame(ctx)
    bad = {i: "bad" for i, p in enumerate(ctx.points) if p.status != "ok"}
    parts = [table(overview_frame, classes=bad)]
    for point in ctx.points:
        summary = f"{esc(point.label)} — {esc(point.tool or '?')} — {esc(point.status)}"
        if point.status != "ok":
            body = note(point.error or "", "bad")
        else:
            body = table(_point_detail(ctx, point.name), caption=point.name)
        parts.append(f"<details><summary>{summary}</summary>{body}</details>")
    return Section(
        "points", "Results per point", "".join(parts), md_table(overview_frame) if len(overview_frame) else ""
    )


def server_section(ctx: ReportContext) -> Section | None:
    """Prometheus snapshots per point: why latency rose (queueing, waiting, KV cache, utilisation)."""
    rows = ctx.results[ctx.results["metric"].str.startswith(SERVER_PREFIX)]
    errors = [f"{p.name}: {e}" for p in ctx.points for e in (p.server_metrics.get("errors") or [])]
    if rows.empty and not errors:
        return None
    parts = []
    markdown = ""
    if not rows.empty:
        rows = rows.assign(
            column=rows["metric"].str.removeprefix(SERVER_PREFIX)
            + " ("
            + rows["unit"]
            + ", "
            + rows["stat"]
            + ")"
        )
        wide = rows.pivot_table(
            index=["concurrency", "isl", "osl"], columns="column", values="value", aggfunc="first"
        )
        frame = wide.reset_index()
        parts.append(table(frame))
        markdown = md_table(frame)
    parts.extend(note(e, "warn") for e in errors)
    return Section("server", "Server metrics per point", "".join(parts), markdown)


def regressions_section(ctx: ReportContext) -> Section:
    """The comparison with the baseline run, regressions highlighted."""
    if ctx.comparison is None:
        text = ctx.history_note or "No history given (--history), so there is no baseline to compare with."
        return Section("regressions", "Comparison with the baseline", note(text), text)
    frame = ctx.comparison.copy()
    flagged = int(frame["regressed"].sum())
    headline = (
        f"{flagged} regression(s) against baseline {ctx.baseline_name}"
        if flagged
        else f"No regressions against baseline {ctx.baseline_name}"
    )
    frame["change"] = frame["change"].map(lambda c: f"{c:+.1%}")
    frame["limit"] = frame["limit"].map(lambda c: f"{c:+.0%}")
    classes = {i: "bad" for i, r in enumerate(ctx.comparison["regressed"]) if r}
    html = note(headline, "bad" if flagged else "info") + table(frame, classes=classes)
    return Section(
        "regressions", "Comparison with the baseline", html, f"**{headline}**\n\n{md_table(frame)}"
    )


def reference_section(ctx: ReportContext) -> Section | None:
    """How the run compares with the published reference figures for the same model."""
    model = ctx.run.model if ctx.run else None
    frame = compare_to_reference(ctx.results, model)
    if frame.empty:
        return None
    shown = frame.drop(columns=["better"]).copy()
    shown["ratio"] = frame["ratio"].map(lambda r: "not measured" if pd.isna(r) else f"{r:.2f}x")
    html = note(
        "Reference figures come from other hardware/precision where the setup says so; "
        "ratios are measured / reference."
    ) + table(shown)
    return Section("reference", "Reference figures", html, md_table(shown))


def problems_section(ctx: ReportContext, extra: Iterable[str] = ()) -> Section | None:
    """Failed points, unreadable files, tool warnings: everything a reader should not miss."""
    lines = [*ctx.problems, *extra]
    for point in ctx.points:
        if point.status != "ok":
            lines.append(f"{point.name}: {point.status}: {point.error}")
        lines.extend(point.warnings)
    if not lines:
        return None
    html = "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>"
    return Section("problems", "Problems", html, "\n".join(f"- {line}" for line in lines), tuple(lines))


BENCHMARK_SECTIONS = (overview, configuration, charts_section, points_section, server_section)
CLOSING_SECTIONS = (regressions_section, reference_section)
