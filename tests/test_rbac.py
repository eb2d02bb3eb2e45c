"""RBAC rendered from the spec (workflows/rbac.py): valid objects, least privilege, and enough.

"Enough" is checked two ways: the deployer may manage every kind the real helm renders from
charts/triton-lws for every example spec (and the engine/service variants), and every request
steps.deploy (deploy, timeout, teardown) and steps.autoscale really make against the Kubernetes API
stand-in (tests/support/kube.py, a test double for kube-apiserver) is allowed by the rendered
Roles under a small RBAC evaluator that decides like kube-apiserver's (deny unless a bound rule
matches verb, API group, resource and namespace).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import steps.deploy
from steps.autoscale.__main__ import kube_client, run
from steps.autoscale.samplers import KubeWatcher
from steps.deploy import main as deploy_main
from tests.support import kube
from tests.support.kube import ApiCall
from tests.test_chart import KUBERNETES_VERSION, render_text
from workflows.chart_values import chart_values, release_fullname
from workflows.rbac import (
    CHART_KINDS,
    HELM_MANAGE,
    HELM_RELEASE_STORAGE,
    UNNAMED_VERBS,
    chart_kinds,
    deployer_account,
    rbac_documents,
    runner_account,
)
from workflows.render import RBAC_FILE, render_to_dir
from workflows.spec import Spec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "workflows" / "examples").glob("*.yaml"))
HELM = ROOT / ".tools" / "bin" / "helm"
HELM_DOUBLE = ROOT / "tests" / "doubles" / "helm"
DEPLOYER_TEMPLATES = {"deploy", "teardown", "autoscale-test"}
NAMESPACE = "serving"


def variants(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The example as written plus each chart-shaping choice it does not make (engine, ALB)."""
    out = {"as-written": data}
    for engine in ("hpa", "keda", "none"):
        changed = copy.deepcopy(data)
        changed.setdefault("serving", {}).setdefault("autoscaling", {})["engine"] = engine
        out[engine] = changed
    alb = copy.deepcopy(data)
    alb.setdefault("serving", {}).setdefault("service", {})["type"] = "ALB"
    out["alb"] = alb
    return out


SPECS = {
    f"{path.stem}:{name}": parse_spec(variant)
    for path in EXAMPLES
    for name, variant in variants(yaml.safe_load(path.read_text())).items()
}


# --- a small RBAC evaluator ------------------------------------------------------------------------


def _matches(values: list[str], wanted: str) -> bool:
    return "*" in values or wanted in values


def rule_allows(rule: dict[str, Any], call: ApiCall) -> bool:
    """One PolicyRule against one request, as kube-apiserver's RBAC authorizer decides it."""
    if call.group is None:  # a non-resource URL
        return _matches(rule.get("nonResourceURLs", []), call.resource) and _matches(rule["verbs"], call.verb)
    names = rule.get("resourceNames")
    return (
        _matches(rule["verbs"], call.verb)
        and _matches(rule.get("apiGroups", []), call.group)
        and _matches(rule.get("resources", []), call.resource)
        and (not names or call.name in names)
    )


