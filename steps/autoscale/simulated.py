"""The cluster's reaction simulated on the measured signal, for load tests without a Kubernetes API.

A local run (`megapod run --local`) serves one real group and has no HPA, LeaderWorkerSet or nodes to
watch. There, the scaling signal sampled from Prometheus (the chart's recorded series for
spec.serving.autoscaling.metric, one value per serving group) is summed into the demand the
deployment sees and fed, sync by sync, to the HPA simulator (steps.autoscale.simulator.simulate: the
HPA v2 algorithm with the spec's behaviour and provisioning delays, exactly what
`megapod autoscale simulate` runs). Its decisions become timeline rows under the names the cluster
samplers use (hpa.*, lws.*, group.*, node.*), flagged `simulated`, so milestones and expectations
derive from them with the same code and the report can say what was simulated.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from steps.autoscale.samplers import Row, row
from steps.autoscale.simulator import Group, Step, simulate
from workflows.spec import Spec

SIMULATED_LABEL = "simulated (HPA v2 algorithm on the measured signal; no cluster)"
SIGNAL = "signal"
GROUP_DEMAND = "group.demand"  # the share of demand the simulator routes to a serving group


def demand_series(rows: Iterable[Row]) -> list[tuple[float, float]]:
    """The measured signal summed over groups, per sample time, starting at load start.

    Before Prometheus has recorded the signal (its rules evaluate every few seconds) the demand is
    taken as 0: the deployment was idle before the load started.
    """
    totals: dict[float, float] = defaultdict(float)
    for r in rows:
        if r["series"] == SIGNAL and not r.get("simulated") and not math.isnan(r["value"]):
            totals[r["time_s"]] += r["value"]
    series = sorted(totals.items())
    if series and series[0][0] > 0:
        series.insert(0, (0.0, 0.0))
    return series


def simulated_rows(spec: Spec, rows: list[Row]) -> list[Row]:
    """Timeline rows of the simulated HPA, groups and nodes over the sampled period ([] without signal)."""
    signal = demand_series(rows)
    if not signal:
        return []
    end_s = max(r["time_s"] for r in rows)
    if end_s > signal[-1][0]:
        signal.append((end_s, signal[-1][1]))  # hold the last value to the last sample
    return [r for step in simulate(spec, signal) for r in step_rows(spec, step)]


def step_rows(spec: Spec, step: Step) -> list[Row]:
    """One simulated sync as rows: the HPA, the LeaderWorkerSet, each group and the new groups' nodes."""
    t, size = step.time_s, spec.group_size
    node_boot_s = spec.serving.autoscaling.provisioning.node_boot_s

    def sim(series: str, value: float | None, group: str = "") -> Row:
        return row(t, series, value, group, simulated=True)

    serving = [g for g in step.groups if g.ready_at_s <= t]
    share = step.demand / len(serving) if serving else 0.0
    rows = [sim("hpa.desired", step.desired), sim("hpa.metric", step.metric),
            sim("hpa.target", spec.serving.autoscaling.target),
            sim("lws.replicas", step.desired), sim("lws.ready", len(serving))]
    nodes_ready = 0
    for index, group in enumerate(step.groups):
        rows += [sim("group.pods", size, str(index)),
                 sim("group.running", size if group.metrics_at_s <= t else 0, str(index)),
                 sim("group.ready", size if group.ready_at_s <= t else 0, str(index)),
                 sim(GROUP_DEMAND, share if group.ready_at_s <= t else 0.0, str(index))]
        if not _added(group, step):
            nodes_ready += size  # deploy's groups run on nodes that were there before the load
            continue
        booted = group.created_s + node_boot_s <= t
        nodes_ready += size if booted else 0
        for node in range(size):  # the nodes the cluster autoscaler adds for this group
            name = f"simulated-node-{index}-{node}"
            rows += [sim("node.created_s", group.created_s, name), sim("node.ready", booted, name)]
    rows.append(sim("nodes.ready", nodes_ready))
    return rows


def _added(group: Group, step: Step) -> bool:
    """A group the simulator added (the ones deploy brought up exist from the first sync)."""
    return group.created_s > step.groups[0].created_s
