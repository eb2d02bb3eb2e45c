"""`python -m steps.autoscale --spec SPEC --url HOST:PORT [--prometheus URL] --out DIR`.

Drives the spec's staged load while sampling the HPA, the LeaderWorkerSet, pods, nodes and
Prometheus; writes timeline.parquet, requests.parquet and milestones.json to --out; exits 1 when an
expectation from the spec failed (after writing everything), 2 on bad input. Without a Kubernetes
API (a local run) the HPA simulator decides replicas from the signal sampled in Prometheus
(steps.autoscale.simulated), and everything derived from it is marked simulated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from steps.autoscale.loadgen import LoadGenerator, LoadPlan
from steps.autoscale.milestones import (
    check_expectations,
    derive_milestones,
    is_simulated,
    milestones_document,
)
from steps.autoscale.samplers import (
    KubeWatcher,
    PrometheusSampler,
    Row,
    hpa_rows,
    lws_rows,
    node_rows,
    pod_rows,
    release_lws_name,
    row,
)
from steps.autoscale.simulated import SIMULATED_LABEL, simulated_rows
from steps.autoscale.timeline import requests_frame, timeline_frame, write_parquet
from steps.contract import contract_for
from workflows.chart_values import chart_values, scaling_series
from workflows.spec import Spec, SpecError, load_spec

log = logging.getLogger("megapod.autoscale")


class Sampler:
    """Samples every source every interval from a background thread into one list of rows."""

    def __init__(self, spec: Spec, release: str, plan: LoadPlan, *, kube: KubeWatcher | None,
                 prometheus: PrometheusSampler | None) -> None:
        self.spec, self.release, self.lws_name, self.plan = spec, release, release, plan
        self.kube, self.prometheus = kube, prometheus
        self.node_selector = chart_values(spec)["nodeSelector"]
        self.rows: list[Row] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sampler")

    def start(self, t0: float, started_at: float) -> None:
        """Start sampling; time_s counts from the monotonic `t0` (load start)."""
        self.t0, self.started_at = t0, started_at
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and take one last sample."""
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        interval = self.spec.loadtest.sample_interval_s
        while not self._stop.wait(interval - (time.monotonic() - self.t0) % interval):
            self.sample()

    def sample(self) -> None:
        """One sample of every source at the current time."""
        now = round(time.monotonic() - self.t0, 3)
        stage = self.plan.stage_at(now)
        rows = [row(now, "load.concurrency", stage.concurrency if stage else 0,
                    detail=stage.name if stage else "")]
        if self.kube is not None:
            # The chart names the LWS after the release (fullname rules); find it by label.
            self.lws_name = release_lws_name(self.kube.snapshot("lws"), self.release) or self.lws_name
            rows += hpa_rows(now, self.kube.snapshot("hpa"), self.lws_name)
            rows += lws_rows(now, self.kube.snapshot("lws"), self.lws_name)
            rows += pod_rows(now, self.kube.snapshot("pods"), self.lws_name)
            rows += node_rows(now, self.kube.snapshot("nodes"), self.node_selector, self.started_at)
        if self.prometheus is not None:
            rows += self.prometheus.sample(now)
        self.rows.extend(rows)


def run(spec: Spec, url: str, out: Path, *, release: str, kube: KubeWatcher | None,
        prometheus: PrometheusSampler | None, on_load_start: Callable[[], object] | None = None) -> dict:
    """Run the load test and write its three outputs; return the milestones document."""
    plan = LoadPlan.from_spec(spec.loadtest, str(spec.backend))
    sampler = Sampler(spec, release, plan, kube=kube, prometheus=prometheus)
    generator = LoadGenerator(url, plan, on_stage=lambda s, t: log.info(
        "stage %s: concurrency %d for %d s (at %.0f s)", s.name, s.concurrency, s.duration_s, t))
    if kube is not None:
        kube.start()
        if not kube.wait_synced(30):
            log.warning("not every Kubernetes watch listed within 30 s; continuing")
    import asyncio

    started_at, t0 = time.time(), time.monotonic()
    sampler.start(t0, started_at)
    if on_load_start is not None:
        on_load_start()
    try:
        result = asyncio.run(generator.run())
    finally:
        sampler.stop()
        if kube is not None:
            kube.stop()
    if kube is None:
        sampler.rows += simulate_cluster(spec, sampler.rows)
    timeline = timeline_frame(sampler.rows, sampler.lws_name)
    requests = requests_frame(result.rows())
    milestones = derive_milestones(spec, timeline, requests)
    document = milestones_document(milestones, check_expectations(spec, timeline, requests, milestones),
                                   result.started_at, SIMULATED_LABEL if is_simulated(timeline) else None)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(timeline, out / "timeline.parquet")
    write_parquet(requests, out / "requests.parquet")
    tmp = out / ".milestones.json.tmp"
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(out / "milestones.json")
    return document


def simulate_cluster(spec: Spec, rows: list[Row]) -> list[Row]:
    """The HPA simulator's rows on the sampled signal (no cluster to watch), logging its decisions."""
    simulated = simulated_rows(spec, rows)
    if not simulated:
        log.warning("no Kubernetes API and no scaling signal from Prometheus: no replica decisions to show")
        return []
    log.info("no Kubernetes API: replicas %s", SIMULATED_LABEL)
    last = None
    for r in simulated:
        if r["series"] == "hpa.desired" and r["value"] != last:
            log.info("simulated HPA at %.0f s: desired %d groups", r["time_s"], r["value"])
            last = r["value"]
    return simulated


def kube_client(mode: str, kubeconfig: str | None):
    """An ApiClient (in-cluster or kubeconfig), or None when mode is off / auto finds no cluster."""
    if mode == "off":
        return None
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
        config.load_incluster_config()
        return client.ApiClient()
    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if mode == "auto" and not Path(path).exists():
        return None
    return config.new_client_from_config(config_file=path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steps.autoscale", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--url", required=True, help="Triton HTTP endpoint host:port")
    parser.add_argument("--prometheus", help="Prometheus base URL, e.g. http://prometheus:9090")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--release", help="Helm release / LeaderWorkerSet name (default: spec name)")
    parser.add_argument("--kube", choices=["auto", "on", "off"], default="auto",
                        help="sample the cluster (auto: when in a pod or a kubeconfig exists)")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--group-label", default="pod",
                        help="Prometheus label naming the leader (pod on a cluster, instance locally)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 when every expectation passed, 1 when one failed, 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s autoscale %(message)s")
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        api = kube_client(args.kube, args.kubeconfig)
    except Exception as exc:
        print(f"error: cannot reach the Kubernetes API ({exc}); pass --kube off to skip it", file=sys.stderr)
        return 2
    kube = KubeWatcher(api, spec.cluster.namespace) if api is not None else None
    prometheus = (PrometheusSampler(args.prometheus, scaling_series(spec), group_label=args.group_label,
                                    request_model=contract_for(str(spec.backend)).model)
                  if args.prometheus else None)
    release = args.release or spec.name
    document = run(spec, args.url, args.out, release=release, kube=kube, prometheus=prometheus)
    for m in document["milestones"]:
        when = "-" if m["time_s"] is None else f"{m['time_s']:.0f} s"
        log.info("milestone %-26s %s%s", m["name"], when, " (simulated)" if m["simulated"] else "")
    failed = [e for e in document["expectations"] if not e["passed"]]
    for e in failed:
        print(f"error: expectation {e['name']} failed: expected {e['expected']}, observed {e['observed']}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
