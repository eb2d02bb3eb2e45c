"""The report's autoscaling section (reports/autoscaling.py) built from steps.autoscale outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reports.autoscaling import build_section
from reports.errors import InputError
from reports.sections import ReportContext
from steps.autoscale.milestones import (
    check_expectations,
    derive_milestones,
    milestones_document,
)
from steps.autoscale.timeline import requests_frame, timeline_frame, write_parquet
from workflows.spec import parse_spec

SPEC = parse_spec({
    "name": "tiny",
    "model": {"source": "/models/tiny", "parameters_billion": 0.001},
    "cluster": {"gpus_per_node": 1},
    "serving": {"replicas": {"min": 1, "max": 2}, "autoscaling": {"target": 1.0}},
    "loadtest": {"stages": [{"name": "hold", "concurrency": 8, "duration_s": 60},
                            {"name": "drop", "concurrency": 0, "duration_s": 30}],
                 "expect": {"groups_serving": 2, "within_s": 30, "p95_ttft_ms": 50}},
})


def write_run(folder: Path) -> dict:
    """A load test in which group 1 is ready at 40 s (too late for the 30 s expectation)."""
    rows = []
    for t in range(0, 90, 5):
        desired = 2 if 10 <= t < 75 else 1
        ready = 2 if 40 <= t < 75 else 1
        rows += [{"time_s": t, "series": "hpa.desired", "group": "", "value": desired, "detail": ""},
                 {"time_s": t, "series": "lws.replicas", "group": "", "value": desired, "detail": ""},
                 {"time_s": t, "series": "lws.ready", "group": "", "value": ready, "detail": ""},
                 {"time_s": t, "series": "signal", "group": "tiny-0", "value": 2.5 if t < 60 else 0.2,
                  "detail": ""}]
    requests = [{"start_s": s, "stage": "hold", "worker": 0, "ttft_s": 0.02 + s / 1000, "end_s": s + 1.0,
                 "tokens": 8, "error": None, "group": None, "start_time": 1e9 + s} for s in range(0, 60, 2)]
    requests.append({**requests[0], "start_s": 59.0, "error": "timeout", "ttft_s": None})
    timeline, frame = timeline_frame(rows, "tiny"), requests_frame(requests)
    milestones = derive_milestones(SPEC, timeline, frame)
    document = milestones_document(milestones, check_expectations(SPEC, timeline, frame, milestones), 1e9)
    folder.mkdir(parents=True)
    write_parquet(timeline, folder / "timeline.parquet")
    write_parquet(frame, folder / "requests.parquet")
    (folder / "milestones.json").write_text(json.dumps(document))
    return document


def context(tmp_path: Path, autoscale_dir: Path | None) -> ReportContext:
    return ReportContext(input_dir=tmp_path, out_dir=tmp_path / "report", autoscale_dir=autoscale_dir,
                         spec=SPEC, run_id="r1", results=pd.DataFrame())


def test_section_shows_milestones_expectations_and_charts(tmp_path) -> None:
    document = write_run(tmp_path / "autoscale")
    section = build_section(context(tmp_path, tmp_path / "autoscale"))
    assert section is not None and section.id == "autoscaling"
    at = {m["name"]: m["time_s"] for m in document["milestones"]}
    assert at["hpa_scaled_up"] == 10 and at["load_drop"] == 60 and at["scale_in"] == 75
    assert section.html.count("<svg") == 3  # groups, signal vs target, TTFT
    assert "2 groups serving within 30 s" in section.html and "FAIL" in section.html
    assert "at 40 s" in section.html
    assert "<script" not in section.html and 'href="http' not in section.html  # self-contained
    assert "| HPA raised desired replicas | 10 s |" in section.markdown
    csv = pd.read_csv(tmp_path / "report" / "autoscaling.csv")
    assert csv["name"].iloc[0] == "load_start"


def test_no_autoscale_output_means_no_section(tmp_path) -> None:
    assert build_section(context(tmp_path, None)) is None
    (tmp_path / "empty").mkdir()
    assert build_section(context(tmp_path, tmp_path / "empty")) is None


def test_truncated_timeline_is_an_input_error(tmp_path) -> None:
    write_run(tmp_path / "autoscale")
    path = tmp_path / "autoscale" / "timeline.parquet"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match=r"timeline\.parquet: not a readable parquet"):
        build_section(context(tmp_path, tmp_path / "autoscale"))


def test_simulated_replicas_are_labelled_as_such(tmp_path) -> None:
    """A load test without a cluster (local run): the HPA simulator's milestones, expectation and chart
    lines say "simulated", with how they were made; measured milestones say "measured". (The spec's
    default 60 s scale-up window holds the first scale-up until 60 s.)"""
    from steps.autoscale.simulated import SIMULATED_LABEL, simulated_rows

    rows = [{"time_s": t, "series": "signal", "group": "0", "value": 3.0 if 10 <= t < 80 else 0.0,
             "detail": ""} for t in range(0, 90, 5)]
    rows += simulated_rows(SPEC, rows)
    timeline, requests = timeline_frame(rows, "tiny"), requests_frame([])
    milestones = derive_milestones(SPEC, timeline, requests)
    document = milestones_document(milestones, check_expectations(SPEC, timeline, requests, milestones),
                                   1e9, SIMULATED_LABEL)
    folder = tmp_path / "autoscale"
    folder.mkdir()
    write_parquet(timeline, folder / "timeline.parquet")
    write_parquet(requests, folder / "requests.parquet")
    (folder / "milestones.json").write_text(json.dumps(document))
    section = build_section(context(tmp_path, folder))
    assert SIMULATED_LABEL in section.html
    assert f"Replicas, groups and nodes: {SIMULATED_LABEL}" in section.markdown
    assert f"| HPA raised desired replicas | 60 s | {SIMULATED_LABEL} |" in section.markdown
    assert "| scaling signal above the HPA target | 10 s | measured |" in section.markdown
    assert "HPA desired (simulated)" in section.html and "groups ready (simulated)" in section.html
    assert "- FAIL [simulated]: 2 groups serving within 30 s (observed never (simulated))" in section.markdown
