"""The report's autoscaling section, from the autoscale-test outputs (steps.autoscale).

Reads milestones.json, timeline.parquet and requests.parquet from ctx.autoscale_dir and shows:
the milestones with their delay from load start, the expectations as pass/fail, groups (desired,
ready) and the scaling signal against its target over time, and TTFT over time with the milestones
marked. Writes the milestone table as autoscaling.csv next to the report. When the load test ran
without a cluster, the replica decisions come from the HPA simulator: milestones.json says so
(`simulation`, flags per milestone and expectation, `simulated` timeline rows) and so does the section.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from reports.charts import line_chart
from reports.errors import InputError
from reports.html_util import note, table
from reports.sections import ReportContext, Section

TIMELINE_COLUMNS = {"time_s", "series", "group", "value"}
REQUEST_COLUMNS = {"start_s", "ttft_s", "error"}
# Milestones worth a vertical marker on the charts (the others crowd them).
MARKED = ("hpa_scaled_up", "new_group_ready", "first_served_by_new_group", "load_drop", "scale_in")


def build_section(ctx: ReportContext) -> Section | None:
    """The autoscaling section, or None when there is no autoscale output to show."""
    folder = ctx.autoscale_dir
    if folder is None or not any((folder / n).exists() for n in ("milestones.json", "timeline.parquet")):
        return None
    document = _milestones(folder / "milestones.json")
    timeline = _parquet(folder / "timeline.parquet", TIMELINE_COLUMNS)
    requests = _parquet(folder / "requests.parquet", REQUEST_COLUMNS)
    milestones = pd.DataFrame(document.get("milestones", []),
                              columns=["name", "description", "time_s", "simulated"])
    milestones["simulated"] = milestones["simulated"].eq(True)  # absent in older documents
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    milestones.to_csv(ctx.out_dir / "autoscaling.csv", index=False)
    marks = {row.name: row.time_s for row in milestones.itertuples() if row.name in MARKED
             and pd.notna(row.time_s)}
    target = ctx.spec.serving.autoscaling.target if ctx.spec is not None else _hpa_target(timeline)
    parts = [_simulation_note(document), _verdict(document), _milestone_table(milestones, document),
             _expectation_table(document)]
    parts += [_groups_chart(timeline, marks), _signal_chart(timeline, target, marks),
              _latency_chart(requests, marks)]
    markdown = _markdown(milestones, document)
    return Section(id="autoscaling", title="Autoscaling under load", html="".join(p for p in parts if p),
                   markdown=markdown)


def _milestones(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("milestones", []), list):
        raise InputError(path, "not a steps.autoscale milestones.json (no 'milestones' list)")
    return document


def _parquet(path: Path, columns: set[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=sorted(columns))
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated or foreign files
        raise InputError(path, f"not a readable parquet table ({type(exc).__name__})") from None
    missing = columns - set(frame.columns)
    if missing:
        raise InputError(path, f"missing columns {sorted(missing)}")
    return frame


def _hpa_target(timeline: pd.DataFrame) -> float | None:
    target = timeline[timeline["series"] == "hpa.target"]["value"].dropna()
    return float(target.iloc[-1]) if len(target) else None


def _simulation_note(document: dict) -> str:
    if not document.get("simulation"):
        return ""
    return note(f"No Kubernetes cluster: replicas, groups and nodes are {document['simulation']}. "
                "The signal, the load and the latencies are measured.", "warn")


def _basis(simulated: bool, document: dict) -> str:
    return str(document.get("simulation")) if simulated else "measured"


def _verdict(document: dict) -> str:
    expectations = document.get("expectations", [])
    if not expectations:
        return note("No expectations in the spec (loadtest.expect); milestones only.")
    failed = [e for e in expectations if not e.get("passed")]
    if failed:
        return note("Failed: " + "; ".join(_outcome(e) for e in failed), "bad")
    return note("All autoscaling expectations met.", "info")


def _outcome(expectation: dict) -> str:
    return f"{expectation['expected']} (observed {expectation['observed']})"


def _milestone_table(milestones: pd.DataFrame, document: dict) -> str:
    shown = milestones.assign(
        delay=milestones["time_s"].map(lambda t: "not reached" if pd.isna(t) else f"{t:.0f} s"),
        basis=milestones["simulated"].map(lambda simulated: _basis(simulated, document)))
    columns = {"description": "milestone", "delay": "from load start", "basis": "basis"}
    return table(shown[list(columns)].rename(columns=columns), caption="Milestones", numeric=False)


def _expectation_table(document: dict) -> str:
    expectations = pd.DataFrame(document.get("expectations", []))
    if expectations.empty:
        return ""
    expectations["result"] = expectations["passed"].map({True: "pass", False: "FAIL"})
    if "simulated" not in expectations:  # documents from before the flag
        expectations["simulated"] = False
    expectations["basis"] = expectations["simulated"].eq(True).map(lambda flag: _basis(flag, document))
    classes = {i: "bad" for i, passed in enumerate(expectations["passed"]) if not passed}
    return table(expectations[["expected", "observed", "result", "basis"]], caption="Expectations",
                 classes=classes)


def _series(timeline: pd.DataFrame, name: str) -> tuple[list[float], list[float]]:
    picked = timeline[timeline["series"] == name].groupby("time_s")["value"].sum(min_count=1).dropna()
    return list(picked.index), list(picked.values)


def _label(timeline: pd.DataFrame, label: str, name: str) -> str:
    """The legend label, marked when the series comes from the HPA simulator."""
    rows = timeline[timeline["series"] == name]
    simulated = "simulated" in rows and bool(rows["simulated"].any())
    return f"{label} (simulated)" if simulated else label


def _groups_chart(timeline: pd.DataFrame, marks: dict[str, float]) -> str:
    names = (("HPA desired", "hpa.desired"), ("LWS requested", "lws.replicas"),
             ("groups ready", "lws.ready"), ("nodes ready", "nodes.ready"))
    lines = {_label(timeline, label, name): _series(timeline, name) for label, name in names}
    lines = {k: v for k, v in lines.items() if v[0]}
    if not lines:
        return ""
    return line_chart(lines, title="Groups over time", xlabel="seconds from load start", ylabel="count",
                      steps=True, vlines=marks)


def _signal_chart(timeline: pd.DataFrame, target: float | None, marks: dict[str, float]) -> str:
    signal = timeline[timeline["series"] == "signal"]
    lines: dict[str, tuple[list[float], list[float]]] = {}
    for group, frame in signal.groupby("group"):
        frame = frame.dropna(subset=["value"]).sort_values("time_s")
        lines[f"signal, group {group}"] = (list(frame["time_s"]), list(frame["value"]))
    hpa = _series(timeline, "hpa.metric")
    if hpa[0]:
        lines[_label(timeline, "HPA metric (average)", "hpa.metric")] = hpa
    if not lines:
        return ""
    if target is not None:
        xs = [x for xs, _ in lines.values() for x in xs]
        lines["target"] = ([min(xs), max(xs)], [target, target])
    return line_chart(lines, title="Scaling signal vs target", xlabel="seconds from load start",
                      ylabel="metric", vlines=marks, styles={"target": {"linestyle": "--"}})


def _latency_chart(requests: pd.DataFrame, marks: dict[str, float]) -> str:
    done = requests[requests["error"].isna() & requests["ttft_s"].notna()]
    if done.empty:
        return ""
    buckets = (done["start_s"] // 10 * 10).rename("bucket")
    ttft = (done["ttft_s"] * 1000).groupby(buckets)
    lines = {"TTFT p50": (list(ttft.median().index), list(ttft.median().values)),
             "TTFT p95": (list(ttft.quantile(0.95).index), list(ttft.quantile(0.95).values))}
    errors = int(requests["error"].notna().sum())
    caption = f"<p>{len(done)} requests completed, {errors} with errors (10 s buckets by start time).</p>"
    return caption + line_chart(lines, title="Time to first token during the load test",
                                xlabel="seconds from load start", ylabel="ms", vlines=marks,
                                styles={"TTFT p95": {"linestyle": "--"}})


def _markdown(milestones: pd.DataFrame, document: dict) -> str:
    lines = [f"Replicas, groups and nodes: {document['simulation']}.\n"] if document.get("simulation") else []
    lines += ["| milestone | from load start | basis |", "|---|---|---|"]
    for row in milestones.itertuples():
        delay = "not reached" if pd.isna(row.time_s) else f"{row.time_s:.0f} s"
        lines.append(f"| {row.description} | {delay} | {_basis(row.simulated, document)} |")
    for e in document.get("expectations", []):
        basis = " [simulated]" if e.get("simulated") else ""
        lines.append(f"\n- {'PASS' if e['passed'] else 'FAIL'}{basis}: {_outcome(e)}")
    return "\n".join(lines)

