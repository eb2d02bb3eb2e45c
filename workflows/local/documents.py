"""Rendered Argo documents as the local executor sees them: one Workflow, its WorkflowTemplates.

Also the feature check: every key of every template reachable from the entrypoint and the
exit hook is either executed, ignored for a stated reason (cluster placement only), or an
UnsupportedFeature; the check runs before anything starts so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workflows.local.errors import LocalRunError, UnsupportedFeature
from workflows.local.expressions import check_when_syntax, depends_of

TEMPLATE_KINDS = ("WorkflowTemplate", "ClusterWorkflowTemplate")

# Keys that only place or size pods on a cluster: meaningless for a local process.
PLACEMENT = frozenset(
    {
        "affinity", "archiveLocation", "archiveLogs", "artifactGC", "artifactRepositoryRef",
        "automountServiceAccountToken", "dnsConfig", "dnsPolicy", "executor", "hostAliases",
        "imagePullSecrets", "metadata", "metrics", "nodeSelector", "podDisruptionBudget", "podGC",
        "podMetadata", "podPriorityClassName", "podSpecPatch", "priority", "priorityClassName",
        "schedulerName", "securityContext", "serviceAccountName", "tolerations", "ttlStrategy",
        "volumeClaimGC", "workflowMetadata", "memoize",
    }
)  # fmt: skip
CONTAINER_PLACEMENT = frozenset(
    {
        "imagePullPolicy", "lifecycle", "livenessProbe", "ports", "readinessProbe", "resources",
        "securityContext", "startupProbe", "terminationMessagePath", "terminationMessagePolicy",
    }
)  # fmt: skip

WORKFLOW_KEYS = frozenset(
    {"entrypoint", "templates", "arguments", "onExit", "volumes", "volumeClaimTemplates",
     "activeDeadlineSeconds", "parallelism", "workflowTemplateRef"}
)  # fmt: skip
TEMPLATE_KEYS = frozenset(
    {"name", "inputs", "outputs", "container", "dag", "retryStrategy", "activeDeadlineSeconds",
     "synchronization", "volumes", "parallelism", "failFast", "timeout"}
)  # fmt: skip
CONTAINER_KEYS = frozenset(
    {"name", "image", "command", "args", "env", "envFrom", "volumeMounts", "workingDir"}
)
TASK_KEYS = frozenset(
    {"name", "template", "templateRef", "arguments", "dependencies", "depends", "when", "continueOn"}
)
DAG_KEYS = frozenset({"tasks", "failFast"})
RETRY_KEYS = frozenset({"limit", "retryPolicy", "backoff", "affinity"})
BACKOFF_KEYS = frozenset({"duration", "factor", "cap", "maxDuration"})
ARGUMENT_ARTIFACT_KEYS = frozenset({"name", "from", "raw"})
INPUT_PARAMETER_KEYS = frozenset({"name", "value", "default", "enum", "description"})
INPUT_ARTIFACT_KEYS = frozenset({"name", "path", "raw", "optional", "mode", "archive", "from"})
OUTPUT_PARAMETER_KEYS = frozenset({"name", "valueFrom", "globalName", "description"})
OUTPUT_ARTIFACT_KEYS = frozenset({"name", "path", "optional", "archive", "s3", "archiveLogs"})
ENV_SOURCES = frozenset({"secretKeyRef", "fieldRef"})
FIELD_REFS = frozenset({"metadata.name", "metadata.namespace", "status.podIP", "spec.nodeName"})
VOLUME_SOURCES = frozenset({"persistentVolumeClaim", "emptyDir"})


@dataclass
class Documents:
    """The pipeline Workflow and the templates it can reference, by name."""

    workflow: dict[str, Any]
    templates: dict[tuple[str, bool], dict[str, Any]] = field(default_factory=dict)  # (name, cluster) -> doc

    @property
    def spec(self) -> dict[str, Any]:
        return self.workflow["spec"]

    @property
    def name(self) -> str:
        meta = self.workflow.get("metadata", {})
        return str(meta.get("name") or meta.get("generateName", "workflow").rstrip("-"))

    def local_template(self, name: str, where: str) -> dict[str, Any]:
        """A template defined in the Workflow itself."""
        for template in self.spec.get("templates", []):
            if template.get("name") == name:
                return template
        raise LocalRunError(f"{where}: no template {name!r} in workflow {self.name}")

    def referenced(self, ref: dict[str, Any], where: str) -> dict[str, Any]:
        """The template a `templateRef` names (in a WorkflowTemplate or ClusterWorkflowTemplate)."""
        key = (str(ref.get("name")), bool(ref.get("clusterScope", False)))
        doc = self.templates.get(key)
        if doc is None:
            kind = TEMPLATE_KINDS[key[1]]
            known = ", ".join(sorted(name for name, cluster in self.templates if cluster == key[1]))
            raise LocalRunError(f"{where}: templateRef: no {kind} {key[0]!r} was rendered (have: {known})")
        for template in doc["spec"].get("templates", []):
            if template.get("name") == ref.get("template"):
                return template
        raise LocalRunError(f"{where}: templateRef: {key[0]} has no template {ref.get('template')!r}")

    def task_template(self, task: dict[str, Any], where: str) -> dict[str, Any]:
        """The template a DAG task runs."""
        if "templateRef" in task:
            return self.referenced(task["templateRef"], where)
        if "template" in task:
            return self.local_template(task["template"], where)
        raise LocalRunError(f"{where}: task has neither `template` nor `templateRef`")


def load_documents(paths: Iterable[Path], entry: str | None = None) -> Documents:
    """Read rendered YAML files (several documents each allowed) into Documents.

    The run is the WorkflowTemplate named `entry` (as `argo submit --from workflowtemplate/<entry>`
    would run it) or, without `entry`, the one `kind: Workflow` among the documents.
    CronWorkflows are never run locally.
    """
    workflows: list[tuple[Path, dict[str, Any]]] = []
    templates: dict[tuple[str, bool], dict[str, Any]] = {}
    for path in paths:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except yaml.YAMLError as exc:
            raise LocalRunError(f"{path}: not valid YAML: {exc}") from None
        for doc in docs:
            kind = doc.get("kind")
            if kind == "Workflow":
                workflows.append((path, doc))
            elif kind in TEMPLATE_KINDS:
                templates[(doc["metadata"]["name"], kind == TEMPLATE_KINDS[1])] = doc
    if entry is not None:
        if (entry, False) not in templates:
            known = ", ".join(sorted(name for name, cluster in templates if not cluster)) or "none"
            raise LocalRunError(f"no WorkflowTemplate {entry!r} among the rendered documents (have: {known})")
        source = templates[(entry, False)]
        workflow = {"kind": "Workflow", "metadata": {**source["metadata"]}, "spec": source["spec"]}
        workflows = [(Path(entry), workflow)]
    if len(workflows) != 1:
        found = ", ".join(str(p) for p, _ in workflows) or "none"
        raise LocalRunError(f"expected exactly one `kind: Workflow` document to run, found {found}")
    documents = Documents(workflows[0][1], templates)
    _merge_workflow_template_ref(documents)
    return documents


def _merge_workflow_template_ref(documents: Documents) -> None:
    """A Workflow made from `workflowTemplateRef` runs that template's spec with its own arguments."""
    ref = documents.spec.get("workflowTemplateRef")
    if not ref:
        return
    key = (str(ref.get("name")), bool(ref.get("clusterScope", False)))
    if key not in documents.templates:
        raise LocalRunError(f"workflowTemplateRef: no {TEMPLATE_KINDS[key[1]]} {key[0]!r} was rendered")
    merged = dict(documents.templates[key]["spec"])
    own = {k: v for k, v in documents.spec.items() if k != "workflowTemplateRef"}
    args = {p["name"]: p for p in merged.get("arguments", {}).get("parameters", [])}
    args.update({p["name"]: p for p in own.pop("arguments", {}).get("parameters", [])})
    merged.update(own)
    merged["arguments"] = {"parameters": list(args.values())}
    documents.workflow["spec"] = merged


