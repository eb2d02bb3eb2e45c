"""Which Prometheus metrics each serving backend publishes, per version, and the scaling signals they allow.

One table, read from the upstream sources at the tags named in each row: the spec validator refuses
a scaling metric a backend cannot produce, the chart values record only the signals it produces,
and the CPU backend publishes exactly the families and labels of the version it stands in for.
Standard library only: the CPU backend's Triton models import this inside Triton's python stub.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from workflows.releases import version_key

# Families whose gauges the CPU backend models (names and labels as the upstream reporter writes them).
REQUEST_METRICS = "nv_trt_llm_request_metrics"
KV_CACHE_METRICS = "nv_trt_llm_kv_cache_block_metrics"


@dataclass(frozen=True)
class Family:
    """A gauge family: one gauge per value of `label`, plus the labels model and version."""

    name: str
    description: str  # the HELP text upstream gives the family
    label: str
    values: tuple[str, ...]


class RequestStats(StrEnum):
    """When Triton core records a request's duration (nv_inference_request_duration_us)."""

    # The backend reports statistics with the final response: duration is end to end.
    FINAL_RESPONSE = "final_response"
    # The python backend reports when execute() returns; a decoupled model returns at once, so the
    # duration (and queue time) measures handing the request over, not generating it.
    EXECUTE_RETURN = "execute_return"


@dataclass(frozen=True)
class Contract:
    """What a backend, from one TensorRT-LLM version on, makes Prometheus see for the model `tensorrt_llm`."""

    backend: str
    since: str  # the first version this row holds for (until the next row of the backend)
    families: tuple[Family, ...]
    request_stats: RequestStats
    source: str  # the upstream files and tags this row was read from

    def publishes(self, family: str, value: str) -> bool:
        """Whether the gauge `family{label=value}` exists for this version."""
        return any(f.name == family and value in f.values for f in self.families)


REQUEST_0_12 = ("active", "max", "scheduled", "context")
KV_CACHE_0_12 = ("max", "free", "used", "tokens_per")
RUNTIME_MEMORY = Family(
    "nv_trt_llm_runtime_memory_metrics",
    "TRT LLM runtime memory metrics",
    "memory_type",
    ("cpu", "gpu", "pinned"),
)
INFLIGHT_BATCHER = Family(
    "nv_trt_llm_inflight_batcher_metrics",
    "TRT LLM inflight_batcher-specific metrics",
    "inflight_batcher_specific_metric",
    ("total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests"),
)
GENERAL = Family(
    "nv_trt_llm_general_metrics",
    "General TRT LLM metrics",
    "general_type",
    ("timestamp", "iteration_counter"),
)

# tensorrtllm_backend v0.12.0 inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc
# (request_labels_, kv_cache_labels_, ...; InitializeReporter makes the inflight_batcher group for the
# inflight-batching models megapod builds). Releases until v0.18.0 are taken to have these: the
# reporter's label lists only grew.
TRTLLM_0_12_FAMILIES = (
    Family(REQUEST_METRICS, "TRT LLM request metrics", "request_type", REQUEST_0_12),
    RUNTIME_MEMORY,
    Family(KV_CACHE_METRICS, "TRT LLM KV cache block metrics", "kv_cache_block_type", KV_CACHE_0_12),
    INFLIGHT_BATCHER,
    GENERAL,
)
# v0.18.0 (the same in v0.19.0): `waiting`, `reused` and `fraction`, a disaggregated-serving group, and
# two token-length histograms (nv_llm_input/output_token_len, not gauges: left out here).
TRTLLM_0_18_FAMILIES = (
    Family(REQUEST_METRICS, "TRT LLM request metrics", "request_type", (*REQUEST_0_12, "waiting")),
    RUNTIME_MEMORY,
    Family(
        KV_CACHE_METRICS,
        "TRT LLM KV cache block metrics",
        "kv_cache_block_type",
        (*KV_CACHE_0_12, "reused", "fraction"),
    ),
    Family(
        "nv_trt_llm_disaggregated_serving_metrics",
        "TRT LLM disaggregated serving metrics",
        "disaggregated_serving_type",
        ("kv_cache_transfer_ms", "request_count"),
    ),
    INFLIGHT_BATCHER,
    GENERAL,
)
REPORTER = "inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc"

