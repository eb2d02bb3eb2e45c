"""The chart's PrometheusRule, rendered by helm, checked and unit-tested by the real promtool.

Input series reproduce two groups of one release as the PodMonitor labels them (leaders only,
with `lws` and `group_index`): group 0 loaded, group 1 idle, plus decoys that the rules must
ignore (the other models of the ensemble, the TRT-LLM gauges a signal does not divide, another release
in the same namespace). Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_chart import REFERENCE_SPEC, one, reference_values, render, with_values
from workflows.chart_values import GPU_UTILIZATION_SERIES, SCALING_SERIES, chart_values
from workflows.spec import DcgmLabels, load_spec

NS, LWS, OTHER = "serving", "llama-triton-lws", "other-triton-lws"
STEP_S = 15  # scrape interval of the input series (matches the PodMonitor default)
STEPS = 40  # 10 minutes of samples
EVAL = "5m"
# The labels dcgm-exporter's own ServiceMonitor (honorLabels: false) leaves the GPU's pod in.
DCGM_CHART_LABELS = ("exported_pod", "exported_namespace")


def rules_file(values: dict[str, Any], tmp_path: Path) -> Path:
    """The rendered PrometheusRule's groups as a plain Prometheus rules file."""
    rule = one(render(values), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def labels(**extra: str) -> str:
    return ", ".join(f'{k}="{v}"' for k, v in extra.items())


def leader(group: int, lws: str = LWS, **extra: str) -> str:
    """Labels of a series scraped from a group's leader by the release's PodMonitor."""
    return labels(
        namespace=NS, lws=lws, group_index=str(group), pod=f"{lws}-{group}", container="leader", **extra
    )


def sample(name: str, label_text: str, values: str) -> dict[str, str]:
    """One promtool input series."""
    return {"series": f"{name}{{{label_text}}}", "values": values}


def counter(per_second: float) -> str:
    """promtool notation for a counter growing at `per_second`."""
    return f"0+{per_second * STEP_S:g}x{STEPS}"


def gauge(value: float) -> str:
    return f"{value:g}x{STEPS}"


def triton_series() -> list[dict[str, str]]:
    """Triton / TRT-LLM 0.12 series of two groups' leaders, plus decoys the rules must ignore.

    Gauge labels as tensorrtllm_backend v0.12.0 inflight_batcher_llm/src/custom_metrics_reporter/
    custom_metrics_reporter.cc writes them (request_type active|max|scheduled|context,
    kv_cache_block_type max|free|used|tokens_per; no `waiting`, no `fraction`).
    """
    trt = {"model": "tensorrt_llm", "version": "1"}
    series = []
    for group, active, used, duration_rate, success_rate in (
        (0, 6, 300, 2e6, 4),  # loaded: 6 of 8 slots, 300 of 1000 blocks, 4 req/s of 500 ms each
        (1, 0, 0, 0, 0),  # idle: gauges at zero, counters flat
    ):
        series += [
            sample("nv_trt_llm_request_metrics", leader(group, request_type="active", **trt), gauge(active)),
            sample("nv_trt_llm_request_metrics", leader(group, request_type="max", **trt), gauge(8)),
            sample("nv_trt_llm_kv_cache_block_metrics", leader(group, kv_cache_block_type="used", **trt),
                   gauge(used)),
            sample("nv_trt_llm_kv_cache_block_metrics", leader(group, kv_cache_block_type="max", **trt),
                   gauge(1000)),
            sample("nv_inference_request_duration_us", leader(group, **trt), counter(duration_rate)),
            sample("nv_inference_request_success", leader(group, **trt), counter(success_rate)),
        ]
    # Decoys: the ensemble and the tokenizer models (each request passes all four), the other
    # request types and KV-cache block counts, and another release in the same namespace.
    for decoy_model in ("ensemble", "preprocessing", "postprocessing"):
        decoy = leader(0, model=decoy_model, version="1")
        series += [
            sample("nv_inference_request_duration_us", decoy, counter(9e6)),
            sample("nv_inference_request_success", decoy, counter(4)),
        ]
    other_release = leader(0, lws=OTHER, **trt)
    return [
        *series,
        sample("nv_trt_llm_request_metrics", leader(0, request_type="scheduled", **trt), gauge(6)),
        sample("nv_trt_llm_request_metrics", leader(0, request_type="context", **trt), gauge(2)),
        sample("nv_trt_llm_kv_cache_block_metrics", leader(0, kv_cache_block_type="free", **trt), gauge(700)),
        sample("nv_trt_llm_kv_cache_block_metrics", leader(0, kv_cache_block_type="tokens_per", **trt),
               gauge(64)),
        sample("nv_trt_llm_request_metrics", leader(0, lws=OTHER, request_type="active", **trt), gauge(8)),
        sample("nv_inference_request_success", other_release, counter(50)),
    ]


def gpu_series(pod_label: str = "pod", namespace_label: str = "namespace") -> list[dict[str, str]]:
    """DCGM per GPU (2 per pod here) and kube-state-metrics pod labels for two groups of 2 pods."""
    utilization = {  # group 0 busy: mean of 90, 100, 80, 90 = 90; group 1 idle: 0
        f"{LWS}-0": (90, 100),
        f"{LWS}-0-1": (80, 90),
        f"{LWS}-1": (0, 0),
        f"{LWS}-1-1": (0, 0),
        f"{OTHER}-0": (7, 7),
    }
    series = []
    for pod, gpus in utilization.items():
        owner = {pod_label: pod, namespace_label: NS}
        if pod_label != "pod":  # scraped without honorLabels: the exporter's own pod is in `pod`
            owner |= {"pod": "dcgm-exporter-abcde", "namespace": "gpu-operator"}
        for gpu, value in enumerate(gpus):
            series.append(sample("DCGM_FI_DEV_GPU_UTIL", labels(**owner, gpu=str(gpu)), gauge(value)))
        name = LWS if pod.startswith(LWS) else OTHER
        group = pod.removeprefix(name + "-").split("-")[0]  # <lws>-<group>[-<worker>]
        ksm = labels(
            namespace=NS,
            pod=pod,
            uid=f"uid-{pod}",
            label_leaderworkerset_sigs_k8s_io_name=name,
            label_leaderworkerset_sigs_k8s_io_group_index=group,
        )
        series.append(sample("kube_pod_labels", ksm, gauge(1)))
    return series


def per_group(series: str, loaded: float, idle: float) -> dict[str, Any]:
    """Expected samples of a recorded series: one per group, labelled with the leader pod."""
    return {
        "expr": series,
        "eval_time": EVAL,
        "exp_samples": [
            {
                "labels": series
                + "{"
                + labels(namespace=NS, lws=LWS, group_index=str(g), pod=f"{LWS}-{g}")
                + "}",
                "value": value,
            }
            for g, value in ((0, loaded), (1, idle))
        ],
    }


def run_rule_tests(rules: Path, series: list[dict[str, str]], cases: list[dict[str, Any]]) -> None:
    test = {
        "rule_files": [rules.name],
        "evaluation_interval": f"{STEP_S}s",
        "tests": [{"interval": f"{STEP_S}s", "input_series": series, "promql_expr_test": cases}],
    }
    test_file = rules.parent / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool("test", "rules", test_file.name, cwd=rules.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("engine", ["hpa", "keda", "none"])
def test_promtool_check_rules(engine: str, tmp_path: Path) -> None:
    rules = rules_file(with_values(**{"autoscaling.engine": engine}), tmp_path)
    result = promtool("check", "rules", rules.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


def test_check_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    """promtool here really parses PromQL (a check that cannot fail proves nothing)."""
    rules = rules_file(reference_values(), tmp_path)
    rules.write_text(rules.read_text().replace("sum by (", "sum by ((", 1))
    assert promtool("check", "rules", rules.name, cwd=tmp_path).returncode != 0


def test_one_value_per_group_loaded_and_idle(tmp_path: Path) -> None:
    rules = rules_file(reference_values(), tmp_path)
    run_rule_tests(
        rules,
        triton_series() + gpu_series(*DCGM_CHART_LABELS),
        [
            per_group(SCALING_SERIES["batch_slot_occupancy"], loaded=6 / 8, idle=0),
            per_group(SCALING_SERIES["kv_cache_utilization"], loaded=300 / 1000, idle=0),
            # tensorrt_llm only: 2e6 us/s over 4 req/s = 500 ms (the four models would give 2.3 s)
            per_group(SCALING_SERIES["request_latency_ms"], loaded=500, idle=0),
            per_group(SCALING_SERIES["request_rate"], loaded=4, idle=0),
            per_group(GPU_UTILIZATION_SERIES, loaded=90, idle=0),
        ],
    )


def test_gpu_rule_reads_the_labels_dcgm_exporters_chart_produces(tmp_path: Path) -> None:
    """NVIDIA/dcgm-exporter deployment/values.yaml (chart 3.5.0 / tag 3.3.7-3.5.0, still in 4.8.2):
    serviceMonitor.honorLabels false, so the GPU's pod arrives as exported_pod: the spec's default."""
    values = chart_values(load_spec(REFERENCE_SPEC))
    run_rule_tests(
        rules_file(values, tmp_path),
        gpu_series(*DCGM_CHART_LABELS),
        [per_group(GPU_UTILIZATION_SERIES, loaded=90, idle=0)],
    )


def test_gpu_rule_with_honored_dcgm_labels(tmp_path: Path) -> None:
    """A Prometheus scraping dcgm-exporter with honorLabels: true keeps `pod`: cluster.dcgm_labels."""
    spec = load_spec(REFERENCE_SPEC)
    cluster = spec.cluster.model_copy(update={"dcgm_labels": DcgmLabels(pod="pod", namespace="namespace")})
    rules = rules_file(chart_values(spec.model_copy(update={"cluster": cluster})), tmp_path)
    run_rule_tests(rules, gpu_series(), [per_group(GPU_UTILIZATION_SERIES, loaded=90, idle=0)])


def test_promtool_test_fails_on_wrong_expectation(tmp_path: Path) -> None:
    """The rule tests can fail: the same inputs with an all-model sum expectation."""
    rules = rules_file(reference_values(), tmp_path)
    with pytest.raises(AssertionError):
        run_rule_tests(
            rules,
            triton_series(),
            [per_group(SCALING_SERIES["request_latency_ms"], loaded=(2e6 + 3 * 9e6) / 16 / 1000, idle=0)],
        )
