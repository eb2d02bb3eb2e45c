"""Least-privilege RBAC for the pipeline's pods, rendered from the spec (`megapod render` -> rbac.yaml).

Two identities, split by need (DESIGN.md: nothing that needs cluster-admin or `pods/exec`):

- runner (`spec.cluster.service_account`): download, build, publish, benchmark, report. These steps
  never call the Kubernetes API; the only thing their pods need is what Argo's executor needs to
  report outputs: create/patch `workflowtaskresults` (Argo v3.5+ "Workflow RBAC" minimum).
- deployer (`<runner>-deployer`): deploy, teardown and autoscale-test. `helm upgrade --install` /
  `uninstall` of charts/triton-lws (helm 3: GET then PATCH or CREATE each object, DELETE on
  uninstall; release records in Secrets), plus the watches steps.deploy and steps.autoscale make
  (pods, events, LeaderWorkerSets, HPAs, Services, KEDA ScaledObjects when KEDA scales).
- optionally, read-only nodes through a ClusterRole bound to the deployer, for the Cluster
  Autoscaler milestones; steps.autoscale stops watching nodes after one 403 without it.
- with `argo.memoize`, the one thing a stock Argo controller lacks for it: create the cache
  ConfigMap and get/update it by name (argo-cluster-role grants ConfigMaps get/list/watch only).

The chart's kinds come from one table (CHART_KINDS) keyed on the chart values the spec produces;
tests/test_rbac.py compares it with `helm template` for every example, so a kind added to the
chart fails the tests until its RBAC is added here.

resourceNames: the chart names every object after the release (`triton-lws.fullname` plus a fixed
suffix), so helm's get/patch/delete of them are granted on those names only. Two kinds of request
cannot be limited by name, because kube-apiserver's RBAC authorizer matches resourceNames against
the request's name and these requests carry none: `create` (the name is in the body, not the URL)
and `list`/`watch` without a metadata.name field selector. Helm's release records are Secrets named
`sh.helm.release.v1.<release>.v<revision>`; the revision grows with every upgrade (history
pruning deletes old ones, it never reuses numbers) and resourceNames are exact names, no prefixes
or wildcards, so no finite list covers them: Secrets keep get/list/create/update/delete in the
namespace. To keep the deployer from reading other Secrets, give it a namespace of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workflows.argo.common import labels
from workflows.argo.pod import memo_config_map
from workflows.chart_values import chart_values, release_fullname
from workflows.spec import Spec

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
COMPONENT = "rbac"
DEPLOYER_SUFFIX = "-deployer"

# Canonical verb order, so rendered rules read (and diff) the same way every time.
VERB_ORDER = ("get", "list", "watch", "create", "update", "patch", "delete")
READ = ("get", "list", "watch")
# Helm 3 without --force: GET (conflict check, 3-way merge), CREATE or PATCH, DELETE on uninstall
# and for objects a new chart version dropped. No `update` (that is --force's PUT).
HELM_MANAGE = ("get", "create", "patch", "delete")
# The requests that carry no object name, so resourceNames cannot restrict them (see above).
UNNAMED_VERBS = ("create", "list", "watch")
# Helm's default storage driver keeps one Secret per release revision: list them, read one,
# write the new one, mark the old one superseded (PUT), prune history and delete on uninstall.
HELM_RELEASE_STORAGE = ("get", "list", "create", "update", "delete")
# Argo's executor (v3.5+) reports outputs through WorkflowTaskResults; nothing else.
EXECUTOR_RULE = ("argoproj.io", "workflowtaskresults", ("create", "patch"))

Values = dict[str, Any]


def _always(_: Values) -> bool:
    return True


@dataclass(frozen=True)
class ChartKind:
    """One kind charts/triton-lws renders, and when (a predicate on its values)."""

    kind: str
    api_version: str
    resource: str
    rendered: Callable[[Values], bool] = _always
    # What the chart's templates append to `triton-lws.fullname` for the objects of this kind.
    suffixes: tuple[str, ...] = ("",)

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def names(self, release: str) -> tuple[str, ...]:
        """The names of this kind's objects in `release` (the chart derives all from the release)."""
        return tuple(release_fullname(release) + suffix for suffix in self.suffixes)


def _engine(name: str) -> Callable[[Values], bool]:
    return lambda values: values["autoscaling"]["engine"] == name


def _enabled(feature: str) -> Callable[[Values], bool]:
    return lambda values: bool(values["monitoring"][feature]["enabled"])


CHART_KINDS = (
    ChartKind("ServiceAccount", "v1", "serviceaccounts"),
    ChartKind("Secret", "v1", "secrets", suffixes=("-ssh",)),  # the ssh keys (looked up on upgrade)
    ChartKind("Service", "v1", "services"),
    ChartKind("LeaderWorkerSet", "leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
    ChartKind("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers", _engine("hpa")),
    ChartKind("ScaledObject", "keda.sh/v1alpha1", "scaledobjects", _engine("keda")),
    ChartKind(
        "Ingress",
        "networking.k8s.io/v1",
        "ingresses",
        lambda v: v["service"]["type"] == "ALB",
        ("-http", "-grpc"),
    ),
    ChartKind("PodMonitor", "monitoring.coreos.com/v1", "podmonitors", _enabled("podMonitor")),
    ChartKind("PrometheusRule", "monitoring.coreos.com/v1", "prometheusrules", _enabled("prometheusRule")),
    ChartKind("ConfigMap", "v1", "configmaps", _enabled("adapterRules"), ("-adapter-rules",)),
)


def chart_kinds(spec: Spec) -> list[ChartKind]:
    """The kinds `helm template charts/triton-lws` renders with the spec's chart values."""
    values = chart_values(spec)
    return [kind for kind in CHART_KINDS if kind.rendered(values)]


def runner_account(spec: Spec) -> str:
    """ServiceAccount of the stages that need no Kubernetes API (Argo's executor aside)."""
    return spec.cluster.service_account


def deployer_account(spec: Spec) -> str:
    """ServiceAccount of deploy, teardown and autoscale-test: helm and the watches."""
    return spec.cluster.service_account + DEPLOYER_SUFFIX


def deployer_role_name(spec: Spec) -> str:
    """Per release: two specs sharing the deployer account in one namespace (say one with KEDA,
    one with an ALB) each bind their own Role, and RBAC grants the union instead of the last
    applied spec silently narrowing the other's."""
    return f"{deployer_account(spec)}-{spec.name}"


def nodes_role_name(spec: Spec) -> str:
    """Cluster-scoped, so namespace and account are in the name: two deployments never collide."""
    return f"megapod:{spec.cluster.namespace}:{deployer_account(spec)}:read-nodes"


# (group, resource, resourceNames) -> verbs; no names: any object of the resource
Grants = dict[tuple[str, str, tuple[str, ...]], set[str]]


def _grant(
    grants: Grants, group: str, resource: str, verbs: tuple[str, ...], names: tuple[str, ...] = ()
) -> None:
    grants.setdefault((group, resource, names), set()).update(verbs)


def runner_grants(spec: Spec) -> Grants:
    """What the runner may do: report step outputs through Argo, nothing else."""
    grants: Grants = {}
    _grant(grants, *EXECUTOR_RULE)
    return grants


def deployer_grants(spec: Spec) -> Grants:
    """What the deployer may do in the namespace: helm for the chart's kinds, and the watches."""
    grants = runner_grants(spec)
    for kind in chart_kinds(spec):
        by_name = tuple(verb for verb in HELM_MANAGE if verb not in UNNAMED_VERBS)
        _grant(grants, kind.group, kind.resource, by_name, kind.names(spec.name))
        _grant(grants, kind.group, kind.resource, tuple(v for v in HELM_MANAGE if v in UNNAMED_VERBS))
    _grant(grants, "", "secrets", HELM_RELEASE_STORAGE)
    # steps.deploy waits on the LWS and its pods, explains a timeout with events, finds the
    # leader Service; steps.autoscale samples LWS, pods and the HPA (KEDA's HPA too).
    for group, resource in (
        ("", "pods"),
        ("", "events"),
        ("leaderworkerset.x-k8s.io", "leaderworkersets"),
        ("autoscaling", "horizontalpodautoscalers"),
    ):
        _grant(grants, group, resource, READ)
    _grant(grants, "", "services", ("get", "list"))
    if spec.serving.autoscaling.engine == "keda":
        _grant(grants, "keda.sh", "scaledobjects", READ)
    return grants


def nodes_grants() -> Grants:
    """Read-only nodes (cluster-scoped): new nodes' creation and readiness for the milestones."""
    return {("", "nodes", ()): set(READ)}


def rules(grants: Grants) -> list[dict[str, Any]]:
    """PolicyRules: one per API group, verb set and resourceNames, in a stable order. A verb a rule
    without names already grants on a resource is left out of that resource's named rules."""
    merged: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for (group, resource, names), verbs in sorted(grants.items()):
        unnamed = grants.get((group, resource, ()), set()) if names else set()
        ordered = tuple(v for v in VERB_ORDER if v in verbs - unnamed)
        if ordered:
            merged.setdefault((group, ordered, names), []).append(resource)
    return [
        {
            "apiGroups": [group],
            "resources": resources,
            **({"resourceNames": list(names)} if names else {}),
            "verbs": list(verbs),
        }
        for (group, verbs, names), resources in merged.items()
    ]


def _metadata(spec: Spec, name: str, *, namespaced: bool = True) -> dict[str, Any]:
    where = {"namespace": spec.cluster.namespace} if namespaced else {}
    return {"name": name, **where, "labels": labels(spec, COMPONENT)}


def _identity(spec: Spec, account: str, role: str, grants: Grants, description: str) -> list[dict[str, Any]]:
    """ServiceAccount `account`, and the Role and RoleBinding `role` granting it `grants`."""
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(spec, account)}
    service_account["metadata"]["annotations"] = {"megapod.io/purpose": description}
    role_document = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _metadata(spec, role),
        "rules": rules(grants),
    }
    binding = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": _metadata(spec, role),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": spec.cluster.namespace}],
    }
    return [service_account, role_document, binding]


def nodes_documents(spec: Spec) -> list[dict[str, Any]]:
    """The optional ClusterRole + ClusterRoleBinding: the deployer may read nodes."""
    name = nodes_role_name(spec)
    role = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRole",
        "metadata": _metadata(spec, name, namespaced=False),
        "rules": rules(nodes_grants()),
    }
    binding = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": _metadata(spec, name, namespaced=False),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": deployer_account(spec), "namespace": spec.cluster.namespace}
        ],
    }
    return [role, binding]


def memo_role_name(spec: Spec) -> str:
    """Per deployment: each spec's cache ConfigMap is its own."""
    return f"megapod-memo-{spec.name}"


def memo_documents(spec: Spec) -> list[dict[str, Any]]:
    """Role + RoleBinding letting the Argo controller keep `<name>-memo` (argo.memoize only).

    The controller gets the ConfigMap, creates it when missing and updates it on every save
    (workflow/controller/cache/configmap_cache.go, v4.1.2). `create` cannot be limited by name
    (the object does not exist when it is authorized); get and update are."""
    name = memo_role_name(spec)
    role = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": _metadata(spec, name),
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [memo_config_map(spec)],
                "verbs": ["get", "update"],
            },
        ],
    }
    binding = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": _metadata(spec, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": spec.argo.controller_service_account,
                "namespace": spec.argo.controller_namespace,
            }
        ],
    }
    return [role, binding]


def rbac_documents(spec: Spec, *, read_nodes: bool = True) -> list[dict[str, Any]]:
    """Every RBAC object the pipeline needs, namespaced ones first, the optional nodes ClusterRole last."""
    documents = [
        *_identity(
            spec,
            runner_account(spec),
            runner_account(spec),
            runner_grants(spec),
            "megapod steps without Kubernetes API access (Argo executor only)",
        ),
        *_identity(
            spec,
            deployer_account(spec),
            deployer_role_name(spec),
            deployer_grants(spec),
            "megapod deploy, teardown and autoscale-test: helm for charts/triton-lws, watches",
        ),
    ]
    if spec.argo.memoize:
        documents += memo_documents(spec)
    if read_nodes:
        documents += nodes_documents(spec)
    return documents


def rbac_yaml(spec: Spec) -> str:
    """rbac_documents(spec) as one multi-document YAML file for `kubectl apply -f`."""
    import yaml

    header = (
        f"# RBAC for the megapod pipeline of `{spec.name}` (namespace {spec.cluster.namespace}), from\n"
        "# `megapod render`. Apply once with `kubectl apply -f rbac.yaml` before the workflow templates.\n"
        "# The last two documents (ClusterRole + ClusterRoleBinding: read-only nodes for the Cluster\n"
        "# Autoscaler milestones) are optional: without them autoscale-test reports no node milestones.\n"
    )
    if spec.argo.memoize:
        header += (
            f"# argo.memoize is on: Role {memo_role_name(spec)} lets the Argo controller (ServiceAccount\n"
            f"# {spec.argo.controller_namespace}/{spec.argo.controller_service_account}) create and "
            f"update the cache ConfigMap {memo_config_map(spec)};\n"
            "# a stock install may only read ConfigMaps, and a failed cache save fails the step.\n"
        )
    return header + yaml.safe_dump_all(rbac_documents(spec), sort_keys=False)
