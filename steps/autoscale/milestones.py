"""Milestones (when each layer reacted, from load start) and the spec's expectations as pass/fail.

Pure functions of the timeline and requests tables, so the same numbers come out of a live run, a
replayed one, or a test scenario. When the timeline's cluster rows are simulated (a run without a
Kubernetes API, steps.autoscale.simulated), the milestones and expectations derived from them are
flagged `simulated`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import pandas as pd

from steps.autoscale.simulated import GROUP_DEMAND
from steps.autoscale.timeline import series
from workflows.spec import LoadStage, Spec

MILESTONES = {
    "load_start": "load generator started",
    "signal_above_target": "scaling signal above the HPA target",
    "hpa_scaled_up": "HPA raised desired replicas",
    "new_group_pods_created": "pods of a new group created",
    "new_nodes_ready": "new nodes for a group Ready",
    "new_group_ready": "a new group Ready",
    "first_served_by_new_group": "first request served by a new group",
    "load_drop": "load dropped",
    "scale_in": "HPA lowered desired replicas",
}
# The milestones that come from the cluster's reaction (measured on a cluster, else simulated).
CLUSTER_MILESTONES = frozenset(MILESTONES) - {"load_start", "signal_above_target", "load_drop"}


@dataclass(frozen=True)
class Milestone:
    name: str
    description: str
    time_s: float | None  # seconds from load start; None = not reached
    simulated: bool = False  # derived from the HPA simulator's rows, not from a cluster


@dataclass(frozen=True)
class Expectation:
    name: str
    expected: str
    observed: str
    passed: bool
    simulated: bool = False  # evaluated on simulated groups


def _first(values: pd.Series, predicate) -> float | None:
    hits = values[predicate(values)]
    return float(hits.index[0]) if len(hits) else None


def _first_after(values: pd.Series, start: float | None, predicate) -> float | None:
    if start is None:
        return None
    return _first(values[values.index >= start], predicate)


def load_drop_s(stages: list[LoadStage]) -> float | None:
    """Start of the first stage with less concurrency than the one before it."""
    elapsed = 0.0
    for before, stage in itertools.pairwise(stages):
        elapsed += before.duration_s
        if stage.concurrency < before.concurrency:
            return elapsed
    return None


def is_simulated(timeline: pd.DataFrame) -> bool:
    """True when the timeline's cluster rows come from the HPA simulator."""
    return "simulated" in timeline and bool(timeline["simulated"].any())


def initial_groups(spec: Spec, timeline: pd.DataFrame) -> set[str]:
    """Groups serving at load start (the ones deploy brought up).

    Those with pods at the first sample, and every LWS group index below the replica count at the
    first sample (LWS numbers groups 0..replicas-1 and scales out at the top), else below the spec's
    minimum replicas, which deploy waited for.
    """
    pods = timeline[(timeline["series"] == "group.pods") & (timeline["value"] > 0)]
    groups = set(pods[pods["time_s"] == pods["time_s"].min()]["group"]) if not pods.empty else set()
    replicas = series(timeline, "lws.replicas").dropna()
    if replicas.empty:
        replicas = series(timeline, "hpa.desired").dropna()
    count = int(replicas.iloc[0]) if len(replicas) else spec.serving.replicas.min
    return groups | {str(index) for index in range(count)}


def _new_group_mask(labels: pd.Series, start_groups: set[str]) -> pd.Series:
    """Labels naming a group that was not serving at load start: an LWS group index not among them.

    A label that is no group index (e.g. a bare scrape address) cannot show a new group.
    """
    text = labels.astype(str)
    return text.str.fullmatch(r"\d+") & ~text.isin(start_groups)


def derive_milestones(spec: Spec, timeline: pd.DataFrame, requests: pd.DataFrame) -> list[Milestone]:
    """Every milestone the timeline shows, with its delay from load start."""
    target = spec.serving.autoscaling.target
    groups_signal = timeline[timeline["series"] == "signal"].groupby("time_s")["value"].mean()
    hpa_metric = series(timeline, "hpa.metric")
    average = groups_signal if len(groups_signal.dropna()) else hpa_metric
    desired = series(timeline, "hpa.desired")
    if desired.dropna().empty:
        desired = series(timeline, "lws.replicas")
    start_groups = initial_groups(spec, timeline)
    new = timeline[_new_group_mask(timeline["group"], start_groups)]
    times: dict[str, float | None] = {"load_start": 0.0}
    times["signal_above_target"] = _first(average, lambda v: v > target)
    base = desired.dropna().iloc[0] if len(desired.dropna()) else math.nan
    times["hpa_scaled_up"] = _first(desired, lambda v: v > base)
    group_pods = new[new["series"] == "group.pods"]
    times["new_group_pods_created"] = _first_time(group_pods[group_pods["value"] > 0])
    times["new_nodes_ready"] = _new_nodes_ready(timeline, spec.group_size)
    times["new_group_ready"] = _new_group_ready(new, spec.group_size)
    times["first_served_by_new_group"] = _first_served(new, requests, start_groups)
    times["load_drop"] = load_drop_s(list(spec.loadtest.stages))
    peak = desired[desired.index >= (times["load_drop"] or math.inf)].max() if len(desired) else math.nan
    times["scale_in"] = _first_after(desired, times["load_drop"], lambda v: v < peak)
    simulated = is_simulated(timeline)
    return [Milestone(name, text, times.get(name), simulated and name in CLUSTER_MILESTONES)
            for name, text in MILESTONES.items()]