def allowed(documents: list[dict[str, Any]], account: str, namespace: str, call: ApiCall) -> bool:
    """May ServiceAccount `namespace/account` make `call`? Deny unless a binding's role allows it."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in documents
        if d["kind"] in ("Role", "ClusterRole")
    }
    for binding in documents:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
        if subject not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace")  # a RoleBinding grants only in its namespace
        if binding["kind"] == "RoleBinding" and call.namespace != scope:
            continue
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]))
        if role and any(rule_allows(rule, call) for rule in role["rules"]):
            return True
    return False


def test_evaluator_denies_by_default_and_honours_scope() -> None:
    """The evaluator itself can say no: other namespace, other account, subresource, verb."""
    spec = SPECS["llama-3.1-405b-p5:as-written"]
    docs, who, ns = rbac_documents(spec), deployer_account(spec), spec.cluster.namespace
    watch_pods = ApiCall("watch", "", "pods", ns)
    assert allowed(docs, who, ns, watch_pods)
    assert not allowed(docs, who, ns, ApiCall("watch", "", "pods", "kube-system"))
    assert not allowed(docs, who, "elsewhere", watch_pods)
    assert not allowed(docs, runner_account(spec), ns, watch_pods)
    assert not allowed(docs, who, ns, ApiCall("create", "", "pods/exec", ns, "x"))
    assert not allowed(docs, who, ns, ApiCall("delete", "", "pods", ns, "x"))
    wildcard = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "all"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "all"},
            "roleRef": {"kind": "ClusterRole", "name": "all"},
            "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": ns}],
        },
    ]
    assert allowed(wildcard, who, ns, ApiCall("create", "", "pods/exec", ns, "x"))


# --- the objects -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_object_validates_and_is_least_privilege(name: str) -> None:
    """Real schemas (kubernetes-validate, strict); no wildcard, no subresource (so no pods/exec),
    no RBAC or impersonation rights, no non-resource URLs; the runner only reports outputs."""
    spec = SPECS[name]
    documents = rbac_documents(spec)
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    rules = [r for d in documents if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]
    for rule in rules:
        assert "nonResourceURLs" not in rule
        for key in ("apiGroups", "resources", "verbs"):
            assert all("*" not in value for value in rule[key]), rule
        assert all("/" not in resource for resource in rule["resources"]), rule
        assert "rbac.authorization.k8s.io" not in rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
    runner_role = next(
        d for d in documents if d["kind"] == "Role" and d["metadata"]["name"] == runner_account(spec)
    )
    assert runner_role["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}
    ]
    cluster_rules = [r for d in documents if d["kind"] == "ClusterRole" for r in d["rules"]]
    assert cluster_rules == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    names = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert len(names) == len(set(names))
    assert rbac_documents(spec, read_nodes=False) == documents[:-2]


def _plural(kind: str) -> str:
    """The API's default plural for a kind (what `kubectl api-resources` lists for these kinds)."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_deployer_may_helm_every_kind_the_chart_renders(name: str) -> None:
    """The table of chart kinds equals what the real `helm template` renders for this spec (so a
    kind added to the chart fails here until RBAC follows), and the deployer may do to each
    object what `helm upgrade --install` and `helm uninstall` do, plus helm's release Secrets."""
    spec = SPECS[name]
    ns = spec.cluster.namespace
    rendered = [d for d in yaml.safe_load_all(render_text(chart_values(spec), spec.name, ns)) if d]
    assert {(d["apiVersion"], d["kind"]) for d in rendered} == {
        (k.api_version, k.kind) for k in chart_kinds(spec)
    }
    resource_of = {(k.api_version, k.kind): k for k in CHART_KINDS}
    documents, deployer = rbac_documents(spec), deployer_account(spec)
    for obj in rendered:
        kind = resource_of[(obj["apiVersion"], obj["kind"])]
        assert kind.resource == _plural(kind.kind)
        for verb in HELM_MANAGE:
            # A create is a POST to the collection: RequestInfo has no name (requestinfo.go).
            name = None if verb in UNNAMED_VERBS else obj["metadata"]["name"]
            call = ApiCall(verb, kind.group, kind.resource, ns, name)
            assert allowed(documents, deployer, ns, call), call
            assert not allowed(documents, runner_account(spec), ns, call), call
    for verb in HELM_RELEASE_STORAGE:
        release_record = ApiCall(
            verb, "", "secrets", ns, None if verb == "list" else f"sh.helm.release.v1.{spec.name}.v1"
        )
        assert allowed(documents, deployer, ns, release_record)