# --- the feature check ----------------------------------------------------------------------------


@dataclass
class FeatureCheck:
    """What a walk over the reachable templates found: errors and keys ignored locally."""

    problems: list[str] = field(default_factory=list)
    images: set[str] = field(default_factory=set)
    ignored: dict[str, set[str]] = field(default_factory=dict)  # key -> where

    def keys(
        self, where: str, mapping: dict[str, Any], allowed: frozenset[str], placement=frozenset()
    ) -> None:
        for key in mapping:
            if key in placement:
                self.ignored.setdefault(key, set()).add(where)
            elif key not in allowed:
                self.problems.append(f"{where}: `{key}` is not supported by the local executor")

    def ignored_summary(self) -> str:
        """One line naming what is ignored and where, or '' when nothing is."""
        if not self.ignored:
            return ""
        parts = [
            f"{key} ({', '.join(sorted(map(_short, where)))})" for key, where in sorted(self.ignored.items())
        ]
        return "ignored locally (cluster placement/scheduling only): " + "; ".join(parts)


def _short(where: str) -> str:
    """'template x-build/build: container' -> 'build'."""
    return where.split(":")[0].removeprefix("template ").split("/")[-1]


def check_features(documents: Documents) -> FeatureCheck:
    """Walk everything the run can reach; raise UnsupportedFeature listing every problem."""
    check = FeatureCheck()
    spec = documents.spec
    check.keys("workflow spec", spec, WORKFLOW_KEYS, PLACEMENT)
    _check_synchronization(check, "workflow spec", spec)
    for volume in spec.get("volumes", []):
        _check_volume(check, f"workflow volume {volume.get('name')}", volume)
    roots = [spec.get("entrypoint"), spec.get("onExit")]
    seen: set[int] = set()
    for root in roots:
        if root:
            try:
                template = documents.local_template(root, "workflow spec")
            except LocalRunError as exc:
                check.problems.append(str(exc))
                continue
            _check_template(check, documents, template, f"template {root}", seen)
    if check.problems:
        raise UnsupportedFeature(check.problems)
    return check


