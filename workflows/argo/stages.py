"""One WorkflowTemplate per stage, each a container running `python -m steps.<name>` (contracts.md).

Every stage template takes the spec as its `spec` input (written to SPEC_PATH by a raw artifact)
plus the paths it works on as parameters, and returns its outputs as parameters read from
OUTPUTS_DIR. Each WorkflowTemplate also declares those parameters as workflow arguments
(defaults derived from the spec), so a stage can be submitted alone from the UI or `argo submit
--from workflowtemplate/<name>-<stage>`; the pipeline and the cron call the same templates by
`templateRef`, so there is exactly one definition of each.

autoscale-test and benchmark both drive load against the deployment; they hold one mutex named after
it (`load_mutex`), so each measures only its own traffic although the DAG starts both after deploy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hera.workflows import Artifact, Container, NoneArchiveStrategy, Parameter, RawArtifact, WorkflowTemplate
from hera.workflows.models import Mutex, Synchronization, ValueFrom

from reports import REPORT_PAGE
from steps.contract import contract_for
from workflows.argo import common as c
from workflows.argo import pod
from workflows.chart_values import chart_values, default_repository, leader_service_host
from workflows.images import stage_image
from workflows.rbac import deployer_account, runner_account
from workflows.spec import Backend, Spec

# Deadlines for stages whose length the spec does not bound (seconds).
DOWNLOAD_DEADLINE_S = 8 * 3600  # ~800 GB of 405B shards at a few hundred MB/s, with margin
BUILD_DEADLINE_S = 8 * 3600  # convert + trtllm-build of 405B on one node: hours
PUBLISH_DEADLINE_S = 2 * 3600
REPORT_DEADLINE_S = 1800
TEARDOWN_DEADLINE_S = 900
HELM_MARGIN_S = 900  # deploy: helm install and rollout on top of the servers' own startup timeout
LOADTEST_MARGIN_S = 1800  # autoscale-test: settling and scale-down observation after the last stage
BENCHMARK_POINT_MARGIN = 1.25

COMMIT = re.compile(r"^[0-9a-f]{40}$")

# deploy's `isolation` output where it writes none (a cluster; locally "netns" or "processes").
ISOLATION_OUTPUT, CLUSTER_ISOLATION = "isolation", "kubernetes"
SERVING_MODE = "serving_mode"  # the report's input carrying it

# How long cached outputs stay valid: hub revisions such as `@main` move, engines do not.
DOWNLOAD_CACHE_AGE = "168h"
BUILD_CACHE_AGE = "2160h"


@dataclass(frozen=True)
class Input:
    """A stage parameter: its default is derived from the spec (None: the caller must pass it)."""

    name: str
    description: str
    default: str | None = None
    enum: tuple[str, ...] | None = None

    def as_input(self) -> Parameter:
        extra: dict[str, Any] = {"default": self.default} if self.default is not None else {}
        return Parameter(
            name=self.name, description=self.description, enum=list(self.enum) if self.enum else None, **extra
        )

    def as_argument(self) -> Parameter:
        return Parameter(
            name=self.name,
            description=self.description,
            enum=list(self.enum) if self.enum else None,
            value=self.default if self.default is not None else "",
        )


@dataclass
class Stage:
    """Everything that differs between stage templates; `container()` builds the Hera template."""

    name: str
    title: str
    description: str
    module: str
    args: list[str]
    inputs: list[Input] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # Outputs a run may not write, with the value Argo gives them then (valueFrom.default).
    output_defaults: dict[str, str] = field(default_factory=dict)
    mutex: str | None = None  # held while the stage runs (synchronization.mutexes)
    deadline_s: int = 3600
    pod: dict[str, Any] = field(default_factory=dict)  # extra Container keyword arguments
    # True: runs as the deployer identity (helm, Kubernetes watches); False: the runner, whose
    # token can do nothing but report outputs to Argo (workflows/rbac.py).
    kubernetes_api: bool = False

    def service_account(self, spec: Spec) -> str:
        """The template's serviceAccountName: each template states its identity, so a workflow
        submitted with another account still runs deploy as the deployer and the rest as the runner."""
        return deployer_account(spec) if self.kubernetes_api else runner_account(spec)

    def container(self, spec: Spec, template_name: str | None = None) -> Container:
        """The container template (named after the stage unless `template_name` is given)."""
        settings: dict[str, Any] = {"resources": pod.SMALL_POD, "volumes": [pod.models_volume(spec)]}
        settings.update(self.pod)
        settings["env"] = pod.base_env() + settings.get("env", [])
        raw_inputs, artifacts = settings.pop("raw_inputs", []), settings.pop("artifacts", [])
        return Container(
            name=template_name or self.name,
            image=stage_image(spec, self.name),
            image_pull_policy="IfNotPresent",
            command=["python", "-m", self.module],
            args=self.args,
            inputs=[*c.spec_inputs(), *(i.as_input() for i in self.inputs), *raw_inputs],
            outputs=[
                Parameter(
                    name=o,
                    value_from=ValueFrom(path=f"{c.OUTPUTS_DIR}/{o}", default=self.output_defaults.get(o)),
                )
                for o in self.outputs
            ]
            + artifacts,
            synchronization=Synchronization(mutexes=[Mutex(name=self.mutex)]) if self.mutex else None,
            active_deadline_seconds=str(self.deadline_s),
            service_account_name=self.service_account(spec),
            **settings,
        )


def _prometheus_args(spec: Spec) -> list[str]:
    """`--prometheus URL` for steps that snapshot server metrics, when the spec names a Prometheus."""
    return ["--prometheus", spec.cluster.prometheus_url] if spec.cluster.prometheus_url else []


def load_mutex(spec: Spec) -> str:
    """The mutex serializing the stages that load the deployment (one per deployment name)."""
    return c.document_name(spec, "load")


def _p(name: str) -> str:
    return c.task_parameter(name)


def _mount(spec: Spec) -> str:
    return spec.cluster.volume_mount.rstrip("/")


def download(spec: Spec) -> Stage:
    """Fetch the checkpoint onto the volume under a content-addressed path."""
    return Stage(
        name=c.DOWNLOAD,
        title=f"{spec.name}: download",
        description=f"Download `{spec.model.source}` to the models volume (resumable; skipped when cached).",
        module="steps.download",
        args=["--source", _p("source"), "--dest", _p("dest"), "--outputs", c.OUTPUTS_DIR],
        inputs=[
            Input(
                "source",
                "Checkpoint URI: hf://org/name@revision, s3://bucket/prefix or a path.",
                spec.model.source,
            ),
            Input("dest", "Volume root; the checkpoint lands in <dest>/checkpoints/...", _mount(spec)),
        ],
        outputs=["checkpoint", "revision"],
        deadline_s=DOWNLOAD_DEADLINE_S,
        pod={
            "resources": pod.DOWNLOAD_POD,
            "env": pod.hub_token_env(spec),
            "retry_strategy": pod.retry(3, "Always"),
            # Same source, same files: a second pipeline skips the download entirely.
            "memoize": pod.memoize(
                spec, "download-{{=sprig.sha256sum(inputs.parameters.source)}}", DOWNLOAD_CACHE_AGE
            ),
        },
    )


def build(spec: Spec) -> Stage:
    """Convert the checkpoint and build TensorRT-LLM engines on one GPU node."""
    plan = (
        f"{spec.build.dtype}, quantization {spec.build.quantization}, TP{spec.build.tp} x PP{spec.build.pp}"
    )
    return Stage(
        name=c.BUILD,
        title=f"{spec.name}: build",
        description=f"Build engines ({plan}) on {spec.gpus_per_pod} GPUs.",
        module="steps.build",
        args=[
            "--spec",
            c.SPEC_PATH,
            "--checkpoint",
            _p("checkpoint"),
            "--out",
            _p("out"),
            "--outputs",
            c.OUTPUTS_DIR,
        ],
        inputs=[
            Input("checkpoint", "Checkpoint directory on the volume (download's `checkpoint` output)."),
            Input("out", "Volume root; engines land in <out>/engines/<key>/", _mount(spec)),
        ],
        outputs=["engines"],
        deadline_s=BUILD_DEADLINE_S,
        pod={
            "resources": pod.gpu_resources(spec),
            "volumes": [pod.models_volume(spec), pod.shm_volume(spec)],
            # A failed compile fails again; only pod/node errors are worth a retry.
            "retry_strategy": pod.retry(2, "OnError"),
            # Same spec and same checkpoint give the same engines.
            "memoize": pod.memoize(
                spec,
                "build-{{=sprig.sha256sum(inputs.parameters.spec)}}"
                "-{{=sprig.sha256sum(inputs.parameters.checkpoint)}}",
                BUILD_CACHE_AGE,
            ),
            **pod.gpu_placement(spec),
        },
    )


def publish(spec: Spec) -> Stage:
    """Render the Triton model repository next to the engines."""
    return Stage(
        name=c.PUBLISH,
        title=f"{spec.name}: publish",
        description="Write the Triton model repository "
        f"({', '.join(contract_for(str(spec.backend)).repository)}).",
        module="steps.publish",
        args=[
            "--spec",
            c.SPEC_PATH,
            "--engines",
            _p("engines"),
            "--tokenizer",
            _p("tokenizer"),
            "--dest",
            _p("dest"),
            "--outputs",
            c.OUTPUTS_DIR,
        ],
        inputs=[
            Input("engines", "Engine directory (build's `engines`), or the checkpoint for trtllm-pytorch."),
            Input(
                "tokenizer",
                "Tokenizer directory (the checkpoint unless spec.model.tokenizer is a path).",
                spec.model.tokenizer if (spec.model.tokenizer or "").startswith("/") else None,
            ),
            Input(
                "dest",
                "Repository directory or s3:// URI; the chart serves from here.",
                default_repository(spec),
            ),
        ],
        outputs=["repository"],
        deadline_s=PUBLISH_DEADLINE_S,
        pod={"retry_strategy": pod.retry(3, "Always")},
    )


def deploy(spec: Spec) -> Stage:
    """helm upgrade --install the triton-lws chart and wait for the leader to be ready."""
    values = RawArtifact(name="values-file", path=c.VALUES_PATH, data=_p("values"))
    return Stage(
        name=c.DEPLOY,
        title=f"{spec.name}: deploy",
        description=f"Deploy release `{spec.name}`: {spec.serving.replicas.min}-{spec.serving.replicas.max} "
        f"groups of {spec.group_size} pod(s) x {spec.gpus_per_pod} GPUs (LeaderWorkerSet).",
        module="steps.deploy",
        args=[
            "--spec",
            c.SPEC_PATH,
            "--values",
            c.VALUES_PATH,
            "--release",
            _p("release"),
            "--timeout",
            _p("timeout"),
            "--outputs",
            c.OUTPUTS_DIR,
        ],
        inputs=[
            Input(
                "values",
                "Values for charts/triton-lws (YAML), derived from the spec.",
                chart_values_text(spec),
            ),
            Input("release", "Helm release name.", spec.name),
            Input(
                "timeout",
                "Seconds to wait for the leader to become ready.",
                str(spec.serving.startup_timeout_s),
            ),
        ],
        outputs=["endpoint", "grpc_endpoint", ISOLATION_OUTPUT],
        # How the group is isolated: written by a local run only (network namespaces or processes).
        output_defaults={ISOLATION_OUTPUT: CLUSTER_ISOLATION},
        deadline_s=spec.serving.startup_timeout_s + HELM_MARGIN_S,
        pod={"retry_strategy": pod.retry(2, "Always"), "volumes": None, "raw_inputs": [values]},
        kubernetes_api=True,
    )


def teardown(spec: Spec) -> Stage:
    """helm uninstall the release (the pipeline's exit hook); lives in the deploy WorkflowTemplate."""
    return Stage(
        name=c.TEARDOWN,
        title=f"{spec.name}: teardown",
        description=f"Uninstall release `{spec.name}` and free its GPU nodes.",
        module="steps.deploy",
        args=["--spec", c.SPEC_PATH, "--teardown", "--release", _p("release")],
        inputs=[Input("release", "Helm release name.", spec.name)],
        deadline_s=TEARDOWN_DEADLINE_S,
        pod={"retry_strategy": pod.retry(3, "Always"), "volumes": None},
        kubernetes_api=True,
    )


def autoscale_test(spec: Spec) -> Stage:
    """Drive the load stages and record how many groups serve over time."""
    stages = ", ".join(f"{s.name} {s.concurrency}" for s in spec.loadtest.stages)
    expect = spec.loadtest.expect
    return Stage(
        name=c.AUTOSCALE_TEST,
        title=f"{spec.name}: autoscale-test",
        description=f"Load stages ({stages} concurrent) for {spec.loadtest.duration_s} s; "
        f"expect {expect.groups_serving or '-'} groups within {expect.within_s or '-'} s.",
        module="steps.autoscale",
        args=["--spec", c.SPEC_PATH, "--url", _p("url"), "--out", _p("out"), *_prometheus_args(spec)],
        inputs=[
            Input(
                "url", "HTTP host:port of the leader Service (deploy's `endpoint`).", leader_endpoint(spec)
            ),
            Input("out", "Where the load-test timeline goes.", f"{c.run_dir(spec)}/{c.AUTOSCALE_TEST}"),
        ],
        # No retry: a second load test after a failed one measures a different, warmed-up system.
        deadline_s=spec.loadtest.duration_s + LOADTEST_MARGIN_S,
        mutex=load_mutex(spec),
        kubernetes_api=True,  # watches the LWS, its pods, the HPA and (if allowed) nodes
    )


def benchmark(spec: Spec) -> Stage:
    """Sweep concurrency x sequence lengths with the spec's benchmark tool."""
    bench = spec.benchmark
    points = len(bench.concurrency) * len(bench.sequences)
    return Stage(
        name=c.BENCHMARK,
        title=f"{spec.name}: benchmark",
        description=f"{bench.tool}: concurrency {bench.concurrency} x ISL/OSL "
        f"{[f'{s.isl}/{s.osl}' for s in bench.sequences]}, {bench.request_count} requests per point.",
        module="steps.benchmark",
        args=[
            *["--spec", c.SPEC_PATH, "--url", _p("url"), "--grpc-url", _p("grpc_url")],
            *["--tokenizer", _p("tokenizer"), "--out", _p("out"), *_prometheus_args(spec)],
        ],
        inputs=[
            Input("url", "host:port of the leader Service (deploy's `endpoint`).", leader_endpoint(spec)),
            Input(
                "grpc_url",
                "gRPC host:port of the leader Service (deploy's `grpc_endpoint`).",
                leader_endpoint(spec, spec.serving.service.grpc_port),
            ),
            Input("tokenizer", "Tokenizer directory (the checkpoint).", tokenizer_dir(spec)),
            Input("out", "Where the benchmark exports go.", f"{c.run_dir(spec)}/{c.BENCHMARK}"),
        ],
        # Never retried: a rerun hides the failure that the benchmark exists to show.
        deadline_s=int(points * bench.point_timeout_s * BENCHMARK_POINT_MARGIN),
        mutex=load_mutex(spec),
    )


def report(spec: Spec) -> Stage:
    """Tables, timelines and the HTML report; the page uncompressed so the Argo UI opens it."""
    args = [
        "--input",
        _p("input"),
        "--out",
        c.REPORT_DIR,
        "--spec",
        c.SPEC_PATH,
        "--history",
        _p("history"),
        "--baseline",
        _p("baseline"),
        "--run-id",
        "{{workflow.name}}",  # the run's id in history = the Argo workflow that produced it
        "--serving-mode",
        _p(SERVING_MODE),
    ]
    if spec.reports.fail_on_regression:
        args.append("--fail-on-regression")
    # The Argo UI draws and opens an artifact by its key: a file key ending in .html opens in one click,
    # while a directory key needs a trailing slash the default repository's key never has
    # (workflow/executor/executor.go and docs/artifact-visualization.md at v4.1.2). So the page is its
    # own uncompressed file artifact; the whole folder (tables, summary.md) is a download beside it.
    page = Artifact(name="report", path=f"{c.REPORT_DIR}/{REPORT_PAGE}", archive=NoneArchiveStrategy())
    folder = Artifact(name="report-files", path=c.REPORT_DIR)
    return Stage(
        name=c.REPORT,
        title=f"{spec.name}: report",
        description="Benchmark and load-test report, compared with the history.",
        module="reports",
        args=args,
        inputs=[
            Input(
                "input", "Directory with this run's autoscale-test and benchmark results.", c.run_dir(spec)
            ),
            Input("history", "Directory or s3:// prefix holding earlier runs.", spec.reports.history),
            Input("baseline", "`previous` or a pinned run id to compare with.", spec.reports.baseline),
            Input(
                SERVING_MODE,
                "How the deployment's pods ran (deploy's `isolation`): kubernetes, or netns / processes "
                "in a local run.",
                CLUSTER_ISOLATION,
            ),
        ],
        deadline_s=REPORT_DEADLINE_S,
        pod={"artifacts": [page, folder]},
    )


STAGE_BUILDERS = {
    c.DOWNLOAD: download,
    c.BUILD: build,
    c.PUBLISH: publish,
    c.DEPLOY: deploy,
    c.AUTOSCALE_TEST: autoscale_test,
    c.BENCHMARK: benchmark,
    c.REPORT: report,
}


def chart_values_text(spec: Spec) -> str:
    """chart_values(spec) as YAML: what deploy hands to helm."""
    import yaml

    return yaml.safe_dump(chart_values(spec), sort_keys=False)


def leader_endpoint(spec: Spec, port: int | None = None) -> str:
    """Default `url` for stages run alone: the release's leader Service inside the cluster."""
    # The pipeline passes deploy's `endpoint` output instead; this default serves the cron and
    # single-stage runs against an existing release.
    host = leader_service_host(spec.name, spec.cluster.namespace)
    return f"{host}:{port or spec.serving.service.http_port}"


def tokenizer_dir(spec: Spec) -> str | None:
    """Default tokenizer directory for stages run alone: spec.model.tokenizer when it is a path."""
    tokenizer = spec.model.tokenizer or ""
    if tokenizer.startswith("/"):
        return tokenizer
    source = spec.model.source_parts
    if "path" in source:
        return source["path"]
    if "hf_repo" in source and COMMIT.match(source["revision"]):
        # steps.download's layout is <root>/checkpoints/<org>/<name>/<commit>: only a pinned
        # commit names that directory before the download has run.
        return f"{_mount(spec)}/checkpoints/{source['hf_repo']}/{source['revision']}"
    return None


def stage_template(spec: Spec, stage: Stage, extra: list[Stage] = ()) -> WorkflowTemplate:
    """The WorkflowTemplate `<name>-<stage>`: the stage's container as entrypoint (+ `extra` ones)."""
    with WorkflowTemplate(
        entrypoint=stage.name,
        arguments=[c.spec_argument(spec), *(i.as_argument() for i in stage.inputs)],
        **c.workflow_settings(spec, stage.name, stage.title, stage.description),
    ) as template:
        stage.container(spec)
        for other in extra:
            other.container(spec)
    return template


def stage_templates(spec: Spec) -> list[WorkflowTemplate]:
    """The seven stage WorkflowTemplates, in pipeline order."""
    templates = []
    for name, builder in STAGE_BUILDERS.items():
        extra = [teardown(spec)] if name == c.DEPLOY else []
        templates.append(stage_template(spec, builder(spec), extra))
    return templates


def skips_build(spec: Spec) -> bool:
    """trtllm-pytorch serves the checkpoint directly: no engine build."""
    return spec.backend == Backend.TRTLLM_PYTORCH
