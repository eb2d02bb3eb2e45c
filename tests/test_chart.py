"""charts/triton-lws rendered by the real helm, every object validated against real schemas.

Core kinds go through kubernetes-validate; LeaderWorkerSet, PodMonitor and PrometheusRule
through their CRDs from the pinned Go modules (tests/support/upstream.py: lws v0.8.0,
prometheus-operator v0.85.0), plus megapod's own invariants of the LWS fields. Golden renders
live in tests/golden/chart/ and are rewritten with MEGAPOD_REGENERATE_GOLDEN=1.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import kubernetes_validate
import pytest
import yaml

from steps.contract import contract_for
from tests.support.upstream import CRDS, crd_file
from workflows.backend_metrics import produced_signals
from workflows.chart_values import (
    CHART_DIR,
    GPU_UTILIZATION_SERIES,
    SCALING_SERIES,
    adapter_metric_name,
    chart_values,
    leader_service_host,
    release_fullname,
)
from workflows.spec import Backend, ScalingMetric, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / ".tools" / "bin" / "helm"
EXAMPLES = sorted((ROOT / "workflows" / "examples").glob("*.yaml"))
REFERENCE_SPEC = ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml"
GOLDEN_DIR = Path(__file__).parent / "golden" / "chart"
KUBERNETES_VERSION = "1.31.0"
# Maps whose keys are the user's, not the chart's (excluded from the key-tree comparison).
FREE_FORM = {"nodeSelector", "annotations", "labels"}


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""


def helm(*args: str) -> str:
    """Run the project's helm; return stdout or raise HelmError with stderr."""
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise HelmError(proc.stderr.strip())
    return proc.stdout


def render_text(
    values: dict[str, Any], release: str = "llama", namespace: str = "serving", chart: Path = CHART_DIR
) -> str:
    """`helm template` of the chart with exactly these values (as a values file)."""
    return _render_cached(json.dumps(values, sort_keys=True), release, namespace, str(chart))


@cache
def _render_cached(values_json: str, release: str, namespace: str, chart: str) -> str:
    values_file = (
        Path(os.environ.get("TMPDIR", "/tmp")) / f"megapod-values-{os.getpid()}-{abs(hash(values_json))}.yaml"
    )
    values_file.write_text(values_json)
    try:
        return helm("template", release, chart, "--namespace", namespace, "--values", str(values_file))
    finally:
        values_file.unlink()


def render(
    values: dict[str, Any], release: str = "llama", namespace: str = "serving"
) -> list[dict[str, Any]]:
    """The rendered objects (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(render_text(values, release, namespace)) if doc]


def reference_values() -> dict[str, Any]:
    """Chart values of the reference spec (a fresh copy, safe to modify)."""
    return copy.deepcopy(chart_values(load_spec(REFERENCE_SPEC)))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def with_values(**changes: Any) -> dict[str, Any]:
    """Reference values with dotted-path changes, e.g. with_values(**{"group.size": 3})."""
    values = reference_values()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = values
        for key in parents:
            node = node[key]
        node[leaf] = value
    return values


# --- schema validation ----------------------------------------------------------------------------


def _strip_x_kubernetes(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_x_kubernetes(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if isinstance(schema, list):
        return [_strip_x_kubernetes(v) for v in schema]
    return schema


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """openAPIV3Schema of a CRD at the pinned version (tests/support/upstream.py)."""
    path = crd_file(api_version, kind)
    crd = yaml.safe_load(path.read_text())
    version = api_version.split("/")[1]
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return _strip_x_kubernetes(entry["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{path} has no version {version}")


def check_lws_fields(lws: dict[str, Any]) -> None:
    """megapod's invariants of the LWS fields the chart writes (beyond what the CRD allows)."""
    spec = lws["spec"]
    assert set(spec) <= {"replicas", "startupPolicy", "rolloutStrategy", "leaderWorkerTemplate"}
    assert spec["startupPolicy"] in ("LeaderCreated", "LeaderReady")
    rollout = spec["rolloutStrategy"]  # RolloutStrategy in leaderworkerset_types.go (v0.7.0)
    assert rollout["type"] == "RollingUpdate" and set(rollout) == {"type", "rollingUpdateConfiguration"}
    assert set(rollout["rollingUpdateConfiguration"]) <= {"partition", "maxSurge", "maxUnavailable"}
    template = spec["leaderWorkerTemplate"]
    assert set(template) == {"size", "restartPolicy", "leaderTemplate", "workerTemplate"}
    assert isinstance(template["size"], int) and template["size"] >= 1
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    for role in ("leaderTemplate", "workerTemplate"):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, **template[role]}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def check_scaled_object(obj: dict[str, Any]) -> None:
    """KEDA ScaledObject fields (no CRD available offline): the ones the chart writes."""
    spec = obj["spec"]
    assert spec["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold", "ignoreNullValues"}
    assert all(isinstance(v, str) for v in trigger["metadata"].values())
    float(trigger["metadata"]["threshold"])


