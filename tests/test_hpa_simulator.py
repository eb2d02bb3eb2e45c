"""The HPA simulator against the worked examples of the upstream Kubernetes HPA documentation.

Source: https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ (sections named in
each test's docstring). Expected numbers are the documentation's, not the simulator's own output.
"""

from __future__ import annotations

import csv
import io

import pytest

from steps.autoscale.hpa import HorizontalPodAutoscaler, PodSample
from steps.autoscale.simulator import main, read_signal, simulate, write_steps
from workflows.spec import ScalingPolicy, ScalingRules, parse_spec

SYNC = 15  # the controller's default --horizontal-pod-autoscaler-sync-period


def rules(*policies: tuple[str, int, int], window: int = 0, select: str = "Max") -> ScalingRules:
    """ScalingRules from (type, value, periodSeconds) tuples."""
    return ScalingRules(
        stabilization_window_seconds=window,
        select_policy=select,
        policies=[ScalingPolicy(type=t, value=v, period_seconds=p) for t, v, p in policies],
    )


UNLIMITED = rules(("Percent", 1000, 15))


def hpa(*, up: ScalingRules = UNLIMITED, down: ScalingRules = UNLIMITED, lo: int = 1, hi: int = 100,
        target: float = 100.0) -> HorizontalPodAutoscaler:
    return HorizontalPodAutoscaler(
        target=target, min_replicas=lo, max_replicas=hi, scale_up=up, scale_down=down
    )


def pods(*values: float | None) -> list[PodSample]:
    return [PodSample(v) for v in values]


def test_ratio_doubles_and_halves_replicas() -> None:
    """#algorithm-details: current 200m vs desired 100m doubles the replicas; 50m halves them."""
    assert hpa().desired(0, 3, pods(200, 200, 200)) == (6, 200)
    assert hpa().desired(0, 4, pods(50, 50, 50, 50)) == (2, 50)


def test_ratio_within_tolerance_skips_scaling() -> None:
    """#algorithm-details: no action when the ratio is within the tolerance (0.1 by default) of 1.0."""
    assert hpa().desired(0, 4, pods(109, 109, 109, 109))[0] == 4
    assert hpa().desired(0, 4, pods(91, 91, 91, 91))[0] == 4
    assert hpa().desired(0, 4, pods(111, 111, 111, 111))[0] == 5  # ceil(4 * 1.11)


def test_missing_metrics_assumed_zero_on_scale_up_and_target_on_scale_down() -> None:
    """#algorithm-details: pods missing metrics count as 0% of the target when scaling up and
    100% when scaling down; the average is recomputed over all pods."""
    # up: (200 + 200 + 0) / 3 = 133.3 -> ceil(1.333 * 3) = 4
    assert hpa().desired(0, 3, pods(200, 200, None))[0] == 4
    # down: (50 + 50 + 100) / 3 = 66.7 -> ceil(0.667 * 3) = 2
    assert hpa().desired(0, 3, pods(50, 50, None))[0] == 2


def test_missing_metrics_that_reverse_direction_cancel_scaling() -> None:
    """#algorithm-details: "If ... the new ratio reverses the scale direction, or is within the
    tolerance, the controller doesn't take any scaling action." (120 + 0) / 2 = 60 < target."""
    assert hpa().desired(0, 2, pods(120, None))[0] == 2


def test_pending_pods_are_set_aside() -> None:
    """#algorithm-details: pods not yet running are set aside; only running pods' metrics count."""
    samples = [PodSample(300), PodSample(None, pending=True)]
    assert hpa().desired(0, 2, samples)[0] == 3  # ceil(3.0 * 1 ready pod)


