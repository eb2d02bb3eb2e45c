"""Argo Workflows for a spec, written with Hera 7 (context managers and `>>`).

- `stages`: one WorkflowTemplate per stage (download, build, publish, deploy, autoscale-test,
  benchmark, report); each runs alone and is what the pipeline and the cron reference.
- `pipeline`: the end-to-end DAG WorkflowTemplate with its teardown exit hook.
- `nightly`: the CronWorkflow that benchmarks an existing deployment and reports.
- `common`: names, paths, labels and workflow-level settings they all share.

`documents(spec)` returns every object in the order they must be applied (stage templates
first: the pipeline and the cron reference them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hera.workflows import CronWorkflow, WorkflowTemplate

    from workflows.spec import Spec


def documents(spec: Spec) -> list[WorkflowTemplate | CronWorkflow]:
    """Every WorkflowTemplate and the CronWorkflow for `spec`, stage templates first."""
    from workflows.argo.nightly import nightly_benchmark
    from workflows.argo.pipeline import pipeline_template
    from workflows.argo.stages import stage_templates

    return [*stage_templates(spec), pipeline_template(spec), nightly_benchmark(spec)]