def validate_object(obj: dict[str, Any]) -> None:
    """Validate one rendered object against the best schema available."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRDS:
        # Draft 4 is what openAPIV3Schema follows; the schema itself is not meta-checked
        # because the operator's Go-style regexes (e.g. "^(?i)...") are not Python regexes.
        jsonschema.Draft4Validator(crd_schema(*key)).validate(obj)
        if obj["kind"] == "LeaderWorkerSet":
            check_lws_fields(obj)
    elif obj["kind"] == "ScaledObject":
        check_scaled_object(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


VARIANTS = {
    "reference": {},
    "clusterip-keda": {"service.type": "ClusterIP", "autoscaling.engine": "keda"},
    "alb-grpc-fixed": {
        "service.type": "ALB",
        "service.certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/0f0e0d0c-1111-2222",
        "autoscaling.engine": "none",
        "group.topology.key": "",
        "resources.efa": 0,
        "resources.hugepages2Mi": "",
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid(variant: str) -> None:
    objects = render(with_values(**VARIANTS[variant]))
    kinds = {o["kind"] for o in objects}
    assert {"LeaderWorkerSet", "Service", "ServiceAccount", "Secret"} <= kinds
    for obj in objects:
        validate_object(obj)


@pytest.mark.parametrize("spec_path", EXAMPLES, ids=lambda p: p.stem)
def test_example_specs_lint_and_render_valid(spec_path: Path, tmp_path: Path) -> None:
    values = chart_values(load_spec(spec_path))
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    helm("lint", "--strict", str(CHART_DIR), "--values", str(tmp_path / "values.yaml"))
    for obj in render(values):
        validate_object(obj)


def test_the_pinned_crds_refuse_what_they_do_not_allow() -> None:
    """The CRD validation above is real: the pinned LWS CRD (lws v0.8.0) refuses a bad enum."""
    lws = one(render(reference_values()), "LeaderWorkerSet")
    broken = copy.deepcopy(lws)
    broken["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(broken)


# --- values, schema and chart_values --------------------------------------------------------------


def key_tree(node: Any, name: str = "") -> Any:
    if isinstance(node, dict) and name not in FREE_FORM:
        return {k: key_tree(v, k) for k, v in node.items()}
    return None


def test_chart_values_match_values_yaml_and_schema() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.validate(defaults, schema)
    for spec_path in EXAMPLES:
        values = chart_values(load_spec(spec_path))
        jsonschema.validate(values, schema)
        assert key_tree(values) == key_tree(defaults), spec_path.name
    # The defaults are the reference deployment, derived rather than typed twice.
    assert chart_values(load_spec(REFERENCE_SPEC)) == defaults


def schema_tree(schema: dict[str, Any], name: str = "") -> Any:
    if schema.get("type") == "object" and "properties" in schema and name not in FREE_FORM:
        assert schema.get("additionalProperties") is False, f"{name}: schema must refuse unknown keys"
        assert set(schema["required"]) == set(schema["properties"]), f"{name}: every key required"
        return {k: schema_tree(v, k) for k, v in schema["properties"].items()}
    return None


def test_schema_describes_exactly_the_values() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema_tree(schema) == key_tree(defaults)


def leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and prefix.rsplit(".", 1)[-1] not in FREE_FORM:
        return [p for k, v in node.items() for p in leaf_paths(v, f"{prefix}.{k}" if prefix else k)]
    return [prefix]


def test_every_value_is_read_by_a_template() -> None:
    """The reference chart had values no template read; here every leaf is used somewhere."""
    sources = "\n".join(p.read_text() for p in (CHART_DIR / "templates").iterdir())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    aliases = {  # values reached through a `with`/variable rather than a full .Values path
        "$v.": ".Values.",
        "$p.": ".Values.probes.",
        "$r.": ".Values.resources.",
        "$g.": ".Values.group.",
        "$d.": ".Values.monitoring.dcgm.",
        "$s.": ".Values.monitoring.series.",
    }
    for alias, full in aliases.items():
        sources = sources.replace(alias, full)
    unread = []
    for path in leaf_paths(defaults):
        parts = path.split(".")
        full = ".Values." + path
        # or a parent map read whole (toYaml .Values.x) or indexed (index .Values.monitoring.series ...)
        parents = [".Values." + ".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        read = re.search(re.escape(full) + r"\b", sources) or any(
            re.search(re.escape(p) + r"\s*(\||\}|\))", sources) or f"index {p} " in sources for p in parents
        )
        if not read:
            unread.append(path)
    assert unread == []


def test_scaling_series_cover_every_scaling_metric() -> None:
    assert set(SCALING_SERIES) == {m.value for m in ScalingMetric}


@pytest.mark.parametrize("backend", list(Backend))
def test_rules_record_exactly_the_signals_the_backend_produces(backend: str) -> None:
    """One recording rule per signal workflows/backend_metrics.py says the backend produces: none for
    gauges its version lacks (tensorrtllm_backend v0.12.0 custom_metrics_reporter.cc has no `waiting`
    or `fraction`; v0.19.0 all_models/llmapi/tensorrt_llm/1/model.py defines no nv_trt_llm_* family)."""
    spec = parse_spec({"name": "llama", "model": {"source": "/models/m", "parameters_billion": 1},
                       "backend": backend, "serving": {"autoscaling": {"target": 1}}})
    rule = one(render(chart_values(spec)), "PrometheusRule")
    recorded = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"]} - {GPU_UTILIZATION_SERIES}
    assert recorded == {SCALING_SERIES[name] for name in produced_signals(backend, spec.trtllm_version)}


def test_autoscaler_refuses_a_metric_the_rules_do_not_record() -> None:
    values = with_values(**{"monitoring.signals": ["request_rate"]})
    refused = r"autoscaling\.metric batch_slot_occupancy is not in monitoring\.signals"
    for engine in ("hpa", "keda"):
        with pytest.raises(HelmError, match=refused):
            render({**values, "autoscaling": {**values["autoscaling"], "engine": engine}})


# --- the LeaderWorkerSet and its pods -------------------------------------------------------------


def pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    template = one(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    return {"leader": template["leaderTemplate"], "worker": template["workerTemplate"]}


def test_group_shape_follows_the_spec() -> None:
    spec = load_spec(REFERENCE_SPEC)
    objects = render(chart_values(spec))
    lws = one(objects, "LeaderWorkerSet")
    assert lws["metadata"]["name"] == "llama-triton-lws"
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == spec.group_size == 2
    assert "annotations" not in lws["metadata"]  # preferred topology: no LWS exclusive placement
    for role, pod in pod_templates(objects).items():
        (container,) = pod["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == spec.gpus_per_pod
        assert limits["vpc.amazonaws.com/efa"] == spec.cluster.efa_per_node
        assert limits["hugepages-2Mi"] == spec.cluster.hugepages_2mi
        assert container["resources"]["requests"] == limits, role
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": spec.cluster.shm_size}
        assert volumes["model"]["persistentVolumeClaim"] == {
            "claimName": spec.cluster.volume_claim,
            "readOnly": True,
        }
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["model"] == {"name": "model", "mountPath": spec.cluster.volume_mount, "readOnly": True}
        assert pod["spec"]["terminationGracePeriodSeconds"] == spec.serving.termination_grace_s
        assert pod["spec"]["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"]} and security["allowPrivilegeEscalation"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["FI_PROVIDER"] == "efa"


def test_launcher_command_lines() -> None:
    """The exact flags agreed in the launcher interface, with numbers derived from the spec."""
    spec = load_spec(REFERENCE_SPEC)
    pods = pod_templates(render(chart_values(spec)))
    leader = pods["leader"]["spec"]["containers"][0]
    worker = pods["worker"]["spec"]["containers"][0]
    assert leader["command"] == worker["command"] == ["python", "-m", "steps.launcher"]
    args = leader["args"]
    assert args[0] == "leader"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags == {
        "--backend": "trtllm-engine",
        "--model-repository": "/var/run/models/repositories/llama-405b",
        "--world-size": str(spec.world_size),
        "--gpus-per-node": str(spec.gpus_per_pod),
        "--ssh-port": str(spec.serving.ssh_port),
        "--identity": "/etc/megapod/ssh/id_ecdsa",
        "--known-hosts": "/etc/megapod/ssh/known_hosts",
        "--barrier-timeout": str(spec.serving.barrier_timeout_s),
        "--http-port": str(spec.serving.service.http_port),
        "--grpc-port": str(spec.serving.service.grpc_port),
        "--metrics-port": str(spec.serving.service.metrics_port),
        "--grace-period": str(spec.serving.termination_grace_s),
    }
    assert worker["args"] == [
        "worker",
        "--ssh-port",
        str(spec.serving.ssh_port),
        "--authorized-keys",
        "/etc/megapod/ssh/authorized_keys",
        "--host-key",
        "/etc/megapod/ssh/ssh_host_ecdsa_key",
        "--grace-period",
        str(spec.serving.termination_grace_s),
    ]


def test_probes() -> None:
    spec = load_spec(REFERENCE_SPEC)
    pods = pod_templates(render(chart_values(spec)))
    leader = pods["leader"]["spec"]["containers"][0]
    startup = leader["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # The startup budget covers the whole configured startup timeout, not less.
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert (
        spec.serving.startup_timeout_s <= budget < spec.serving.startup_timeout_s + startup["periodSeconds"]
    )
    assert leader["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert leader["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    worker = pods["worker"]["spec"]["containers"][0]
    assert worker["readinessProbe"]["tcpSocket"] == {"port": "ssh"}
    assert worker["ports"] == [{"name": "ssh", "containerPort": spec.serving.ssh_port}]


def test_replicas_owned_by_the_autoscaler() -> None:
    """With an autoscaler the LWS has no replicas field, so helm upgrade cannot reset it."""
    for engine in ("hpa", "keda"):
        lws = one(render(with_values(**{"autoscaling.engine": engine})), "LeaderWorkerSet")
        assert "replicas" not in lws["spec"], engine
    fixed = render(with_values(**{"autoscaling.engine": "none", "replicas.min": 2, "replicas.max": 2}))
    assert one(fixed, "LeaderWorkerSet")["spec"]["replicas"] == 2
    assert not by_kind(fixed, "HorizontalPodAutoscaler") and not by_kind(fixed, "ScaledObject")


def test_hpa_targets_the_lws_with_explicit_behavior() -> None:
    spec = load_spec(REFERENCE_SPEC)
    hpa = one(render(chart_values(spec)), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "name": "llama-triton-lws",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        spec.serving.replicas.min,
        spec.serving.replicas.max,
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == adapter_metric_name(SCALING_SERIES["batch_slot_occupancy"])
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "0.8"}
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert (
        down["stabilizationWindowSeconds"] == spec.serving.autoscaling.scale_down.stabilization_window_seconds
    )
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 600}]


def test_keda_queries_this_release_only() -> None:
    scaled = one(
        render(with_values(**{"autoscaling.engine": "keda", "autoscaling.metric": "kv_cache_utilization"})),
        "ScaledObject",
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["query"] == (
        'sum(megapod:kv_cache_blocks:utilization{namespace="serving", lws="llama-triton-lws"})'
    )
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["policies"]
    # KEDA docs (scalers/prometheus, 2.10 to latest): with ignoreNullValues false an empty result is
    # an error, so a signal the backend never produces shows on the ScaledObject instead of pinning min.
    assert trigger["metadata"]["ignoreNullValues"] == "false"


def test_adapter_rules_are_explicit() -> None:
    config = one(render(reference_values()), "ConfigMap")
    adapter = yaml.safe_load(config["data"]["prometheus-adapter-values.yaml"])
    assert adapter["rules"]["default"] is False
    rules = adapter["rules"]["custom"]
    signals = reference_values()["monitoring"]["signals"]
    assert {r["name"]["as"] for r in rules} == {adapter_metric_name(SCALING_SERIES[s]) for s in signals}
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0]
        assert series in SCALING_SERIES.values()  # no catch-all: every rule names its series
        assert re.fullmatch(rule["name"]["matches"], series)
        assert rule["metricsQuery"] == "max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})"


# --- exposure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("service_type", ["ClusterIP", "NLB", "ALB"])
def test_metrics_port_never_exposed(service_type: str) -> None:
    values = with_values(
        **{
            "service.type": service_type,
            "service.certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/abc-123",
        }
    )
    objects = render(values)
    service = one(objects, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    assert values["ports"]["metrics"] not in {p["port"] for p in service["spec"]["ports"]}
    ingress_ports = {
        path["backend"]["service"]["port"]["name"]
        for ing in by_kind(objects, "Ingress")
        for rule in ing["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert ingress_ports <= {"http", "grpc"}
    expected_type = "LoadBalancer" if service_type == "NLB" else "ClusterIP"
    assert service["spec"]["type"] == expected_type
    assert bool(by_kind(objects, "Ingress")) == (service_type == "ALB")
    if service_type == "NLB":
        annotations = service["metadata"]["annotations"]
        assert annotations["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "ip"


def test_default_service_is_cluster_ip() -> None:
    spec_values = chart_values(load_spec(ROOT / "workflows" / "examples" / "llama-3.1-8b-1node.yaml"))
    assert spec_values["service"]["type"] == "ClusterIP"
    assert one(render(spec_values), "Service")["spec"]["type"] == "ClusterIP"


# --- isolation between releases, RBAC, ssh keys ---------------------------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_two_releases_side_by_side_never_collide() -> None:
    values = reference_values()
    first, second = render(values, release="alpha"), render(values, release="beta")
    names = lambda objs: {(o["kind"], o["metadata"]["name"]) for o in objs}  # noqa: E731
    assert not names(first) & names(second)
    for mine, other in ((first, second), (second, first)):
        service, monitor = one(mine, "Service"), one(mine, "PodMonitor")
        own, foreign = pod_templates(mine), pod_templates(other)
        assert selects(service["spec"]["selector"], own["leader"]["metadata"]["labels"])
        assert selects(monitor["spec"]["selector"]["matchLabels"], own["leader"]["metadata"]["labels"])
        for role_labels in (own["worker"], foreign["leader"], foreign["worker"]):
            assert not selects(service["spec"]["selector"], role_labels["metadata"]["labels"])
            assert not selects(monitor["spec"]["selector"]["matchLabels"], role_labels["metadata"]["labels"])
        lws_name = one(mine, "LeaderWorkerSet")["metadata"]["name"]
        for group in one(mine, "PrometheusRule")["spec"]["groups"]:
            for rule in group["rules"]:
                assert f'lws="{lws_name}"' in rule["expr"] or f'"{lws_name}"' in rule["expr"]


@pytest.mark.parametrize(
    "release",
    ["llama-405b", "triton-lws", "my-triton-lws-prod", "a-very-long-release-name-for-a-405b-deployment"],
)
def test_release_fullname_matches_the_chart(release: str) -> None:
    """Other parts name the Service from Python (release_fullname): it must be what helm renders."""
    service = one(render(reference_values(), release=release), "Service")
    assert service["metadata"]["name"] == release_fullname(release)
    assert leader_service_host(release, "serving") == f"{service['metadata']['name']}.serving.svc"


def test_long_release_names_fit_lws_naming() -> None:
    """LWS derives StatefulSet, pod and revision-hash names from its own: keep it <= 40 chars."""
    release = "a-very-long-release-name-for-a-405b-deployment-test"
    objects = render(reference_values(), release=release)
    lws_name = one(objects, "LeaderWorkerSet")["metadata"]["name"]
    assert len(lws_name) <= 40 and not lws_name.endswith("-")
    assert one(objects, "Service")["metadata"]["name"] == lws_name
    assert one(objects, "Secret")["metadata"]["name"] == f"{lws_name}-ssh"


def test_no_rbac_and_no_token() -> None:
    objects = render(reference_values())
    assert not {o["kind"] for o in objects} & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    account = one(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for pod in pod_templates(objects).values():
        assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_ssh_secret_holds_matching_openssh_keys(tmp_path: Path) -> None:
    """The public halves the chart computes in Go templates are what ssh-keygen derives."""
    secret = one(render(reference_values(), release="keys"), "Secret")
    data = secret["stringData"]
    assert set(data) == {"id_ecdsa", "authorized_keys", "ssh_host_ecdsa_key", "known_hosts"}
    for private, public, prefix in (
        ("id_ecdsa", "authorized_keys", ""),
        ("ssh_host_ecdsa_key", "known_hosts", "* "),
    ):
        key = tmp_path / private
        key.write_text(data[private])
        key.chmod(0o600)
        derived = subprocess.run(
            [shutil.which("ssh-keygen") or "ssh-keygen", "-y", "-f", str(key)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert data[public] == prefix + derived
    assert data["id_ecdsa"] != data["ssh_host_ecdsa_key"]


async def helm_against(api_url: str, tmp_path: Path, release: str, namespace: str) -> dict[str, Any]:
    """`helm template --dry-run=server` (lookup enabled) against api_url; the rendered Secret."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "stand-in",
                "clusters": [{"name": "stand-in", "cluster": {"server": api_url}}],
                "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "nobody"}}],
                "users": [{"name": "nobody", "user": {}}],
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        str(HELM),
        "template",
        release,
        str(CHART_DIR),
        "--namespace",
        namespace,
        "--dry-run=server",
        "--kubeconfig",
        str(kubeconfig),
        "--show-only",
        "templates/secret-ssh.yaml",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return yaml.safe_load(out)