def test_scale_down_policies_select_max_change() -> None:
    """#scaling-policies: Pods 4/60s and Percent 10/60s from 80 replicas toward 10: the first step
    removes 8, at 72 replicas 10% is 7.2 rounded to 8, and once 40 or fewer remain the Pods policy
    removes 4 at a time; each policy allows one change per 60 s period."""
    down = rules(("Pods", 4, 60), ("Percent", 10, 60))
    autoscaler = hpa(down=down, hi=100)
    current, history = 80, [80]
    for tick in range(60):
        # every pod reports a metric that asks for ceil(9.5) = 10 replicas in total
        current, _ = autoscaler.desired(tick * SYNC, current, pods(*[100 * 9.5 / current] * current))
        if current != history[-1]:
            history.append(current)
    assert history[:3] == [80, 72, 64]  # minus 8, minus 8 (7.2 rounded up)
    assert history == [80, 72, 64, 57, 51, 45, 40, 36, 32, 28, 24, 20, 16, 12, 10]


def test_scale_down_select_min_limits_to_five_pods_per_minute() -> None:
    """#example-limit-scale-down-rate: Percent 10/60s plus Pods 5/60s with selectPolicy Min removes
    at most 5 pods per minute (the policy affecting the fewest pods)."""
    down = rules(("Percent", 10, 60), ("Pods", 5, 60), select="Min")
    autoscaler = hpa(down=down)
    first, _ = autoscaler.desired(0, 80, pods(*[10.0] * 80))
    assert first == 75
    assert autoscaler.desired(SYNC, 75, pods(*[10.0] * 75))[0] == 75  # same 60 s period: no more
    assert autoscaler.desired(60 + SYNC, 75, pods(*[10.0] * 75))[0] == 70


def test_scale_down_disabled() -> None:
    """#example-disable-scale-down: selectPolicy Disabled never scales down."""
    autoscaler = hpa(down=rules(("Pods", 1, 60), select="Disabled"))
    assert autoscaler.desired(0, 5, pods(*[1.0] * 5))[0] == 5


def test_default_scale_up_doubles_or_adds_four_every_15_seconds() -> None:
    """#default-behavior: scale-up allows the higher of 100% and 4 pods every 15 s, no window."""
    up = rules(("Percent", 100, 15), ("Pods", 4, 15))
    autoscaler = hpa(up=up)
    current, history = 1, []
    for tick in range(4):
        current, _ = autoscaler.desired(tick * SYNC, current, pods(*[10_000.0] * current))
        history.append(current)
    assert history == [5, 10, 20, 40]


def test_scale_down_stabilization_uses_highest_recommendation_in_window() -> None:
    """#stabilization-window: with a 300 s window, the highest recommendation within the window is
    used, so a short dip does not scale down; after the window it does."""
    autoscaler = hpa(down=rules(("Percent", 100, 15), window=300))
    assert autoscaler.desired(0, 4, pods(100, 100, 100, 100))[0] == 4
    for t in range(SYNC, 300, SYNC):
        assert autoscaler.desired(t, 4, pods(25, 25, 25, 25))[0] == 4, t
    assert autoscaler.desired(300, 4, pods(25, 25, 25, 25))[0] == 1


def test_scale_up_stabilization_uses_lowest_recommendation_in_window() -> None:
    """#configurable-scaling-behavior (stabilizationWindowSeconds for scaleUp): the lowest
    recommendation in the window wins, so a spike shorter than the window does not scale up."""
    autoscaler = hpa(up=rules(("Percent", 1000, 15), window=60))
    assert autoscaler.desired(0, 2, pods(100, 100))[0] == 2
    assert autoscaler.desired(15, 2, pods(300, 300))[0] == 2
    assert autoscaler.desired(75, 2, pods(300, 300))[0] == 6  # t=0 recommendation left the window


def test_min_and_max_bound_the_result() -> None:
    """#algorithm-details / spec: desired replicas stay within minReplicas..maxReplicas."""
    assert hpa(hi=3).desired(0, 2, pods(500, 500))[0] == 3
    assert hpa(lo=2).desired(0, 3, pods(1, 1, 1))[0] == 2


# --- the simulator over a spec and signal ---------------------------------------------------------

