"""The demo: `megapod run --local workflows/examples/tiny-local.yaml`, the whole rendered pipeline.

Real parts end to end: moto S3 and the real download step, build and publish for the CPU backend,
deploy (a 2-pod group through the real launcher, network namespaces when allowed), the real load
generator with a real Prometheus holding the chart's recording rules and the HPA simulator deciding
replicas on the signal it records (no Kubernetes here), aiperf against the real tritonserver, and
the real HTML report. One run (a few minutes) is shared by the checks below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from steps.autoscale.simulated import SIMULATED_LABEL
from workflows.argo.common import STAGES
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "workflows" / "examples" / "tiny-local.yaml"
DEMO_TIMEOUT_S = 900
HEADLINE_METRICS = ("output_token_throughput", "request_throughput", "time_to_first_token")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One full local run, as `make demo` does it."""
    runs = tmp_path_factory.mktemp("runs")
    tools = os.pathsep.join(str(ROOT / d) for d in (".tools/bin", ".venv/bin"))
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "workflows.cli", "run", "--local", str(SPEC), "--runs-dir", str(runs)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, env=env, cwd=ROOT)
    (run_dir,) = runs.iterdir()
    return done, run_dir


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def report_dir(run_dir: Path) -> Path:
    return run_dir / "artifacts" / "report" / "report-files"


def autoscale_dir(run_dir: Path) -> Path:
    (found,) = (run_dir / "volumes").rglob("autoscale-test/milestones.json")
    return found.parent


def attempt_started(run_dir: Path, node: dict) -> datetime:
    """When the task's process started (its log's attempt header), not when it began waiting."""
    header = (run_dir / node["log"]).read_text().splitlines()[0]  # --- attempt 1 <ISO time>: argv
    return datetime.fromisoformat(header.split()[3].rstrip(":"))


def test_demo_pipeline_succeeds_node_by_node(demo_run) -> None:
    done, run_dir = demo_run
    state = status(run_dir)
    phases = {key: node["phase"] for key, node in state["nodes"].items()}
    assert done.returncode == 0, f"{phases}\n{done.stderr[-4000:]}"
    assert state["phase"] == "Succeeded"
    assert {stage: phases[stage] for stage in STAGES} == dict.fromkeys(STAGES, "Succeeded")
    assert phases["onExit.teardown"] == "Succeeded"
    standins = json.loads((run_dir / "standins.json").read_text())
    assert {"s3", "prometheus"} <= set(standins)
    page = run_dir / "artifacts" / "report" / "report" / "report.html"  # the file artifact the UI opens
    assert f"artifact report/report: {page}" in done.stdout + done.stderr


def test_load_stages_ran_one_after_the_other(demo_run) -> None:
    """The deployment's load mutex: whichever load stage got it first, the other's process starts
    only after it finished (the DAG starts both after deploy; the order is not fixed)."""
    _, run_dir = demo_run
    nodes = status(run_dir)["nodes"]
    first, second = sorted((nodes["autoscale-test"], nodes["benchmark"]), key=lambda n: n["finished"])
    finished = datetime.fromtimestamp(first["finished"]).astimezone()
    assert attempt_started(run_dir, second) >= finished.replace(microsecond=0)


def test_demo_report_numbers_are_present_and_non_zero(demo_run) -> None:
    _, run_dir = demo_run
    report = report_dir(run_dir)
    assert (report / "report.html").stat().st_size > 0
    results = pd.read_csv(report / "results.csv")
    spec = load_spec(SPEC)
    for concurrency in spec.benchmark.concurrency:
        point = results[results["concurrency"] == concurrency]
        for metric in HEADLINE_METRICS:
            values = point.loc[point["metric"] == metric, "value"]
            assert not values.empty, f"no {metric} at concurrency {concurrency}"
            assert (values > 0).all(), f"{metric} at concurrency {concurrency}: {values.tolist()}"


def test_simulated_scale_up_to_two_groups_and_back(demo_run) -> None:
    """The measured signal exceeded the target under the hold stage; the HPA simulator scaled to the
    spec's 2 groups and back in, and the report labels all of it simulated."""
    _, run_dir = demo_run
    spec = load_spec(SPEC)
    document = json.loads((autoscale_dir(run_dir) / "milestones.json").read_text())
    at = {m["name"]: m for m in document["milestones"]}
    assert document["simulation"] == SIMULATED_LABEL and document["passed"]
    assert not at["signal_above_target"]["simulated"] and at["signal_above_target"]["time_s"] is not None
    for name in ("hpa_scaled_up", "new_group_ready", "first_served_by_new_group", "scale_in"):
        assert at[name]["simulated"] and at[name]["time_s"] is not None, name
    assert at["new_group_ready"]["time_s"] < at["load_drop"]["time_s"] < at["scale_in"]["time_s"]
    timeline = pd.read_parquet(autoscale_dir(run_dir) / "timeline.parquet")
    ready = timeline[timeline["series"] == "lws.ready"]
    assert ready["simulated"].all() and ready["value"].max() == spec.serving.replicas.max == 2
    summary = (report_dir(run_dir) / "summary.md").read_text()
    assert f"Replicas, groups and nodes: {SIMULATED_LABEL}." in summary
    scaled_up = at["hpa_scaled_up"]["time_s"]
    assert f"| HPA raised desired replicas | {scaled_up:.0f} s | {SIMULATED_LABEL} |" in summary
    assert "PASS [simulated]: 2 groups serving within" in summary


def test_isolation_is_reported(demo_run) -> None:
    """deploy's isolation output reaches the report's configuration (netns as root here; processes
    where namespaces are refused, with the sentence saying the pods were local processes)."""
    _, run_dir = demo_run
    isolation = status(run_dir)["nodes"]["deploy"]["parameters"]["isolation"]
    assert isolation in ("netns", "processes")
    summary = (report_dir(run_dir) / "summary.md").read_text()
    assert f"- serving mode: {isolation}" in summary
    expected = "in its own network namespace" if isolation == "netns" else '"pods" were plain local processes'
    assert expected in summary


def test_benchmark_points_carry_the_executor_gauges_the_backend_publishes(demo_run) -> None:
    """Server metrics per point come from the real Prometheus scraping the real tritonserver: the
    batch-slot and KV-block gauges of TensorRT-LLM 0.12 (custom_metrics_reporter.cc at v0.12.0,
    which the CPU backend stands in for) exist at every point (0 is a value: a short point may
    fall between scrapes); `waiting`, which 0.12 does not publish, is absent (null)."""
    _, run_dir = demo_run
    files = [p for p in (run_dir / "volumes").rglob("prometheus.json") if "benchmark" in p.parts]
    snapshots = [json.loads(p.read_text()) for p in files]
    assert snapshots, "no benchmark point recorded server metrics"
    for snapshot in snapshots:
        metrics = snapshot["metrics"]
        assert snapshot["errors"] == []
        assert metrics["trtllm_active_requests"]["value"] >= 0
        for ratio in ("batch_slot_occupancy", "kv_cache_utilization"):
            assert 0 <= metrics[ratio]["value"] <= 1, ratio
        assert metrics["trtllm_waiting_requests"]["value"] is None