@pytest.mark.asyncio
async def test_upgrade_keeps_ssh_keys_kube_api_stand_in(kmock: Any, tmp_path: Path) -> None:
    """Upgrades reuse the release's ssh keys (`lookup`). kmock's KubernetesEmulator stands in for
    kube-apiserver (none can run here); helm does real discovery and GETs against it."""
    kmock.resources["v1/secrets"] = kmock.ResourceInfo(
        namespaced=True, kind="Secret", singular="secret", verbs={"get", "list", "create"}
    )
    api = str(kmock.url).rstrip("/")
    installed = await helm_against(api, tmp_path, "llama", "serving")  # nothing there yet: new keys
    assert "stringData" in installed
    data = {k: base64.b64encode(v.encode()).decode() for k, v in installed["stringData"].items()}
    stored = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": installed["metadata"] | {"namespace": "serving"},
        "data": data,
    }
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{api}/api/v1/namespaces/serving/secrets", json=stored)
        assert response.status < 300
    upgraded = await helm_against(api, tmp_path, "llama", "serving")
    assert upgraded["data"] == data and "stringData" not in upgraded
    other = await helm_against(api, tmp_path, "other", "serving")  # another release: its own keys
    assert "stringData" in other and other["stringData"]["id_ecdsa"] != installed["stringData"]["id_ecdsa"]