def _first_time(frame: pd.DataFrame) -> float | None:
    return float(frame["time_s"].min()) if not frame.empty else None


def _new_nodes_ready(timeline: pd.DataFrame, group_size: int) -> float | None:
    """First time as many nodes created after load start are Ready as one group needs."""
    created = timeline[timeline["series"] == "node.created_s"].groupby("group")["value"].max()
    new_nodes = set(created[created > 0].index)
    ready = timeline[(timeline["series"] == "node.ready") & timeline["group"].isin(new_nodes)]
    count = ready.groupby("time_s")["value"].sum()
    return _first(count, lambda v: v >= group_size) if new_nodes else None


def _new_group_ready(new: pd.DataFrame, group_size: int) -> float | None:
    ready = new[(new["series"] == "group.ready") & (new["value"] >= group_size)]
    return _first_time(ready)


def _first_served(new: pd.DataFrame, requests: pd.DataFrame, start_groups: set[str]) -> float | None:
    """From a new group's request rate (Prometheus) or the demand the simulator routes to it, else
    from groups the server named per request."""
    rates = new[new["series"].isin(["requests.rate", GROUP_DEMAND]) & (new["value"] > 0)]
    if not rates.empty:
        return _first_time(rates)
    if requests.empty:
        return None
    named = requests[requests["group"].notna() & _new_group_mask(requests["group"], start_groups)
                     & requests["error"].isna() & (requests["tokens"] > 0)]
    return float(named["start_s"].min()) if not named.empty else None


def check_expectations(spec: Spec, timeline: pd.DataFrame, requests: pd.DataFrame,
                       milestones: list[Milestone]) -> list[Expectation]:
    """The spec's loadtest.expect entries, each with what was observed and pass/fail."""
    expect = spec.loadtest.expect
    at = {m.name: m.time_s for m in milestones}
    simulated = is_simulated(timeline)
    basis = " (simulated)" if simulated else ""
    results: list[Expectation] = []
    if expect.groups_serving is not None:
        serving_at = _groups_serving_at(timeline, expect.groups_serving)
        bound = expect.within_s if expect.within_s is not None else spec.loadtest.duration_s
        results.append(Expectation(
            "groups_serving", f"{expect.groups_serving} groups serving within {bound} s",
            ("never" if serving_at is None else f"at {serving_at:.0f} s") + basis,
            serving_at is not None and serving_at <= bound, simulated))
    if expect.p95_ttft_ms is not None:
        start = at.get("hpa_scaled_up") or 0.0
        end = at.get("first_served_by_new_group") or at.get("load_drop") or math.inf
        window = requests[(requests["start_s"] >= start) & (requests["start_s"] <= end)]
        ttft = window["ttft_s"].dropna() * 1000
        p95 = float(ttft.quantile(0.95)) if len(ttft) else None
        results.append(Expectation(
            "p95_ttft_ms", f"p95 TTFT <= {expect.p95_ttft_ms:g} ms during scale-up",
            ("no requests" if p95 is None else f"{p95:.0f} ms over {len(ttft)} requests")
            + (" (measured; scale-up window simulated)" if simulated else ""),
            p95 is not None and p95 <= expect.p95_ttft_ms, simulated))
    return results


def _groups_serving_at(timeline: pd.DataFrame, groups: int) -> float | None:
    """First time `groups` groups are serving: LWS ready groups, else leaders with request rate > 0."""
    ready = series(timeline, "lws.ready")
    if len(ready.dropna()):
        return _first(ready, lambda v: v >= groups)
    rates = timeline[(timeline["series"] == "requests.rate") & (timeline["value"] > 0)]
    serving = rates.groupby("time_s")["group"].nunique()
    return _first(serving, lambda v: v >= groups)


def milestones_document(milestones: list[Milestone], expectations: list[Expectation],
                        started_at: float, simulation: str | None = None) -> dict:
    """The milestones.json content; `simulation` says how the simulated entries were made (None: none)."""
    return {
        "load_started_at": started_at,
        "simulation": simulation,
        "milestones": [asdict(m) for m in milestones],
        "expectations": [asdict(e) for e in expectations],
        "passed": all(e.passed for e in expectations),
    }
