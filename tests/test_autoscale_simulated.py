"""The autoscale-test stage without a Kubernetes API: the HPA simulator on the measured signal.

Pure tables in, rows out (the load generator and Prometheus sampler against real servers are in
tests/test_autoscale.py; the whole local run in tests/test_demo.py). The HPA algorithm itself is
checked against the upstream documentation's examples in tests/test_hpa_simulator.py.
"""

from __future__ import annotations

import csv

import yaml

from steps.autoscale.milestones import CLUSTER_MILESTONES, check_expectations, derive_milestones
from steps.autoscale.samplers import row
from steps.autoscale.simulated import demand_series, simulated_rows
from steps.autoscale.simulator import main as simulate_main
from steps.autoscale.timeline import requests_frame, series, timeline_frame
from workflows.spec import parse_spec

SPEC = parse_spec({
    "name": "tiny",
    "model": {"source": "/models/tiny", "parameters_billion": 0.001},
    "backend": "cpu-python",
    "build": {"tp": 1, "pp": 2},
    "cluster": {"gpus_per_node": 1},
    "serving": {"replicas": {"min": 1, "max": 2}, "autoscaling": {
        "metric": "request_rate", "target": 1, "sync_period_s": 5,
        "scale_up": {"stabilization_window_seconds": 0,
                     "policies": [{"type": "Pods", "value": 1, "period_seconds": 5}]},
        "scale_down": {"stabilization_window_seconds": 10,
                       "policies": [{"type": "Pods", "value": 1, "period_seconds": 5}]},
        "provisioning": {"node_boot_s": 2, "image_pull_s": 1, "model_load_s": 2}}},
    "loadtest": {"stages": [{"name": "ramp", "concurrency": 1, "duration_s": 5},
                            {"name": "hold", "concurrency": 4, "duration_s": 20},
                            {"name": "drop", "concurrency": 0, "duration_s": 15}],
                 "expect": {"groups_serving": 2, "within_s": 20}},
})


def measured_rows() -> list[dict]:
    """What a local run samples: Prometheus' recorded signal for group 0 from 3 s on (rules evaluate
    every few seconds), 3 requests/s (the signal) while the hold stage's load is on, and the request rate."""
    rows = []
    for t in range(41):
        rows.append(row(t, "load.concurrency", 4 if 5 <= t < 25 else 0))
        if t >= 3:
            rows.append(row(t, "signal", 3.0 if 8 <= t < 28 else 0.0, "0"))
            rows.append(row(t, "requests.rate", 5.0, "0"))
    return rows


def test_demand_starts_at_load_start_and_sums_groups() -> None:
    rows = [row(2, "signal", 1.0, "0"), row(2, "signal", 0.5, "1"), row(3, "signal", float("nan"), "0")]
    assert demand_series(rows) == [(0.0, 0.0), (2, 1.5)]


def test_simulated_scale_up_and_in_on_measured_signal() -> None:
    """Demand 3x the target from 8 s: the simulated HPA adds one group at its next sync (10 s; the
    Pods policy allows +1 per 5 s), the group serves after node boot + pull + load (5 s), and the
    scale-down window (10 s) holds 2 groups until 35 s although the signal fell at 28 s. Every
    cluster milestone is flagged simulated; the measured ones are not."""
    rows = measured_rows()
    timeline = timeline_frame(rows + simulated_rows(SPEC, rows))
    milestones = derive_milestones(SPEC, timeline, requests_frame([]))
    at = {m.name: m.time_s for m in milestones}
    assert at == {"load_start": 0.0, "signal_above_target": 8, "hpa_scaled_up": 10,
                  "new_group_pods_created": 10, "new_nodes_ready": 15, "new_group_ready": 15,
                  "first_served_by_new_group": 15, "load_drop": 25, "scale_in": 35}
    assert {m.name for m in milestones if m.simulated} == CLUSTER_MILESTONES
    assert series(timeline, "lws.ready").max() == 2
    nodes = series(timeline, "nodes.ready")
    assert nodes[0] == 2 and nodes[10] == 2 and nodes[15] == 4 and nodes[40] == 2  # 2 pods a group
    assert not timeline[timeline["series"] == "signal"]["simulated"].any()
    assert timeline[timeline["series"] == "hpa.desired"]["simulated"].all()
    (expectation,) = check_expectations(SPEC, timeline, requests_frame([]), milestones)
    assert expectation.passed and expectation.simulated
    assert expectation.observed == "at 15 s (simulated)"


def test_simulated_replicas_are_those_of_megapod_autoscale_simulate(tmp_path) -> None:
    """The stage reuses the simulator: the demand it feeds, given to `megapod autoscale simulate` as a
    signal CSV, gives the same desired replicas at the same times."""
    rows = measured_rows()
    signal = tmp_path / "signal.csv"
    with signal.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time_s", "demand"])
        writer.writerows([*demand_series(rows), (40, 0.0)])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC.model_dump(mode="json")))
    out = tmp_path / "simulated.csv"
    assert simulate_main(["--spec", str(spec_path), "--signal", str(signal), "--out", str(out)]) == 0
    expected = {float(r["time_s"]): float(r["desired"]) for r in csv.DictReader(out.open())}
    desired = series(timeline_frame(simulated_rows(SPEC, rows)), "hpa.desired")
    assert desired.to_dict() == expected


def test_no_signal_no_simulation() -> None:
    assert simulated_rows(SPEC, [row(0, "load.concurrency", 1)]) == []


def test_serving_group_at_load_start_is_not_a_new_group() -> None:
    """Without a cluster, group 0 (deployed before the load) answering requests is not "first
    request served by a new group"; the milestone needs a group index beyond the replicas at start."""
    rows = [row(t, "requests.rate", 2.0, "0") for t in range(4, 20)]
    rows += [row(t, "requests.rate", 1.0, "127.0.0.1:8002") for t in range(4, 20)]
    at = {m.name: m.time_s for m in derive_milestones(SPEC, timeline_frame(rows), requests_frame([]))}
    assert at["first_served_by_new_group"] is None
    rows += [row(12, "requests.rate", 1.0, "1")]
    at = {m.name: m.time_s for m in derive_milestones(SPEC, timeline_frame(rows), requests_frame([]))}
    assert at["first_served_by_new_group"] == 12