def _check_template(
    check: FeatureCheck, documents: Documents, template: dict, where: str, seen: set[int]
) -> None:
    if id(template) in seen:
        return
    seen.add(id(template))
    check.keys(where, template, TEMPLATE_KEYS, PLACEMENT)
    if "container" not in template and "dag" not in template:
        kinds = ", ".join(k for k in template if k not in TEMPLATE_KEYS | PLACEMENT) or "none"
        check.problems.append(f"{where}: only container and dag templates run locally (this one: {kinds})")
    _check_synchronization(check, where, template)
    for key, allowed in (("parameters", INPUT_PARAMETER_KEYS), ("artifacts", INPUT_ARTIFACT_KEYS)):
        for item in template.get("inputs", {}).get(key, []):
            check.keys(f"{where}: input {item.get('name')}", item, allowed)
    _check_outputs(check, where, template.get("outputs", {}))
    check.keys(f"{where}: retryStrategy", template.get("retryStrategy", {}), RETRY_KEYS)
    check.keys(
        f"{where}: retryStrategy.backoff", template.get("retryStrategy", {}).get("backoff", {}), BACKOFF_KEYS
    )
    for volume in template.get("volumes", []):
        _check_volume(check, f"{where}: volume {volume.get('name')}", volume)
    if "container" in template:
        _check_container(check, where, template["container"])
    if "dag" in template:
        check.keys(f"{where}: dag", template["dag"], DAG_KEYS)
        for task in template["dag"].get("tasks", []):
            _check_task(check, documents, task, f"{where}: task {task.get('name')}", seen)