def test_topology_preferred_never_blocks_and_exclusive_is_opt_in() -> None:
    """Preferred: a weighted pod affinity to the same group's pods (the LWS pod webhook labels
    every pod with `leaderworkerset.sigs.k8s.io/group-key`, pkg/webhooks/pod_webhook.go v0.7.0), no
    required term anywhere, so the Cluster Autoscaler's simulation can always place a new group.
    Exclusive: only LWS's annotation, which the webhook turns into required (anti-)affinity."""
    spec = load_spec(REFERENCE_SPEC)
    assert spec.serving.topology is not None and spec.serving.topology.mode == "preferred"
    objects = render(chart_values(spec))
    for pod in pod_templates(objects).values():
        affinity = pod["spec"]["affinity"]
        assert set(affinity) == {"podAffinity"}
        (term,) = affinity["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == spec.serving.topology.key
        assert term["podAffinityTerm"]["matchLabelKeys"] == ["leaderworkerset.sigs.k8s.io/group-key"]
        labels = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        assert labels["app.kubernetes.io/instance"] == "llama"
    exclusive = render(with_values(**{"group.topology.mode": "exclusive"}))
    lws = one(exclusive, "LeaderWorkerSet")
    assert lws["metadata"]["annotations"] == {
        "leaderworkerset.sigs.k8s.io/exclusive-topology": spec.serving.topology.key
    }
    assert all("affinity" not in pod["spec"] for pod in pod_templates(exclusive).values())
    unconstrained = render(with_values(**{"group.topology.key": ""}))
    assert "annotations" not in one(unconstrained, "LeaderWorkerSet")["metadata"]
    assert all("affinity" not in pod["spec"] for pod in pod_templates(unconstrained).values())


def test_rolling_update_surges_a_group_instead_of_taking_the_only_one_down() -> None:
    """LWS defaults rollingUpdateConfiguration to maxUnavailable 1, maxSurge 0
    (pkg/webhooks/leaderworkerset_webhook.go Default, v0.7.0): with min 1 an upgrade is an outage."""
    spec = load_spec(REFERENCE_SPEC)
    assert spec.serving.replicas.min == 1
    strategy = one(render(chart_values(spec)), "LeaderWorkerSet")["spec"]["rolloutStrategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdateConfiguration": {"maxSurge": 1, "maxUnavailable": 0},
    }


# --- bad values -----------------------------------------------------------------------------------

BAD_VALUES = {
    "world size mismatch": (
        {"group.worldSize": 12},
        "group.worldSize (12) must equal group.size (2) x group.gpusPerPod (8)",
    ),
    "size zero": ({"group.size": 0}, "group.size"),
    "replicas inverted": ({"replicas.min": 3}, "replicas.min (3) must be <= replicas.max (2)"),
    "repository outside volume": ({"model.repository": "/models/x"}, "must be inside model.mountPath"),
    "unknown engine": ({"autoscaling.engine": "vpa"}, "autoscaling.engine"),
    "unknown metric": ({"autoscaling.metric": "gpu_util"}, "autoscaling.metric"),
    "metrics port exposed by typo": ({"service.type": "LoadBalancer"}, "service.type"),
    "ports collide": ({"ports.grpc": 8000}, "ports must be distinct"),
    "ssh on a root port": ({"ports.ssh": 22}, "ports.ssh"),
    "no gpus": ({"group.gpusPerPod": 0, "group.worldSize": 0}, "group"),
    "bad startup policy": ({"group.startupPolicy": "Eventually"}, "group.startupPolicy"),
    "rollout cannot start": (
        {"rollout.maxSurge": 0, "rollout.maxUnavailable": 0},
        "rollout.maxSurge and rollout.maxUnavailable cannot both be 0",
    ),
    "unknown topology mode": ({"group.topology.mode": "strict"}, "group.topology.mode"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_rejected(case: str) -> None:
    changes, message = BAD_VALUES[case]
    with pytest.raises(HelmError) as error:
        render(with_values(**changes))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "ref",
    [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/megapod/triton-trtllm:0.1.0",
        "registry.local:5000/megapod/triton-trtllm@sha256:" + "a" * 64,
    ],
)
def test_image_refs_by_tag_or_digest(ref: str) -> None:
    pod = pod_templates(render(with_values(**{"image.ref": ref})))["leader"]
    assert pod["spec"]["containers"][0]["image"] == ref


def test_unknown_value_key_rejected() -> None:
    values = reference_values()
    values["group"]["tp"] = 8
    with pytest.raises(HelmError, match="Additional property tp is not allowed"):
        render(values)


# --- NOTES.txt ------------------------------------------------------------------------------------


def render_notes(values: dict[str, Any], tmp_path: Path) -> str:
    """NOTES.txt as `helm install` would print it (rendered through a ConfigMap in a chart copy:
    `helm template` skips NOTES and `helm install --dry-run` needs a cluster)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART_DIR, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: |\n    {{- include "notes" . | nindent 4 }}\n'
    )
    rendered = render_text(values, chart=chart)
    return next(d for d in yaml.safe_load_all(rendered) if d and d["metadata"]["name"] == "notes")["data"][
        "notes"
    ]


def test_notes_tell_the_truth(tmp_path: Path) -> None:
    notes = render_notes(reference_values(), tmp_path)
    assert "2 pod(s) x 8 GPU(s) = 16 ranks" in notes
    assert "HorizontalPodAutoscaler llama-triton-lws" in notes
    assert "kubectl -n serving logs -f llama-triton-lws-0" in notes  # the group-0 leader pod name
    assert "NLB" in notes and "metrics port is not exposed" in notes
    fixed = render_notes(
        with_values(**{"autoscaling.engine": "none", "service.type": "ClusterIP"}), tmp_path / "b"
    )
    assert "Groups: 1 (fixed" in fixed and "port-forward svc/llama-triton-lws 8000 8001" in fixed
    assert "prometheus-adapter" not in fixed
    # The stock Triton image has no launcher: NOTES say so; the megapod image needs no warning.
    assert notes.startswith("Installed LeaderWorkerSet llama-triton-lws")
    stock = render_notes(
        with_values(**{"image.ref": "nvcr.io/nvidia/tritonserver:24.08-trtllm-python-py3"}), tmp_path / "c"
    )
    assert stock.startswith("WARNING: image.ref nvcr.io/nvidia/tritonserver:24.08-trtllm-python-py3")


def test_notes_first_request_speaks_the_backends_contract(tmp_path: Path) -> None:
    """The curl line NOTES print is a request the served model accepts: the ensemble's fields for
    engines (tensorrtllm_backend v0.12.0 ensemble/config.pbtxt), the llmapi model's for the PyTorch
    flow (v0.19.0 all_models/llmapi/tensorrt_llm/config.pbtxt): both built by steps.contract."""
    for example, model in (("llama-3.1-405b-p5", "ensemble"), ("llama-3.1-70b-pytorch-fp8", "tensorrt_llm")):
        spec = load_spec(ROOT / "workflows" / "examples" / f"{example}.yaml")
        notes = render_notes(chart_values(spec), tmp_path / example)
        (curl,) = [line for line in notes.splitlines() if "curl " in line]
        assert f"/v2/models/{model}/generate_stream -d " in curl
        body = json.loads(curl.split(" -d ", 1)[1].strip("'"))
        contract = contract_for(str(spec.backend))
        assert body == contract.request("Hello", 16, stream=True)


# --- golden renders -------------------------------------------------------------------------------


def normalized_render(values: dict[str, Any]) -> str:
    """The render with generated key material masked (it changes on every helm template)."""
    text = render_text(values)
    text = re.sub(
        r"-----BEGIN EC PRIVATE KEY-----\n(?:\s+\S+\n)+?\s+-----END EC PRIVATE KEY-----",
        "<generated private key>",
        text,
    )
    return re.sub(r"ecdsa-sha2-nistp256 [A-Za-z0-9+/=]+", "ecdsa-sha2-nistp256 <generated public key>", text)


# The reference deployment, and a one-pod group behind a ClusterIP.
GOLDEN_SPECS = [REFERENCE_SPEC, REFERENCE_SPEC.with_name("llama-3.1-8b-1node.yaml")]


@pytest.mark.parametrize("spec_path", GOLDEN_SPECS, ids=lambda p: p.stem)
def test_golden_render(spec_path: Path) -> None:
    rendered = normalized_render(chart_values(load_spec(spec_path)))
    golden = GOLDEN_DIR / f"{spec_path.stem}.yaml"
    if os.environ.get("MEGAPOD_REGENERATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"{golden} missing: run with MEGAPOD_REGENERATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{golden.name} differs: review, then MEGAPOD_REGENERATE_GOLDEN=1"
