"""The per-backend metrics table and what `megapod validate` refuses with it.

Rows and the upstream files they were read from:
- trtllm-engine from 0.12.0: tensorrtllm_backend v0.12.0 inflight_batcher_llm/src/custom_metrics_reporter/
  custom_metrics_reporter.cc (request_type active|max|scheduled|context, kv_cache_block_type
  max|free|used|tokens_per) and model_instance_state.cc (compute_start_ns stamped before
  enqueueRequests; statistics reported with the final response).
- trtllm-engine from 0.18.0: the same files at v0.18.0 and v0.19.0 (`waiting`, `reused`, `fraction`).
- trtllm-pytorch: tensorrtllm_backend v0.19.0 all_models/llmapi/tensorrt_llm/1/model.py (no metric
  family; execute() returns at once) and python_backend r25.03 src/pb_metric_reporter.cc (statistics
  reported when execute() returns).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from workflows.backend_metrics import (
    CPU_PYTHON,
    KV_CACHE_METRICS,
    REQUEST_METRICS,
    contract,
    default_signal,
    produced_signals,
)
from workflows.cli import app
from workflows.spec import SpecError, parse_spec


def spec_data(backend: str, **autoscaling) -> dict:
    return {
        "name": "m",
        "model": {"source": "/models/m", "parameters_billion": 1},
        "backend": backend,
        "serving": {"autoscaling": autoscaling},
    }


@pytest.mark.parametrize(
    ("version", "waiting", "fraction"),
    [("0.12.0", False, False), ("0.16.0", False, False), ("0.18.0", True, True), ("1.0.0", True, True)],
)
def test_engine_labels_follow_the_version(version: str, waiting: bool, fraction: bool) -> None:
    found = contract("trtllm-engine", version)
    assert found.publishes(REQUEST_METRICS, "active") and found.publishes(KV_CACHE_METRICS, "used")
    assert found.publishes(REQUEST_METRICS, "waiting") is waiting
    assert found.publishes(KV_CACHE_METRICS, "fraction") is fraction


def test_the_cpu_stand_in_publishes_a_subset_of_the_0_12_gauges() -> None:
    engine = contract("trtllm-engine", "0.12.0")
    assert CPU_PYTHON.families and all(family in engine.families for family in CPU_PYTHON.families)


def test_signals_per_backend() -> None:
    # queue time and pending count are no signal on any backend; latency needs end-to-end durations
    assert produced_signals("trtllm-engine", "0.12.0") == [
        "batch_slot_occupancy",
        "kv_cache_utilization",
        "request_latency_ms",
        "request_rate",
    ]
    assert "waiting_requests" in produced_signals("trtllm-engine", "0.19.0")
    assert produced_signals("trtllm-pytorch", "1.0.0") == ["request_rate"]
    assert produced_signals("cpu-python") == ["batch_slot_occupancy", "kv_cache_utilization", "request_rate"]
    assert default_signal("trtllm-engine", "0.12.0") == "batch_slot_occupancy"
    assert default_signal("trtllm-pytorch", "1.0.0") == "request_rate"


def test_defaults_fill_metric_and_target() -> None:
    engine = parse_spec(spec_data("trtllm-engine")).serving.autoscaling
    assert (engine.metric, engine.target) == ("batch_slot_occupancy", 0.8)
    pytorch = parse_spec(spec_data("trtllm-pytorch", target=3)).serving.autoscaling
    assert (pytorch.metric, pytorch.target) == ("request_rate", 3)


@pytest.mark.parametrize(
    ("backend", "autoscaling", "expected"),
    [
        (
            "trtllm-engine",
            {"metric": "waiting_requests", "target": 2},
            "serving.autoscaling.metric waiting_requests is not produced by backend trtllm-engine "
            "(TensorRT-LLM 0.12.0); use one of: batch_slot_occupancy, kv_cache_utilization, "
            "request_latency_ms, request_rate",
        ),
        (
            "trtllm-engine",
            {"metric": "queue_compute_ratio"},
            "serving.autoscaling.metric queue_compute_ratio is not produced by backend trtllm-engine",
        ),
        (
            "trtllm-pytorch",
            {"metric": "batch_slot_occupancy"},
            "is not produced by backend trtllm-pytorch (TensorRT-LLM 0.19.0); use one of: request_rate",
        ),
        ("cpu-python", {"metric": "request_latency_ms", "target": 500}, "use one of: batch_slot_occupancy"),
        ("trtllm-pytorch", {}, "serving.autoscaling.target is required for metric request_rate"),
    ],
)
def test_validate_refuses_what_the_backend_cannot_produce(
    backend: str, autoscaling: dict, expected: str, tmp_path: Path
) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(spec_data(backend, **autoscaling))
    (problem,) = raised.value.problems
    assert expected in problem
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_data(backend, **autoscaling)))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr
