"""First checks on the real control plane of `make cluster` (tests/support/cluster.py).

Real: kube-apiserver v1.34 (RBAC authorizer), the LWS controller and its webhooks, kube-scheduler,
the aggregation layer with prometheus-adapter, argo-server. Faked by kwok: the nodes, and pods
becoming Running/Ready (no container runs). The fixture starts the cluster unless one runs.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request

import pytest
from kubernetes import client as k8s

from tests.support.cluster import ROOT, Cluster, wait_until

LWS_PREFIX = "leaderworkerset.sigs.k8s.io/"


def _pinned(wrapper: str, module: str) -> str:
    """The version a scripts/cluster/go/<wrapper>/go.mod requires of `module`."""
    text = (ROOT / "scripts" / "cluster" / "go" / wrapper / "go.mod").read_text()
    return re.search(rf"^\s*{re.escape(module)} (v\S+)", text, re.MULTILINE).group(1)


def test_rbac_is_enforced_for_a_service_account_token(cluster: Cluster) -> None:
    """The real RBAC authorizer (kube-apiserver --authorization-mode=Node,RBAC): a ServiceAccount's
    token authenticates, is Forbidden from listing pods without a binding, and allowed once a
    RoleBinding grants it (plugin/pkg/auth/authorizer/rbac at v1.34.4: deny unless a rule allows)."""
    ns = cluster.namespace("smoke-rbac")
    core = k8s.CoreV1Api(cluster.api())
    core.create_namespaced_service_account(ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="nobody")))
    as_nobody = k8s.CoreV1Api(cluster.api(cluster.token(ns, "nobody")))
    with pytest.raises(k8s.ApiException) as denied:
        as_nobody.list_namespaced_pod(ns)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{ns}:nobody" in json.loads(denied.value.body)["message"]

    rbac = k8s.RbacAuthorizationV1Api(cluster.api())
    rule = k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])
    rbac.create_namespaced_role(ns, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="list-pods"), rules=[rule]))
    rbac.create_namespaced_role_binding(
        ns,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name="list-pods"),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="list-pods"),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace=ns)],
        ),
    )
    wait_until(lambda: _allowed(as_nobody, ns), 30, "the RoleBinding to take effect")
    with pytest.raises(k8s.ApiException) as still_denied:
        as_nobody.list_namespaced_secret(ns)  # the Role grants pods only
    assert still_denied.value.status == 403


def _allowed(core: k8s.CoreV1Api, ns: str) -> bool:
    try:
        core.list_namespaced_pod(ns)
    except k8s.ApiException as exc:
        if exc.status == 403:
            return False
        raise
    return True


def test_lws_group_of_two_pods_with_webhook_env_made_ready_by_kwok(cluster: Cluster) -> None:
    """LWS v0.8.0 builds a group of size 2: the leader `<name>-0` (leader StatefulSet) and worker
    `<name>-0-1`, labelled and given env by its pod webhook (pkg/utils/pod/pod_utils.go
    AddLWSVariables: LWS_LEADER_ADDRESS `<name>-<group>.<subdomain>.<ns>`, the subdomain being the
    LWS name under the default SubdomainShared policy, pkg/webhooks/leaderworkerset_webhook.go).
    kube-scheduler binds them to kwok nodes, kwok's pod-ready stage reports them Ready, and the LWS
    status counts the group ready."""
    ns, name = cluster.namespace("smoke-lws"), "grp"
    template = {
        "spec": {
            "tolerations": [{"operator": "Exists"}],  # any kwok node, tainted GPU nodes included
            "containers": [{"name": "main", "image": "registry.invalid/none:0"}],
        }
    }
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": template}},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(lws))
    core = k8s.CoreV1Api(cluster.api())

    def ready_pods() -> list[k8s.V1Pod]:
        pods = core.list_namespaced_pod(ns, label_selector=f"{LWS_PREFIX}name={name}").items
        ready = [
            p
            for p in pods
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return sorted(ready, key=lambda p: p.metadata.name) if len(ready) == 2 else []

    leader, worker = wait_until(ready_pods, 90, "2 Ready pods of the LWS group")
    assert [leader.metadata.name, worker.metadata.name] == [f"{name}-0", f"{name}-0-1"]
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for index, pod in enumerate((leader, worker)):
        labels = pod.metadata.labels
        assert labels[f"{LWS_PREFIX}group-index"] == "0"
        assert labels[f"{LWS_PREFIX}worker-index"] == str(index)
        assert labels[f"{LWS_PREFIX}group-key"] == leader.metadata.labels[f"{LWS_PREFIX}group-key"]
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["LWS_LEADER_ADDRESS"] == f"{name}-0.{name}.{ns}"
        assert env["LWS_GROUP_SIZE"] == "2"
        assert env["LWS_WORKER_INDEX"] == str(index)
        assert nodes[pod.spec.node_name].metadata.annotations["kwok.x-k8s.io/node"] == "fake"
    status = wait_until(
        lambda: _lws_status(cluster, ns, name).get("readyReplicas") == 1 or None,
        60,
        "the LWS status to count 1 ready group",
    )
    assert status


def _lws_status(cluster: Cluster, ns: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "leaderworkerset", name, "-n", ns, "-o", "json")).get(
        "status", {}
    )


def test_custom_metrics_api_is_served_by_prometheus_adapter(cluster: Cluster) -> None:
    """The aggregation layer proxies custom.metrics.k8s.io to prometheus-adapter v0.12.0 through
    the ExternalName Service (kube-aggregator's ClusterIP resolver answers `externalName:port`),
    so discovery of the group answers, as the HPA controller's metrics client asks."""
    discovery = json.loads(cluster.kubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta1"))
    assert discovery["kind"] == "APIResourceList"
    assert discovery["groupVersion"] == "custom.metrics.k8s.io/v1beta1"


def _argo_get(cluster: Cluster, path: str, token: str | None) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=str(cluster.ca))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{cluster.argo_server}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_argo_server_reports_the_pinned_version_to_a_token_holder(cluster: Cluster) -> None:
    """argo-server in client auth mode (server/auth/mode.go GetMode at the pinned v4: a `Bearer`
    header, passed on to the Kubernetes API) serves its TLS certificate from our CA and answers
    /api/v1/version; a request without a token is refused. version.go GetVersion reports a
    release's tag only with its git commit stamped; a module zip carries none, so `<tag>+unknown`."""
    ns = cluster.namespace("smoke-argo")
    core = k8s.CoreV1Api(cluster.api())
    core.create_namespaced_service_account(ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="user")))
    status, body = _argo_get(cluster, "/api/v1/version", cluster.token(ns, "user"))
    assert status == 200
    pinned = _pinned("argo-workflows", "github.com/argoproj/argo-workflows/v4")
    assert (body["version"], body["gitTag"]) == (f"{pinned}+unknown", pinned)
    assert _argo_get(cluster, "/api/v1/version", None)[0] == 401


