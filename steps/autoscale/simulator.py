"""HPA simulator: predict desired and serving groups for a demand series before spending GPU hours.

`megapod autoscale simulate --spec SPEC --signal CSV [--out CSV]`. The signal CSV has columns
`time_s,demand`: demand in units of the scaling metric as one group would see it alone; each ready
group sees demand / ready groups. Every HPA sync period the simulator applies the Kubernetes HPA v2
algorithm (steps.autoscale.hpa) to the leaders of the LeaderWorkerSet and provisions new groups with
the spec's delays: a new group's leader is Pending while its nodes boot and its image pulls (ignored
by the HPA), then runs without metrics while the model loads (a "missing" pod: tritonserver starts
its metrics endpoint only after loading), then serves. Scale-in removes the highest group first, as
the LWS controller does. Output: one row per sync, `time_s,demand,metric,desired,ready`.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from steps.autoscale.hpa import HorizontalPodAutoscaler, PodSample
from workflows.spec import Provisioning, Spec, SpecError, load_spec

OUTPUT_COLUMNS = ("time_s", "demand", "metric", "desired", "ready")


class SignalError(ValueError):
    """A signal CSV that cannot be simulated."""


@dataclass(frozen=True)
class Group:
    """One LWS group: when it was created and the delays that bring it to serving."""

    created_s: float
    metrics_at_s: float  # leader leaves Pending: nodes booted, image pulled, model loading
    ready_at_s: float

    @classmethod
    def start(cls, now_s: float, delays: Provisioning) -> Group:
        running = now_s + delays.node_boot_s + delays.image_pull_s
        return cls(now_s, running, running + delays.model_load_s)

    def sample(self, now_s: float, per_group_demand: float) -> PodSample:
        """The leader as the HPA sees it at `now_s`."""
        if now_s < self.metrics_at_s:
            return PodSample(None, pending=True)
        if now_s < self.ready_at_s:
            return PodSample(None)
        return PodSample(per_group_demand)


@dataclass(frozen=True)
class Step:
    """One simulated HPA sync."""

    time_s: float
    demand: float
    metric: float | None
    desired: int
    ready: int
    # The groups after this sync (index = LWS group index), for callers that chart each group;
    # not part of the CSV.
    groups: tuple[Group, ...] = ()


def read_signal(path: Path) -> list[tuple[float, float]]:
    """Read `time_s,demand` rows, sorted by time; raise SignalError naming the bad row."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"time_s", "demand"} <= set(reader.fieldnames):
                got = reader.fieldnames
                raise SignalError(f"{path}: needs a header with columns time_s,demand (got {got})")
            rows = [_signal_row(path, n, row) for n, row in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise SignalError(f"{path}: no such signal file") from None
    if not rows:
        raise SignalError(f"{path}: no rows; give at least one time_s,demand row")
    return sorted(rows)


def _signal_row(path: Path, line: int, row: dict[str, str]) -> tuple[float, float]:
    try:
        time_s, demand = float(row["time_s"]), float(row["demand"])
    except (TypeError, ValueError):
        raise SignalError(f"{path}:{line}: time_s and demand must be numbers (got {row})") from None
    if not (math.isfinite(time_s) and math.isfinite(demand)) or demand < 0:
        raise SignalError(f"{path}:{line}: time_s must be finite and demand >= 0 (got {row})")
    return time_s, demand


def simulate(
    spec: Spec, signal: list[tuple[float, float]], provisioning: Provisioning | None = None
) -> list[Step]:
    """Run the HPA over the signal (held constant between points) every sync period."""
    autoscaling = spec.serving.autoscaling
    delays = provisioning or autoscaling.provisioning
    bounds = spec.serving.replicas
    hpa = HorizontalPodAutoscaler.from_spec(autoscaling, bounds.min, bounds.max)
    times = [t for t, _ in signal]
    start_s, end_s = times[0], times[-1]
    # The deployment starts with min groups already serving (deploy waited for them).
    groups = [Group(start_s, start_s, start_s)] * bounds.min
    steps: list[Step] = []
    sync = autoscaling.sync_period_s
    for tick in range(int((end_s - start_s) // sync) + 1):
        now = start_s + tick * sync
        demand = signal[bisect_right(times, now) - 1][1]
        ready = sum(1 for g in groups if g.ready_at_s <= now)
        per_group = demand / ready if ready else 0.0
        desired, metric = hpa.desired(now, len(groups), [g.sample(now, per_group) for g in groups])
        groups = groups[:desired] + [Group.start(now, delays) for _ in range(desired - len(groups))]
        steps.append(Step(now, demand, metric, desired, ready, tuple(groups)))
    return steps


def write_steps(steps: list[Step], out) -> None:
    """Write the steps as CSV (metric empty when the HPA saw no metric)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    for s in steps:
        metric = "" if s.metric is None else f"{s.metric:.6g}"
        writer.writerow([f"{s.time_s:g}", f"{s.demand:g}", metric, s.desired, s.ready])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megapod autoscale simulate",
        description="Predict HPA desired and ready groups for a demand series (HPA v2 algorithm).",
    )
    parser.add_argument("--spec", type=Path, required=True, help="deployment spec (YAML)")
    parser.add_argument("--signal", type=Path, required=True, help="CSV with columns time_s,demand")
    parser.add_argument("--out", type=Path, help="output CSV (default: stdout)")
    for name in Provisioning.model_fields:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, metavar="S",
                            help=f"override spec serving.autoscaling.provisioning.{name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 on success, 2 on bad input (one line on stderr)."""
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        signal = read_signal(args.signal)
        overrides = {k: getattr(args, k) for k in Provisioning.model_fields if getattr(args, k) is not None}
        if any(v < 0 for v in overrides.values()):
            raise SignalError(f"provisioning delays must be >= 0 seconds (got {overrides})")
        delays = spec.serving.autoscaling.provisioning.model_copy(update=overrides)
    except (SpecError, SignalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    steps = simulate(spec, signal, delays)
    if args.out is None:
        write_steps(steps, sys.stdout)
        return 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        write_steps(steps, handle)
    tmp.replace(args.out)  # never leave a half-written CSV under the final name
    return 0


if __name__ == "__main__":
    sys.exit(main())
