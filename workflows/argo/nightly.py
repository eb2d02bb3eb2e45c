"""The CronWorkflow `<name>-benchmark-nightly`: benchmark an existing deployment, then report.

It holds a mutex named after the GPU pool (spec.cluster.gpu_pool) for the whole run, so two
scheduled benchmarks on one pool never overlap and skew each other's numbers.
"""

from __future__ import annotations

from hera.workflows import DAG, CronWorkflow, Parameter
from hera.workflows.models import Mutex, Synchronization

from workflows.argo import common as c
from workflows.argo.pipeline import stage_task
from workflows.argo.stages import leader_endpoint, tokenizer_dir
from workflows.spec import Spec

TIMEZONE = "UTC"
STARTING_DEADLINE_S = 3600  # a run missed by more than an hour (controller down) is skipped
HISTORY_LIMIT = 7


def nightly_benchmark(spec: Spec) -> CronWorkflow:
    """benchmark -> report against the running release, on a schedule, one at a time per GPU pool."""
    url, tokenizer = "url", "tokenizer"
    with (
        CronWorkflow(
            schedules=spec.benchmark.schedules,
            timezone=TIMEZONE,
            concurrency_policy="Forbid",
            starting_deadline_seconds=STARTING_DEADLINE_S,
            successful_jobs_history_limit=HISTORY_LIMIT,
            failed_jobs_history_limit=HISTORY_LIMIT,
            entrypoint=c.NIGHTLY,
            synchronization=Synchronization(mutexes=[Mutex(name=spec.cluster.gpu_pool)]),
            arguments=[
                c.spec_argument(spec),
                Parameter(
                    name=url, value=leader_endpoint(spec), description="host:port of the release's leader."
                ),
                Parameter(
                    name=tokenizer,
                    value=tokenizer_dir(spec) or "",
                    description="Tokenizer directory on the models volume (the downloaded checkpoint).",
                ),
            ],
            **c.workflow_settings(
                spec,
                c.NIGHTLY,
                f"{spec.name}: nightly benchmark",
                f"{spec.benchmark.tool} sweep against release `{spec.name}`, then the report.",
            ),
        ) as cron,
        DAG(name=c.NIGHTLY),
    ):
        bench = stage_task(
            spec, c.BENCHMARK, url=c.workflow_parameter(url), tokenizer=c.workflow_parameter(tokenizer)
        )
        bench >> stage_task(spec, c.REPORT)
    return cron