def _check_outputs(check: FeatureCheck, where: str, outputs: dict) -> None:
    check.keys(f"{where}: outputs", outputs, frozenset({"parameters", "artifacts"}))
    for parameter in outputs.get("parameters", []):
        at = f"{where}: output {parameter.get('name')}"
        check.keys(at, parameter, OUTPUT_PARAMETER_KEYS)
        check.keys(f"{at}: valueFrom", parameter.get("valueFrom", {}), frozenset({"path", "default"}))
        if "path" not in parameter.get("valueFrom", {}):
            check.problems.append(f"{at}: only `valueFrom.path` output parameters are supported locally")
    for artifact in outputs.get("artifacts", []):
        check.keys(f"{where}: output artifact {artifact.get('name')}", artifact, OUTPUT_ARTIFACT_KEYS)


def _check_container(check: FeatureCheck, where: str, container: dict) -> None:
    check.keys(f"{where}: container", container, CONTAINER_KEYS, CONTAINER_PLACEMENT)
    check.images.add(str(container.get("image")))
    if not container.get("command"):
        check.problems.append(f"{where}: container has no `command` (image entrypoints do not exist locally)")
    for env in container.get("env", []):
        source = env.get("valueFrom", {})
        check.keys(f"{where}: env {env.get('name')}: valueFrom", source, ENV_SOURCES)
        path = source.get("fieldRef", {}).get("fieldPath")
        if path is not None and path not in FIELD_REFS:
            check.problems.append(f"{where}: env {env.get('name')}: fieldRef {path} is not supported locally")
    for source in container.get("envFrom", []):
        check.keys(f"{where}: envFrom", source, frozenset({"secretRef", "prefix"}))


def _check_task(check: FeatureCheck, documents: Documents, task: dict, where: str, seen: set[int]) -> None:
    check.keys(where, task, TASK_KEYS)
    arguments = task.get("arguments", {})
    check.keys(f"{where}: arguments", arguments, frozenset({"parameters", "artifacts"}))
    for parameter in arguments.get("parameters", []):
        check.keys(f"{where}: argument {parameter.get('name')}", parameter, frozenset({"name", "value"}))
    for artifact in arguments.get("artifacts", []):
        check.keys(f"{where}: argument artifact {artifact.get('name')}", artifact, ARGUMENT_ARTIFACT_KEYS)
    try:
        depends_of(task, where)
        if "when" in task:
            check_when_syntax(str(task["when"]), where)
        template = documents.task_template(task, where)
    except UnsupportedFeature as exc:
        check.problems.extend(exc.problems)
        return
    except LocalRunError as exc:
        check.problems.append(str(exc))
        return
    ref = task.get("templateRef")
    name = f"{ref['name']}/{ref['template']}" if ref else task.get("template")
    _check_template(check, documents, template, f"template {name}", seen)


def _check_synchronization(check: FeatureCheck, where: str, owner: dict) -> None:
    sync = owner.get("synchronization", {})
    check.keys(f"{where}: synchronization", sync, frozenset({"mutex", "mutexes"}))


def _check_volume(check: FeatureCheck, where: str, volume: dict) -> None:
    sources = set(volume) - {"name"}
    if not sources <= VOLUME_SOURCES:
        check.problems.append(
            f"{where}: volume source {', '.join(sorted(sources - VOLUME_SOURCES))} is not supported locally "
            f"(supported: {', '.join(sorted(VOLUME_SOURCES))})"
        )


def mutex_names(owner: dict) -> Iterator[str]:
    """Names of the mutexes a template or workflow holds while it runs."""
    sync = owner.get("synchronization", {})
    mutexes = list(sync.get("mutexes", [])) + ([sync["mutex"]] if "mutex" in sync else [])
    for mutex in mutexes:
        yield str(mutex.get("name"))
