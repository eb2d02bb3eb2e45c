"""Server-side metrics per sweep point from Prometheus's HTTP API (instant queries at the point's end
over its window), so a report can show why latency rose: queueing, waiting requests, KV cache,
utilisation. A metric the deployment does not export (no DCGM on CPU) is recorded as null.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

# Below this, rate()/increase() over the window would rarely see two samples.
MIN_WINDOW_S = 5
QUERY_TIMEOUT_S = 10


@dataclass(frozen=True)
class ServerMetric:
    """One PromQL expression (with {w} for the window) and how to label its value."""

    name: str
    unit: str
    stat: str
    expr: str


def _per_success(counter: str) -> str:
    return (
        f"sum(increase({counter}[{{w}}])) / "
        "clamp_min(sum(increase(nv_inference_request_success[{w}])), 1) / 1000"
    )


SERVER_METRICS = (
    ServerMetric("queue_time", "ms", "avg", _per_success("nv_inference_queue_duration_us")),
    ServerMetric("compute_time", "ms", "avg", _per_success("nv_inference_compute_infer_duration_us")),
    ServerMetric("requests_succeeded", "requests", "sum", "sum(increase(nv_inference_request_success[{w}]))"),
    ServerMetric("requests_failed", "requests", "sum", "sum(increase(nv_inference_request_failure[{w}]))"),
    # Triton's pending count stays near zero on TensorRT-LLM (the executor holds the requests):
    # the executor's own gauges say how full it was (workflows/backend_metrics.py has which exist).
    ServerMetric(
        "pending_requests",
        "requests",
        "max",
        "max_over_time(sum(nv_inference_pending_request_count)[{w}:1s])",
    ),
    ServerMetric(
        "trtllm_active_requests",
        "requests",
        "max",
        'max_over_time(sum(nv_trt_llm_request_metrics{{request_type="active"}})[{w}:1s])',
    ),
    ServerMetric(
        "batch_slot_occupancy",
        "fraction",
        "max",
        'max_over_time((sum(nv_trt_llm_request_metrics{{request_type="active"}})'
        ' / clamp_min(sum(nv_trt_llm_request_metrics{{request_type="max"}}), 1))[{w}:1s])',
    ),
    ServerMetric(  # TensorRT-LLM 0.18 on; null before
        "trtllm_waiting_requests",
        "requests",
        "max",
        'max_over_time(sum(nv_trt_llm_request_metrics{{request_type="waiting"}})[{w}:1s])',
    ),
    ServerMetric(
        "kv_cache_utilization",
        "fraction",
        "max",
        'max_over_time((sum(nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="used"}})'
        ' / clamp_min(sum(nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="max"}}), 1))[{w}:1s])',
    ),
    ServerMetric("gpu_utilization", "%", "avg", "avg(avg_over_time(DCGM_FI_DEV_GPU_UTIL[{w}]))"),
    ServerMetric("cpu_utilization", "%", "avg", "avg(avg_over_time(nv_cpu_utilization[{w}])) * 100"),
)


def window_seconds(start: float, end: float) -> int:
    """The query window covering the point (whole seconds, at least MIN_WINDOW_S)."""
    return max(MIN_WINDOW_S, math.ceil(end - start))


def instant_query(base_url: str, expr: str, at: float) -> float | None:
    """The first sample of an instant query at `at` (unix seconds), None if the result is empty."""
    query = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(
        f"{base_url.rstrip('/')}/api/v1/query?{query}", timeout=QUERY_TIMEOUT_S
    ) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise ValueError(body.get("error") or "query failed")
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def snapshot(base_url: str, start: float, end: float) -> dict[str, Any]:
    """Every SERVER_METRICS value for the window [start, end]; failures listed, never raised."""
    window = f"{window_seconds(start, end)}s"
    metrics: dict[str, Any] = {}
    errors: list[str] = []
    for metric in SERVER_METRICS:
        expr = metric.expr.format(w=window)
        try:
            value = instant_query(base_url, expr, end)
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            errors.append(f"{metric.name}: {base_url}: {exc}")
            value = None
        metrics[metric.name] = {"value": value, "unit": metric.unit, "stat": metric.stat, "query": expr}
    return {"prometheus": base_url, "time": end, "window": window, "metrics": metrics, "errors": errors}
