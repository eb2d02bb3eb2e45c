"""The Kubernetes HPA v2 replica algorithm as a pure, clock-free object.

Follows the upstream controller (pkg/controller/podautoscaler: replica_calculator.go
`calcPlainMetricReplicas`, horizontal.go `stabilizeRecommendationWithBehaviors`,
`convertDesiredReplicasWithBehaviorRate`, `calculateScaleUp/DownLimit...`) for a Pods metric with an
AverageValue target, which is how the chart scales LeaderWorkerSet groups. Time is passed in by the
caller, so the same object drives the simulator and unit tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workflows.spec import AutoscalingSpec, ScalingRules


@dataclass(frozen=True)
class PodSample:
    """What the HPA sees of one leader pod: its metric (None = missing) and whether it is Pending."""

    value: float | None
    pending: bool = False


@dataclass
class _Event:
    time_s: float
    change: int  # replicas added (> 0) or removed (> 0 in the scale-down list)


@dataclass
class HorizontalPodAutoscaler:
    """One HPA: min/max, target, tolerance and behaviour; remembers recommendations and scale events."""

    target: float
    min_replicas: int
    max_replicas: int
    scale_up: ScalingRules
    scale_down: ScalingRules
    tolerance: float = 0.1
    _recommendations: list[tuple[float, int]] = field(default_factory=list)
    _up_events: list[_Event] = field(default_factory=list)
    _down_events: list[_Event] = field(default_factory=list)

    @classmethod
    def from_spec(
        cls, autoscaling: AutoscalingSpec, min_replicas: int, max_replicas: int
    ) -> HorizontalPodAutoscaler:
        """Build the HPA the chart renders from the spec's autoscaling section."""
        return cls(
            target=autoscaling.target,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_up=autoscaling.scale_up,
            scale_down=autoscaling.scale_down,
            tolerance=autoscaling.tolerance,
        )

    def metric_replicas(self, current: int, pods: list[PodSample]) -> tuple[int, float | None]:
        """Replicas the metric asks for before behaviour (calcPlainMetricReplicas), and the average seen.

        Pending pods are ignored; pods without a metric are "missing": assumed at the target when
        scaling down and at 0 when scaling up, and no action is taken if that flips the direction.
        """
        observed = [p.value for p in pods if not p.pending and p.value is not None]
        missing = sum(1 for p in pods if not p.pending and p.value is None)
        if not observed:
            return current, None  # the controller errors out: "did not receive metrics"; no change
        average = sum(observed) / len(observed)
        ratio = average / self.target
        if not missing:
            if abs(1.0 - ratio) <= self.tolerance:
                return current, average
            return math.ceil(ratio * len(observed)), average
        fill = self.target if ratio < 1.0 else 0.0
        values = [*observed, *([fill] * missing)]
        new_ratio = sum(values) / len(values) / self.target
        if abs(1.0 - new_ratio) <= self.tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
            return current, average
        proposed = math.ceil(new_ratio * len(values))
        if (new_ratio < 1.0 and proposed > current) or (new_ratio > 1.0 and proposed < current):
            return current, average
        return proposed, average

    def desired(self, now_s: float, current: int, pods: list[PodSample]) -> tuple[int, float | None]:
        """One sync: the new desired replicas (recorded as a scale event if it changes) and the average."""
        if current > self.max_replicas or current < self.min_replicas:
            desired = min(max(current, self.min_replicas), self.max_replicas)
            self._record(now_s, current, desired)
            return desired, None
        proposal, average = self.metric_replicas(current, pods)
        stabilized = self._stabilize(now_s, current, proposal)
        desired = self._limit_rate(now_s, current, stabilized)
        self._record(now_s, current, desired)
        return desired, average

    def _stabilize(self, now_s: float, current: int, proposal: int) -> int:
        """Scale-up takes the min, scale-down the max recommendation within its window."""
        up_cutoff = now_s - self.scale_up.stabilization_window_seconds
        down_cutoff = now_s - self.scale_down.stabilization_window_seconds
        up = min([proposal, *(r for t, r in self._recommendations if t > up_cutoff)])
        down = max([proposal, *(r for t, r in self._recommendations if t > down_cutoff)])
        oldest_kept = min(up_cutoff, down_cutoff)
        self._recommendations = [(t, r) for t, r in self._recommendations if t > oldest_kept]
        self._recommendations.append((now_s, proposal))
        return min(max(current, up), down)

    def _limit_rate(self, now_s: float, current: int, desired: int) -> int:
        """Apply the behaviour policies (periodSeconds, selectPolicy) and min/max."""
        if desired > current:
            limit = max(self._scale_limit(now_s, current, self.scale_up, up=True), current)
            return min(desired, self.max_replicas, limit)
        if desired < current:
            limit = min(self._scale_limit(now_s, current, self.scale_down, up=False), current)
            return max(desired, self.min_replicas, limit)
        return desired

    def _scale_limit(self, now_s: float, current: int, rules: ScalingRules, *, up: bool) -> int:
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            added = _changed_within(self._up_events, now_s, policy.period_seconds)
            removed = _changed_within(self._down_events, now_s, policy.period_seconds)
            start = current - added + removed
            if policy.type == "Pods":
                proposals.append(start + policy.value if up else start - policy.value)
            elif up:
                # rounded up, else a small group count could never grow (upstream comment)
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
            else:
                proposals.append(int(start * (1 - policy.value / 100)))
        # "Max" = the policy allowing the biggest change: the highest limit up, the lowest down.
        biggest_change = max if up else min
        smallest_change = min if up else max
        return (biggest_change if rules.select_policy == "Max" else smallest_change)(proposals)

    def _record(self, now_s: float, current: int, desired: int) -> None:
        if desired > current:
            self._up_events.append(_Event(now_s, desired - current))
        elif desired < current:
            self._down_events.append(_Event(now_s, current - desired))
        longest = max(p.period_seconds for p in (*self.scale_up.policies, *self.scale_down.policies))
        self._up_events = [e for e in self._up_events if e.time_s > now_s - longest]
        self._down_events = [e for e in self._down_events if e.time_s > now_s - longest]


def _changed_within(events: list[_Event], now_s: float, period_s: int) -> int:
    """Replicas changed by events newer than `period_s` (getReplicasChangePerPeriod)."""
    return sum(e.change for e in events if e.time_s > now_s - period_s)
