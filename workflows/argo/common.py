"""Names, in-pod paths, labels and workflow-level settings shared by every rendered document."""

from __future__ import annotations

from typing import Any

import yaml
from hera.workflows import Parameter, RawArtifact
from hera.workflows.models import PodGC, TTLStrategy

from steps.manifest import DEFAULT_OUTPUTS
from workflows.spec import Spec

# The stages, in pipeline order; also the DAG task names and the WorkflowTemplate suffixes.
DOWNLOAD, BUILD, PUBLISH, DEPLOY = "download", "build", "publish", "deploy"
AUTOSCALE_TEST, BENCHMARK, REPORT = "autoscale-test", "benchmark", "report"
STAGES = (DOWNLOAD, BUILD, PUBLISH, DEPLOY, AUTOSCALE_TEST, BENCHMARK, REPORT)
TEARDOWN = "teardown"
PIPELINE, NIGHTLY = "pipeline", "benchmark-nightly"

# Where the spec (and deploy's chart values) land in every pod: raw input artifacts.
SPEC_PARAMETER = "spec"
SPEC_PATH = "/tmp/megapod/spec.yaml"
VALUES_PATH = "/tmp/megapod/chart-values.yaml"
OUTPUTS_DIR = str(DEFAULT_OUTPUTS)
REPORT_DIR = "/tmp/megapod/report"

# Clean-up: keep pods of failed runs for `kubectl logs`, keep finished runs long enough to
# compare last week's with this week's in the UI.
POD_GC = PodGC(strategy="OnWorkflowSuccess")
TTL = TTLStrategy(seconds_after_success=7 * 86400, seconds_after_failure=14 * 86400)


def document_name(spec: Spec, suffix: str) -> str:
    """`<spec.name>-<suffix>`: every object is prefixed so two deployments coexist."""
    return f"{spec.name}-{suffix}"


def labels(spec: Spec, component: str) -> dict[str, str]:
    """Recommended Kubernetes labels, so `kubectl get wftmpl -l app.kubernetes.io/instance=X` works."""
    return {
        "app.kubernetes.io/name": "megapod",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "megapod",
        "app.kubernetes.io/managed-by": "megapod",
    }


def annotations(title: str, description: str) -> dict[str, str]:
    """What the Argo UI shows as the title and (markdown) description of a workflow."""
    return {"workflows.argoproj.io/title": title, "workflows.argoproj.io/description": description}


def workflow_settings(spec: Spec, component: str, title: str, description: str) -> dict[str, Any]:
    """Keyword arguments every WorkflowTemplate / CronWorkflow of `spec` shares."""
    return {
        "name": document_name(spec, component),
        "namespace": spec.cluster.namespace,
        "labels": labels(spec, component),
        "annotations": annotations(title, description),
        "service_account_name": spec.cluster.service_account,
        "pod_gc": POD_GC,
        "ttl_strategy": TTL,
    }


def spec_text(spec: Spec) -> str:
    """The spec as YAML, only the keys the author set: `load_spec` gives back an equal spec."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def spec_argument(spec: Spec) -> Parameter:
    """The workflow-level `spec` parameter, defaulting to this spec."""
    return Parameter(
        name=SPEC_PARAMETER,
        value=spec_text(spec),
        description="The deployment spec (YAML). Steps read it from " + SPEC_PATH + "; validate edits "
        "with `megapod validate` first.",
    )


def spec_inputs() -> list[Parameter | RawArtifact]:
    """A template's `spec` input parameter and the raw artifact that writes it to SPEC_PATH."""
    return [
        Parameter(name=SPEC_PARAMETER, description="The deployment spec (YAML)."),
        RawArtifact(name="spec-file", path=SPEC_PATH, data="{{inputs.parameters.spec}}"),
    ]


def task_parameter(name: str) -> str:
    """`{{inputs.parameters.<name>}}`."""
    return "{{inputs.parameters." + name + "}}"


def workflow_parameter(name: str) -> str:
    """`{{workflow.parameters.<name>}}`."""
    return "{{workflow.parameters." + name + "}}"


def task_output(task: str, name: str) -> str:
    """`{{tasks.<task>.outputs.parameters.<name>}}`."""
    return "{{tasks." + task + ".outputs.parameters." + name + "}}"


def run_dir(spec: Spec) -> str:
    """Per-run results on the RWX volume (load-test and benchmark exports), read by report."""
    return f"{spec.cluster.volume_mount.rstrip('/')}/megapod/runs/{{{{workflow.name}}}}"