def test_control_plane_reports_the_pinned_kubernetes_version(cluster: Cluster) -> None:
    """kube-apiserver's /version is the pinned k8s.io/kubernetes (stamped by build.sh through
    component-base/version ldflags: helm's kubeVersion checks read it)."""
    version = json.loads(cluster.kubectl("get", "--raw", "/version"))
    assert version["gitVersion"] == _pinned("kubernetes", "k8s.io/kubernetes")


def test_workflow_controller_creates_the_pod_of_a_workflow(cluster: Cluster) -> None:
    """The real workflow-controller (v4.0.5, cluster-scoped, its stock RBAC) takes a submitted
    Workflow to Running and creates its step's pod, labelled `workflows.argoproj.io/workflow`
    (workflow/common/common.go LabelKeyWorkflow) with the template's image beside the executor's
    `wait` container; kwok then reports the pod Running (nothing runs it: the step never ends).
    The template names its command: without one the controller asks the image's registry for
    its entrypoint (workflow/controller/workflowpod.go), which no registry here can answer."""
    ns = cluster.namespace("smoke-workflow")
    image = "registry.invalid/step:0"
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "hello", "namespace": ns},
        "spec": {
            "entrypoint": "main",
            "templates": [{"name": "main", "container": {"image": image, "command": ["true"]}}],
        },
    }
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(workflow))
    core = k8s.CoreV1Api(cluster.api())

    def running_pod() -> k8s.V1Pod | None:
        pods = core.list_namespaced_pod(ns, label_selector="workflows.argoproj.io/workflow=hello").items
        return next((p for p in pods if p.status.phase == "Running"), None)

    pod = wait_until(running_pod, 60, "the workflow's pod to be Running")
    images = {c.name: c.image for c in pod.spec.containers}
    assert images["main"] == image
    assert "wait" in images
    phase = json.loads(cluster.kubectl("get", "workflow", "hello", "-n", ns, "-o", "json"))["status"]["phase"]
    assert phase == "Running"
