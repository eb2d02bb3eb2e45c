"""Values for charts/triton-lws, derived from a megapod spec and nothing else.

`chart_values(spec)` returns a dict with exactly the key tree of charts/triton-lws/values.yaml
(tests check it against values.schema.json). `SCALING_SERIES` (from workflows/backend_metrics.py)
says which recorded Prometheus series stands for each `ScalingMetric`: the chart's recording rules,
the adapter rules, the HPA/KEDA metric and anything querying Prometheus all follow it; the chart
records only the signals the spec's backend produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steps.contract import contract_for
from workflows.backend_metrics import SIGNALS, produced_signals
from workflows.spec import ScalingRules, Spec

CHART_DIR = Path(__file__).resolve().parents[1] / "charts" / "triton-lws"

# Recorded series (one value per LWS group, labelled with the leader pod) per scaling metric.
SCALING_SERIES: dict[str, str] = {signal.name: signal.series for signal in SIGNALS}
GPU_UTILIZATION_SERIES = "megapod:gpu_utilization:avg"

# The Triton model whose request counters measure a group's load: the GPU-bound TRT-LLM model
# (the llmapi model of trtllm-pytorch has the same name), not the ensemble (whose stats add up its
# composing models) nor the CPU tokenizer models.
SCALING_MODEL = "tensorrt_llm"

# Node labels set by EKS / the GPU operator that the spec's instance type and GPU product map to.
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


CHART_NAME = "triton-lws"
# The chart truncates object names to this length (LWS derives longer names from them).
MAX_FULLNAME = 40


def release_fullname(release: str) -> str:
    """Name of the LeaderWorkerSet, leader Service and PodMonitor of a release without overrides.

    Mirrors `triton-lws.fullname` in charts/triton-lws/templates/_helpers.tpl (tests compare the
    two on helm's own render): the release name if it already contains the chart name, else
    `<release>-triton-lws`, truncated to 40 characters.
    """
    name = release if CHART_NAME in release else f"{release}-{CHART_NAME}"
    return name[:MAX_FULLNAME].removesuffix("-")


def leader_service_host(release: str, namespace: str) -> str:
    """In-cluster DNS name of a release's leader Service (HTTP and gRPC, never metrics)."""
    return f"{release_fullname(release)}.{namespace}.svc"


def adapter_metric_name(series: str) -> str:
    """Name prometheus-adapter exposes a recorded series under (colons are not allowed there)."""
    return series.replace(":", "_")


# kube-prometheus-stack's in-cluster Prometheus, for KEDA when the spec names none.
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


def scaling_series(spec: Spec) -> str:
    """The recorded series the autoscaler of this spec follows."""
    return SCALING_SERIES[str(spec.serving.autoscaling.metric)]


def _behavior(rules: ScalingRules) -> dict[str, Any]:
    """HPA autoscaling/v2 HPAScalingRules (camelCase) from the spec's scaling rules."""
    return {
        "stabilizationWindowSeconds": rules.stabilization_window_seconds,
        "selectPolicy": rules.select_policy,
        "policies": [
            {"type": p.type, "value": p.value, "periodSeconds": p.period_seconds} for p in rules.policies
        ],
    }


def _node_selector(spec: Spec) -> dict[str, str]:
    selector: dict[str, str] = {}
    if spec.cluster.instance_type:
        selector[INSTANCE_TYPE_LABEL] = spec.cluster.instance_type
    if spec.cluster.gpu_product:
        selector[GPU_PRODUCT_LABEL] = spec.cluster.gpu_product
    selector.update(spec.cluster.node_selector)  # explicit entries win
    return selector


def default_repository(spec: Spec) -> str:
    """Where the model repository lives on the volume unless deploy is given the published one."""
    return f"{spec.cluster.volume_mount.rstrip('/')}/repositories/{spec.name}"


def _topology(spec: Spec) -> dict[str, str]:
    """group.topology: the spec's, or no constraint (key "")."""
    topology = spec.serving.topology
    return {"key": topology.key, "mode": topology.mode} if topology else {"key": "", "mode": "preferred"}


def _client(spec: Spec) -> dict[str, str]:
    """What NOTES.txt shows clients: the served model and a first request in the backend's contract."""
    contract = contract_for(str(spec.backend))
    request = contract.request("Hello", 16, stream=True)
    return {"model": contract.model, "exampleRequest": json.dumps(request, separators=(", ", ": "))}


def chart_values(spec: Spec) -> dict[str, Any]:
    """Values for charts/triton-lws (same key tree as its values.yaml) derived from `spec`."""
    serving, cluster, scaling = spec.serving, spec.cluster, spec.serving.autoscaling
    interval, selector_labels = f"{scaling.sync_period_s}s", dict(cluster.monitoring_labels)
    return {
        "nameOverride": "",
        "fullnameOverride": "",
        "image": {"ref": serving.image, "pullPolicy": "IfNotPresent"},
        "imagePullSecrets": [],
        "backend": str(spec.backend),
        "client": _client(spec),
        "group": {
            "size": spec.group_size,
            "gpusPerPod": spec.gpus_per_pod,
            "worldSize": spec.world_size,
            "startupPolicy": "LeaderCreated",
            "topology": _topology(spec),
        },
        "rollout": {
            "maxSurge": serving.rollout.max_surge,
            "maxUnavailable": serving.rollout.max_unavailable,
        },
        "replicas": {"min": serving.replicas.min, "max": serving.replicas.max},
        "resources": {
            "cpu": cluster.cpu,
            "memory": cluster.memory,
            "efa": cluster.efa_per_node,
            "hugepages2Mi": cluster.hugepages_2mi or "",
            "shmSize": cluster.shm_size,
        },
        "nodeSelector": _node_selector(spec),
        "tolerations": [t.model_dump(exclude_none=True) for t in cluster.tolerations],
        "model": {
            "volumeClaim": cluster.volume_claim,
            "mountPath": cluster.volume_mount,
            "repository": default_repository(spec),
        },
        "ports": {
            "http": serving.service.http_port,
            "grpc": serving.service.grpc_port,
            "metrics": serving.service.metrics_port,
            "ssh": serving.ssh_port,
        },
        "launcher": {
            "barrierTimeoutSeconds": serving.barrier_timeout_s,
            "terminationGracePeriodSeconds": serving.termination_grace_s,
        },
        "probes": {
            "startupTimeoutSeconds": serving.startup_timeout_s,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "service": {
            "type": serving.service.type,
            "scheme": serving.service.scheme,
            "certificateArn": serving.service.certificate_arn or "",
            "annotations": {},
        },
        "autoscaling": {
            "engine": scaling.engine,
            "metric": str(scaling.metric),
            "target": float(scaling.target),
            "behavior": {"scaleUp": _behavior(scaling.scale_up), "scaleDown": _behavior(scaling.scale_down)},
            "keda": {
                "serverAddress": cluster.prometheus_url or DEFAULT_PROMETHEUS_URL,
                "pollingInterval": scaling.sync_period_s,
            },
        },
        "monitoring": {
            "podMonitor": {"enabled": True, "interval": interval, "labels": selector_labels},
            "prometheusRule": {"enabled": True, "interval": interval, "labels": selector_labels},
            "adapterRules": {"enabled": True},
            "scalingModel": SCALING_MODEL,
            "rateWindow": "1m",
            "signals": produced_signals(str(spec.backend), spec.trtllm_version),
            "series": dict(SCALING_SERIES),
            "gpuUtilizationSeries": GPU_UTILIZATION_SERIES,
            "dcgm": {
                "enabled": True,
                "podLabel": cluster.dcgm_labels.pod,
                "namespaceLabel": cluster.dcgm_labels.namespace,
            },
        },
    }