def tiny_spec(**autoscaling):
    return parse_spec({
        "name": "sim",
        "model": {"source": "/models/tiny", "parameters_billion": 0.001},
        "backend": "cpu-python",
        "cluster": {"gpus_per_node": 1},
        "serving": {"replicas": {"min": 1, "max": 2}, "autoscaling": {
            "target": 1.0,
            "scale_up": {"stabilization_window_seconds": 0,
                         "policies": [{"type": "Pods", "value": 1, "period_seconds": 60}]},
            "scale_down": {"stabilization_window_seconds": 120,
                           "policies": [{"type": "Pods", "value": 1, "period_seconds": 60}]},
            "provisioning": {"node_boot_s": 60, "image_pull_s": 30, "model_load_s": 90},
            **autoscaling}},
    })


def test_simulation_provisions_second_group_after_delays_and_scales_in_after_window() -> None:
    """Demand 3x the target: the HPA asks for 2 (max) at once; the new group serves after node boot +
    image pull + model load (180 s); demand drops at 600 s and scale-in waits for the 120 s window."""
    steps = simulate(tiny_spec(), [(0, 3.0), (600, 0.2), (900, 0.2)])
    by_time = {s.time_s: s for s in steps}
    assert by_time[0].desired == 2 and by_time[0].ready == 1 and by_time[0].metric == 3.0
    assert by_time[165].ready == 1 and by_time[180].ready == 2
    assert by_time[180].metric == 1.5  # demand split over two serving groups
    # the last high recommendation (t=585) leaves the 120 s window at t=705 (strictly older)
    assert by_time[690].desired == 2 and by_time[705].desired == 1
    assert steps[-1].time_s == 900


def test_missing_metrics_while_loading_hold_scale_up() -> None:
    """While the new group loads its model it has no metrics; with max 3 and demand only slightly
    above target after the split, the HPA does not add a third group before the second serves."""
    spec = tiny_spec()
    spec = spec.model_copy(update={"serving": spec.serving.model_copy(
        update={"replicas": spec.serving.replicas.model_copy(update={"max": 3})})})
    steps = simulate(spec, [(0, 2.5), (300, 2.5)])
    assert max(s.desired for s in steps if s.time_s < 180) == 3  # ceil(2.5) asked at once
    assert all(s.desired <= 3 for s in steps)


def test_cli_writes_csv_and_rejects_bad_signal(tmp_path, capsys) -> None:
    """`megapod autoscale simulate`: output columns; a bad signal is one line, exit 2, no output."""
    spec_path = tmp_path / "spec.yaml"
    import yaml

    spec_path.write_text(yaml.safe_dump(tiny_spec().model_dump(mode="json")))
    signal = tmp_path / "signal.csv"
    signal.write_text("time_s,demand\n0,3\n300,3\n")
    out = tmp_path / "out.csv"
    assert main(["--spec", str(spec_path), "--signal", str(signal), "--out", str(out),
                 "--model-load-s", "0"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["time_s", "demand", "metric", "desired", "ready"]
    assert rows[6]["ready"] == "2"  # 60 + 30 + 0 s => ready at t=90 (6th sync)

    bad = tmp_path / "bad.csv"
    bad.write_text("time,load\n0,1\n")
    out2 = tmp_path / "out2.csv"
    assert main(["--spec", str(spec_path), "--signal", str(bad), "--out", str(out2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time_s,demand" in err[0]
    assert not out2.exists()


def test_read_signal_rejects_negative_demand(tmp_path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("time_s,demand\n0,-1\n")
    with pytest.raises(ValueError, match="demand >= 0"):
        read_signal(path)


def test_write_steps_leaves_metric_empty_when_unseen() -> None:
    buffer = io.StringIO()
    write_steps(simulate(tiny_spec(), [(0, 0.0)]), buffer)
    assert buffer.getvalue().splitlines()[1] == "0,0,0,1,1"
