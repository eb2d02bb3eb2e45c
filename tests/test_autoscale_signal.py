"""The local run's default scaling signal rises under streaming load and falls back after it.

Real tritonserver serves the repository steps.publish renders for tiny-local: the CPU backend
standing in for tensorrtllm_backend v0.12.0, whose inflight_batcher_llm/src/custom_metrics_reporter/
custom_metrics_reporter.cc publishes nv_trt_llm_request_metrics{request_type=active|max|scheduled|
context} and nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max|free|used|tokens_per} (no
`waiting`, no `fraction`). Real Prometheus scrapes it with the labels the chart's PodMonitor adds and
evaluates the chart's own recording rules (helm template); the load generator streams concurrently.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from steps.autoscale.loadgen import LoadPlan, LoadResult, run_load
from steps.autoscale.simulator import simulate
from steps.contract import CPU_POINTER
from steps.publish import CPU_TEMPLATES, render_repository
from tests.support.prometheus import PrometheusProcess, ScrapeTarget, chart_rule_groups, start_prometheus
from tests.support.triton import TritonProcess, start_triton
from workflows.backend_metrics import default_signal
from workflows.chart_values import SCALING_SERIES, release_fullname, scaling_series
from workflows.spec import Spec, load_spec

TINY_LOCAL = Path(__file__).resolve().parents[1] / "workflows" / "examples" / "tiny-local.yaml"
RELEASE = "tiny-local"
SETTLE_S = 20.0  # gauges are scraped every second, rules evaluated every second


@pytest.fixture
def spec() -> Spec:
    return load_spec(TINY_LOCAL)


@pytest.fixture
def served(spec: Spec, tiny_model: Path, tmp_path: Path) -> Iterator[tuple[TritonProcess, PrometheusProcess]]:
    """tritonserver on the published tiny-local repository, and Prometheus scraping it as group 0."""
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / CPU_POINTER).write_text(json.dumps({"checkpoint": str(tiny_model)}))
    repository = render_repository(
        spec, tmp_path / "engine", tiny_model, CPU_TEMPLATES, tmp_path / "repository"
    )
    server = start_triton(repository, tmp_path)
    lws = release_fullname(RELEASE)
    labels = {"namespace": spec.cluster.namespace, "lws": lws, "group_index": "0", "pod": f"{lws}-0"}
    address = server.metrics_url.removeprefix("http://").removesuffix("/metrics")
    try:
        prometheus = start_prometheus(
            tmp_path / "prom", [ScrapeTarget(address, labels)], rule_groups=chart_rule_groups(spec, RELEASE)
        )
    except Exception:
        server.stop()
        raise
    yield server, prometheus
    prometheus.stop()
    server.stop()


def group_value(prometheus: PrometheusProcess, series: str) -> float:
    """Group 0's recorded value now (one series per group)."""
    (sample,) = prometheus.wait_for(f'{series}{{group_index="0"}}', timeout_s=30)
    return float(sample["value"][1])


def wait_until(prometheus: PrometheusProcess, series: str, done, timeout_s: float = SETTLE_S) -> float:
    """Poll group 0's value until done(value) holds (bounded); return the last value."""
    deadline = time.monotonic() + timeout_s
    while not done(value := group_value(prometheus, series)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


@pytest.mark.integration
def test_default_signal_rises_under_streaming_load_and_falls_after(spec: Spec, served) -> None:
    """tiny-local's own load stages (ramp 1 stream, hold 6, drop 0; 2 batch slots): the default
    signal is 0 idle, fills every slot while the hold stage streams, and falls back to 0 in the drop
    stage; the HPA simulator (what the local run's autoscale stage runs) scales to 2 groups and back
    on exactly these samples."""
    server, prometheus = served
    scaling = spec.serving.autoscaling
    # tiny-local scales on the default signal of its backend
    assert scaling.metric == default_signal(str(spec.backend), spec.trtllm_version)
    signal, kv_cache = scaling_series(spec), SCALING_SERIES["kv_cache_utilization"]
    assert wait_until(prometheus, signal, lambda v: v == 0) == 0  # idle before the load

    plan = LoadPlan.from_spec(spec.loadtest, str(spec.backend))
    results: list[LoadResult] = []
    load = threading.Thread(target=lambda: results.append(run_load(server.http_url, plan)))
    started = time.monotonic()
    load.start()
    samples: list[tuple[float, float]] = []
    kv_peak = 0.0
    while load.is_alive():
        samples.append((time.monotonic() - started, group_value(prometheus, signal)))
        kv_peak = max(kv_peak, group_value(prometheus, kv_cache))
        time.sleep(0.5)
    load.join()

    (result,) = results
    finished = [r for r in result.records if r.error is None]
    assert len(finished) > spec.build.max_batch_size and all(r.tokens == plan.osl for r in finished)
    hold_start, hold_end = (sum(st.duration_s for st in plan.stages[:n]) for n in (1, 2))
    during = [v for t, v in samples if hold_start + 3 <= t <= hold_end]  # rules lag a scrape or two
    after = [v for t, v in samples if t >= hold_end + 5]
    # slots busy (a sample may catch one between a stream's end and the next start): above target
    assert during and max(during) == 1.0 and sum(during) / len(during) > scaling.target
    assert kv_peak > 0
    assert after and after[-1] == 0  # the drop stage empties the slots: the HPA can scale in
    desired = [step.desired for step in simulate(spec, samples)]
    assert max(desired) == 2 and desired[-1] == 1
