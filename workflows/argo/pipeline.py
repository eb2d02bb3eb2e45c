"""The end-to-end pipeline WorkflowTemplate `<name>-pipeline`.

    download -> build (skipped for trtllm-pytorch) -> publish -> deploy -+-> autoscale-test -+
                                                                        +-> benchmark -------+-> report
    exit hook: teardown (unless keep=true)

autoscale-test and benchmark share a mutex (stages.load_mutex), so they run one after the other.

Tasks call the stage WorkflowTemplates by `templateRef` rather than copying their templates:
each stage then has one definition that also runs alone (DESIGN.md), `megapod templates apply`
updates a stage for the pipeline and the cron at once, and the UI links each node to its
stage template. The cost is that the stage templates must be applied first (render and apply
order them so).
"""

from __future__ import annotations

from hera.workflows import DAG, Parameter, Task, TaskResult, WorkflowTemplate
from hera.workflows.models import TemplateRef

from workflows.argo import common as c
from workflows.argo.stages import ISOLATION_OUTPUT, SERVING_MODE, skips_build
from workflows.spec import Spec

KEEP = "keep"


def stage_task(spec: Spec, stage: str, template: str | None = None, **arguments: str) -> Task:
    """A task named `template` (default: `stage`) running that template of `<name>-<stage>`."""
    return Task(
        name=template or stage,
        template_ref=TemplateRef(name=c.document_name(spec, stage), template=template or stage),
        arguments={c.SPEC_PARAMETER: c.workflow_parameter(c.SPEC_PARAMETER), **arguments},
    )


def keep_argument() -> Parameter:
    """`keep`: leave the deployment running after the run (a drop-down in the UI)."""
    return Parameter(
        name=KEEP,
        value="false",
        enum=["true", "false"],
        description="true: leave the deployment serving after the run (no teardown).",
    )


def build_condition(spec: Spec) -> str:
    """`when` of the build task: the spec's backend, rendered in, compared with trtllm-pytorch."""
    return f"'{spec.backend}' != 'trtllm-pytorch'"


def pipeline_template(spec: Spec) -> WorkflowTemplate:
    """The pipeline DAG; task names are exactly the stage names."""
    checkpoint = c.task_output(c.DOWNLOAD, "checkpoint")
    engines = checkpoint if skips_build(spec) else c.task_output(c.BUILD, "engines")
    tokenizer = spec.model.tokenizer if (spec.model.tokenizer or "").startswith("/") else checkpoint
    endpoint = c.task_output(c.DEPLOY, "endpoint")
    grpc_endpoint = c.task_output(c.DEPLOY, "grpc_endpoint")
    plan = (
        f"{spec.model.source} on {spec.group_size} x {spec.gpus_per_pod} GPUs per instance "
        f"(TP{spec.build.tp} x PP{spec.build.pp}, {spec.backend}), "
        f"{spec.serving.replicas.min}-{spec.serving.replicas.max} instances."
    )
    with WorkflowTemplate(
        entrypoint=c.PIPELINE,
        on_exit=c.TEARDOWN,
        arguments=[c.spec_argument(spec), keep_argument()],
        **c.workflow_settings(spec, c.PIPELINE, f"{spec.name}: build, deploy, load-test, benchmark", plan),
    ) as template:
        with DAG(name=c.PIPELINE):
            download = stage_task(spec, c.DOWNLOAD)
            build = stage_task(spec, c.BUILD, checkpoint=checkpoint)
            build.when = build_condition(spec)
            publish = stage_task(spec, c.PUBLISH, engines=engines, tokenizer=tokenizer)
            deploy = stage_task(spec, c.DEPLOY)
            autoscale = stage_task(spec, c.AUTOSCALE_TEST, url=endpoint)
            bench = stage_task(spec, c.BENCHMARK, url=endpoint, grpc_url=grpc_endpoint, tokenizer=tokenizer)
            report = stage_task(spec, c.REPORT, **{SERVING_MODE: c.task_output(c.DEPLOY, ISOLATION_OUTPUT)})

            download >> build
            download >> publish
            # A skipped build is fine: publish then takes the checkpoint.
            with Task.set_next_defaults(on=TaskResult.succeeded | TaskResult.skipped):
                build >> publish
            publish >> deploy >> [autoscale, bench]
            # Report whatever the load test and the benchmark produced, also when one failed.
            with Task.set_next_defaults(on=TaskResult.succeeded | TaskResult.failed | TaskResult.errored):
                [autoscale, bench] >> report

        with DAG(name=c.TEARDOWN):
            release = stage_task(spec, c.DEPLOY, template=c.TEARDOWN)
            release.when = f"'{c.workflow_parameter(KEEP)}' == 'false'"
    return template