def test_no_write_access_to_kinds_the_spec_does_not_render() -> None:
    """Least privilege per spec: an HPA-scaled release's deployer cannot create ScaledObjects or
    Ingresses, and may not write HPAs once KEDA (whose operator owns the HPA) scales it."""
    hpa, keda = SPECS["llama-3.1-405b-p5:hpa"], SPECS["llama-3.1-405b-p5:keda"]
    ns = hpa.cluster.namespace
    for spec, group, resource in (
        (hpa, "keda.sh", "scaledobjects"),
        (hpa, "networking.k8s.io", "ingresses"),
        (keda, "autoscaling", "horizontalpodautoscalers"),
    ):
        assert not allowed(
            rbac_documents(spec), deployer_account(spec), ns, ApiCall("create", group, resource, ns, "x")
        )
    assert allowed(
        rbac_documents(keda), deployer_account(keda), ns, ApiCall("watch", "keda.sh", "scaledobjects", ns)
    )
    assert not allowed(
        rbac_documents(hpa), deployer_account(hpa), ns, ApiCall("watch", "keda.sh", "scaledobjects", ns)
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_helm_writes_are_limited_to_this_releases_objects(name: str) -> None:
    """get/patch/delete of the chart's objects carry resourceNames (the names `helm template`
    renders), so the deployer cannot patch or delete another release's LeaderWorkerSet, Service,
    HPA, ...; the rules of `create`/`list`/`watch` carry none, because those requests have no
    name and a named rule never matches them (kubernetes plugin/pkg/auth/authorizer/rbac/rbac.go
    and apiserver pkg/endpoints/request/requestinfo.go at v1.31.0, KUBERNETES_VERSION)."""
    spec = SPECS[name]
    ns, deployer, documents = spec.cluster.namespace, deployer_account(spec), rbac_documents(spec)
    other = "other"
    rendered_other = [d for d in yaml.safe_load_all(render_text(chart_values(spec), other, ns)) if d]
    assert rendered_other
    for obj in rendered_other:
        kind = next(k for k in CHART_KINDS if (k.api_version, k.kind) == (obj["apiVersion"], obj["kind"]))
        # Secrets: helm's release records keep delete on every Secret (below); patch is still named.
        for verb in ("patch",) if kind.resource == "secrets" else ("patch", "delete"):
            call = ApiCall(verb, kind.group, kind.resource, ns, obj["metadata"]["name"])
            assert not allowed(documents, deployer, ns, call), call
    role = next(d for d in documents if d["kind"] == "Role" and d["metadata"]["name"].endswith(spec.name))
    for rule in role["rules"]:
        if "resourceNames" in rule:
            assert not set(UNNAMED_VERBS) & set(rule["verbs"]), rule
    # The only write the deployer keeps on every object of a kind is on Secrets: helm's release
    # records are sh.helm.release.v1.<release>.v<revision>, an unbounded revision, no prefixes in RBAC.
    unnamed_writes = {
        resource
        for rule in role["rules"]
        if "resourceNames" not in rule and {"update", "patch", "delete"} & set(rule["verbs"])
        for resource in rule["resources"]
    }
    assert unnamed_writes <= {"secrets", "workflowtaskresults"}, unnamed_writes


# --- the rendered workflows run as these identities ----------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_render_writes_rbac_and_templates_use_its_accounts(example: Path, tmp_path: Path) -> None:
    """out/rbac.yaml holds exactly rbac_documents(spec); deploy, teardown and autoscale-test run as
    the deployer, every other container template as the runner, and both accounts exist there."""
    spec = load_spec(example)
    written = render_to_dir(spec, tmp_path)
    assert written[0] == tmp_path / RBAC_FILE
    documents = [d for d in yaml.safe_load_all((tmp_path / RBAC_FILE).read_text()) if d]
    assert documents == rbac_documents(spec)
    accounts = {d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"}
    seen = set()
    for path in sorted((tmp_path / "workflows").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        workflow = document["spec"].get("workflowSpec", document["spec"])
        assert workflow["serviceAccountName"] == runner_account(spec)
        for template in workflow["templates"]:
            if "container" not in template:
                continue
            expected = (
                deployer_account(spec) if template["name"] in DEPLOYER_TEMPLATES else runner_account(spec)
            )
            assert template["serviceAccountName"] == expected, (path.name, template["name"])
            assert template["serviceAccountName"] in accounts
            seen.add(template["name"])
    assert seen >= DEPLOYER_TEMPLATES


# --- the calls the steps really make ---------------------------------------------------------------

RELEASE = "tiny"


def recording_spec(tmp_path: Path) -> tuple[Spec, Path]:
    data = {
        "name": RELEASE,
        "model": {"source": "/models/tiny", "parameters_billion": 0.001},
        "cluster": {"gpus_per_node": 1, "namespace": NAMESPACE},
        "serving": {"startup_timeout_s": 30, "replicas": {"min": 1, "max": 2}},
        "loadtest": {"stages": [{"name": "idle", "concurrency": 0, "duration_s": 1}], "sample_interval_s": 1},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_spec(data), path


def drive_steps(api: kube.FakeKubeAPI, spec: Spec, spec_path: Path, tmp_path: Path, monkeypatch) -> None:
    """deploy to Ready, a deploy that times out (events), teardown, and the autoscale stage."""
    lws_name = release_fullname(RELEASE)
    kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE))
    values = tmp_path / "chart-values.yaml"
    values.write_text(yaml.safe_dump(chart_values(spec)))
    monkeypatch.setenv("MEGAPOD_HELM", str(HELM_DOUBLE))
    monkeypatch.setenv("HELM_DOUBLE_REAL", str(HELM))
    monkeypatch.setenv("HELM_DOUBLE_LOG", str(tmp_path / "helm.log"))
    # The smoke request goes to Triton, not to the API server: not what is being recorded here.
    monkeypatch.setattr(steps.deploy, "smoke_request", lambda *args, **kwargs: 1)

    api.put("leaderworkersets", kube.lws(lws_name, RELEASE, replicas=1, ready=1, namespace=NAMESPACE))
    for worker in range(spec.group_size):
        api.put(
            "pods",
            kube.group_pod(
                lws_name,
                0,
                worker,
                namespace=NAMESPACE,
                phase="Running",
                ready=True,
                node_name="n1",
                release=RELEASE,
            ),
        )
    api.put("services", kube.service(lws_name, RELEASE, ip="127.0.0.1", namespace=NAMESPACE))
    api.put("nodes", kube.node("n1", ready=True))
    args = ["--spec", str(spec_path), "--values", str(values), "--kubeconfig", kubeconfig]
    assert deploy_main([*args, "--outputs", str(tmp_path / "outputs")]) == 0

    other = "other"  # a second release whose group never becomes ready: the timeout reads events
    api.put(
        "leaderworkersets", kube.lws(release_fullname(other), other, replicas=1, ready=0, namespace=NAMESPACE)
    )
    api.put(
        "pods",
        kube.group_pod(
            release_fullname(other), 0, 0, namespace=NAMESPACE, unschedulable="no GPUs", release=other
        ),
    )
    api.put(
        "events",
        kube.event(f"{release_fullname(other)}-0", "FailedScheduling", "no GPUs", namespace=NAMESPACE),
    )
    assert deploy_main([*args, "--release", other, "--timeout", "1"]) == 1

    kube.Scenario(api, [(0.5, lambda a: a.delete("pods", NAMESPACE, f"{release_fullname(other)}-0"))]).start()
    assert (
        deploy_main(["--spec", str(spec_path), "--teardown", "--release", other, "--kubeconfig", kubeconfig])
        == 0
    )

    watcher = KubeWatcher(kube_client("on", kubeconfig), NAMESPACE)
    run(spec, "127.0.0.1:1", tmp_path / "autoscale", release=RELEASE, kube=watcher, prometheus=None)


def test_every_api_call_of_deploy_and_autoscale_is_allowed(tmp_path: Path, monkeypatch) -> None:
    """Recorded from the API stand-in (a kube-apiserver test double): every call steps.deploy and
    steps.autoscale make is allowed for the deployer (nodes only through the optional ClusterRole),
    none for the runner, and all namespaced calls stay in the spec's namespace."""
    spec, spec_path = recording_spec(tmp_path)
    api = kube.FakeKubeAPI().start()
    try:
        drive_steps(api, spec, spec_path, tmp_path, monkeypatch)
        calls = set(api.api_calls())
    finally:
        api.stop()
    kinds = {(c.verb, c.resource) for c in calls}
    # What the steps are known to do; if recording broke, the checks below would pass vacuously.
    assert {
        ("watch", "pods"),
        ("list", "leaderworkersets"),
        ("list", "services"),
        ("list", "events"),
        ("watch", "horizontalpodautoscalers"),
        ("list", "nodes"),
    } <= kinds, kinds
    assert {c.namespace for c in calls if c.resource != "nodes"} == {NAMESPACE}
    for name, variant in SPECS.items():
        if not name.startswith("llama-3.1-405b-p5:"):
            continue
        shaped = variant.model_copy(update={"cluster": spec.cluster, "name": RELEASE})
        documents, deployer = rbac_documents(shaped), deployer_account(shaped)
        denied = sorted(str(c) for c in calls if not allowed(documents, deployer, NAMESPACE, c))
        assert denied == [], (name, denied)
        without_nodes = rbac_documents(shaped, read_nodes=False)
        assert {c.resource for c in calls if not allowed(without_nodes, deployer, NAMESPACE, c)} == {"nodes"}
        assert not any(allowed(documents, runner_account(shaped), NAMESPACE, c) for c in calls)


def test_memoize_grants_the_argo_controller_its_cache_config_map_only() -> None:
    """Memoization saves through the controller: Get, Create when missing, Update
    (workflow/controller/cache/configmap_cache.go at v4.1.2), which the stock argo-cluster-role
    (get/list/watch on ConfigMaps, manifests/cluster-install/workflow-controller-rbac) lacks."""
    reference = SPECS["llama-3.1-405b-p5:as-written"]
    assert reference.argo.memoize  # the 8-hour download is worth caching
    docs, ns = rbac_documents(reference), reference.cluster.namespace
    controller, controller_ns = reference.argo.controller_service_account, reference.argo.controller_namespace
    cache = f"{reference.name}-memo"

    def may(verb: str, name: str | None, namespace: str = ns) -> bool:
        call = ApiCall(verb, "", "configmaps", namespace, name)
        return allowed(docs, controller, controller_ns, call)

    assert may("create", None) and may("get", cache) and may("update", cache)
    assert not may("update", "another-config") and not may("delete", cache)
    assert not may("create", None, "kube-system")
    plain = SPECS["llama-3.1-8b-1node:as-written"]
    assert not plain.argo.memoize
    assert not any("memo" in d["metadata"]["name"] for d in rbac_documents(plain))