TRTLLM_ENGINE_0_12 = Contract(
    backend="trtllm-engine",
    since="0.12.0",
    families=TRTLLM_0_12_FAMILIES,
    # model_instance_state.cc: reportBaseMetrics runs when the final response is sent.
    request_stats=RequestStats.FINAL_RESPONSE,
    source=f"tensorrtllm_backend v0.12.0 {REPORTER}, inflight_batcher_llm/src/model_instance_state.cc",
)
TRTLLM_ENGINE_0_18 = Contract(
    backend="trtllm-engine",
    since="0.18.0",
    families=TRTLLM_0_18_FAMILIES,
    request_stats=RequestStats.FINAL_RESPONSE,
    source=f"tensorrtllm_backend v0.18.0 and v0.19.0 {REPORTER}, inflight_batcher_llm/src/"
    "model_instance_state.cc",
)
TRTLLM_PYTORCH_0_19 = Contract(
    backend="trtllm-pytorch",
    since="0.19.0",  # the first tag with the llmapi model
    families=(),  # model.py creates no pb_utils.MetricFamily (nor does TensorRT-LLM main's)
    request_stats=RequestStats.EXECUTE_RETURN,
    source="tensorrtllm_backend v0.19.0 all_models/llmapi/tensorrt_llm/1/model.py, TensorRT-LLM "
    "triton_backend/all_models/llmapi/tensorrt_llm/1/model.py; python_backend r25.03 "
    "src/pb_metric_reporter.cc",
)
# The CPU stand-in publishes the engine's 0.12 request and KV-cache families through pb_utils, but is
# itself a decoupled python model: Triton core's request statistics behave as for any python model.
CPU_PYTHON = Contract(
    backend="cpu-python",
    since="0",
    families=tuple(f for f in TRTLLM_0_12_FAMILIES if f.name in (REQUEST_METRICS, KV_CACHE_METRICS)),
    request_stats=RequestStats.EXECUTE_RETURN,
    source=f"stands in for {TRTLLM_ENGINE_0_12.source}; python_backend r24.08 src/pb_metric_reporter.cc",
)
CONTRACTS = (TRTLLM_ENGINE_0_12, TRTLLM_ENGINE_0_18, TRTLLM_PYTORCH_0_19, CPU_PYTHON)


def contract(backend: str, version: str | None = None) -> Contract:
    """The metrics contract of `backend` at TensorRT-LLM `version` (the CPU backend has none).

    Raises ValueError (one line) for a version older than any row of the backend.
    """
    rows = [c for c in CONTRACTS if c.backend == backend]
    if backend == CPU_PYTHON.backend:
        return CPU_PYTHON
    if version is None:
        raise ValueError(f"backend {backend} needs a TensorRT-LLM version to know its metrics")
    found = [c for c in rows if version_key(c.since) <= version_key(version)]
    if not found:
        oldest = min((c.since for c in rows), key=version_key)
        raise ValueError(
            f"serving.trtllm_version {version}: megapod knows the metrics of backend {backend} from "
            f"TensorRT-LLM {oldest} on; use {oldest} or later"
        )
    return max(found, key=lambda c: version_key(c.since))


# --- scaling signals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    """One per-group scaling signal: the series the chart records and what it needs to exist."""

    name: str
    series: str
    needs: tuple[tuple[str, str], ...] = ()  # (family, label value) gauges it divides
    needs_end_to_end_duration: bool = False
    default_target: float | None = None  # None: the spec must give one (depends on model and GPUs)

    def produced_by(self, backend: Contract) -> bool:
        """Whether every input of this signal exists (and reacts to load) for this backend."""
        durations = backend.request_stats == RequestStats.FINAL_RESPONSE or not self.needs_end_to_end_duration
        return durations and all(backend.publishes(family, value) for family, value in self.needs)


SIGNALS: tuple[Signal, ...] = (
    # Batch slots in use: active / max requests of the executor (max = max_batch_size x micro batches).
    Signal(
        "batch_slot_occupancy",
        "megapod:batch_slots:occupancy",
        needs=((REQUEST_METRICS, "active"), (REQUEST_METRICS, "max")),
        default_target=0.8,
    ),
    # Paged KV-cache blocks in use: used / max blocks.
    Signal(
        "kv_cache_utilization",
        "megapod:kv_cache_blocks:utilization",
        needs=((KV_CACHE_METRICS, "used"), (KV_CACHE_METRICS, "max")),
        default_target=0.8,
    ),
    # Requests the executor holds back for want of a batch slot or KV blocks (TensorRT-LLM 0.18 on).
    Signal("waiting_requests", "megapod:waiting_requests:sum", needs=((REQUEST_METRICS, "waiting"),)),
    # Mean end-to-end request latency (ms) from Triton's request duration and success counters.
    Signal("request_latency_ms", "megapod:request_latency_ms:mean", needs_end_to_end_duration=True),
    # Requests per second each group receives: Triton counts every model's requests.
    Signal("request_rate", "megapod:requests:rate"),
)
SIGNALS_BY_NAME: dict[str, Signal] = {s.name: s for s in SIGNALS}

# The default per backend: the first listed signal it produces (occupancy where the gauges exist).
DEFAULT_SIGNAL_ORDER = ("batch_slot_occupancy", "request_rate")


def produced_signals(backend: str, version: str | None = None) -> list[str]:
    """Names of the signals `backend` (at `version`) produces, in SIGNALS order."""
    found = contract(backend, version)
    return [s.name for s in SIGNALS if s.produced_by(found)]


def default_signal(backend: str, version: str | None = None) -> str:
    """The signal a spec for `backend` scales on unless it names one."""
    produced = produced_signals(backend, version)
    return next(name for name in DEFAULT_SIGNAL_ORDER if name in produced)
