"""The deployment spec: one YAML file describes one deployment, everything else is derived.

Validated by pydantic before anything is rendered or submitted. Unknown keys are errors, and
every error is one line naming the field path and what would be valid. Derived values
(group size, world size, memory estimate) are computed here once and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import stat
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from workflows.backend_metrics import SIGNALS_BY_NAME, default_signal, produced_signals
from workflows.releases import DEFAULT_TRTLLM, check_release

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
GIB = 1024**3
# Kubernetes counts (replicas, sizes, ports, seconds) are int32 in the API objects they end up in.
INT32_MAX = 2**31 - 1

PositiveInt = Annotated[int, Field(ge=1)]
Seconds = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Replicas = Annotated[int, Field(ge=1, le=INT32_MAX)]
Port = Annotated[int, Field(ge=1, le=65535)]


class SpecError(ValueError):
    """A spec that cannot be used; each line of the message is one problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, values are not coerced silently
    (pydantic strict mode: `tp: "8"` or `streaming: "yes"` is refused, an int is still a float)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True, strict=True)


# Enum fields take their values as YAML strings (strict mode alone would want enum members).
def _enum_field(default: Any, **kwargs: Any) -> Any:
    return Field(default=default, strict=False, **kwargs)


# --- Kubernetes value grammars (what the API server or the chart's values.schema.json refuses) ----

# A label key (IsQualifiedName, k8s.io/apimachinery pkg/util/validation/validation.go): an optional
# DNS-1123 subdomain prefix of <= 253 characters, "/", a name of <= 63 characters.
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def check_label_key(key: str) -> str:
    """`key` if Kubernetes takes it as a label key (prefix/name), else ValueError saying why."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not (len(prefix) <= 253 and DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError("the prefix before '/' must be a DNS subdomain of <= 253 characters")
    if not (len(name) <= 63 and QUALIFIED_NAME.fullmatch(name)):
        raise ValueError(
            "is not a label key (pattern [prefix/]name, the name <= 63 letters, digits, '-', '_', '.', "
            "starting and ending with a letter or digit)"
        )
    return key


def check_label_value(value: str) -> str:
    """`value` if Kubernetes takes it as a label value (<= 63 characters, possibly empty)."""
    if not (len(value) <= 63 and LABEL_VALUE.fullmatch(value)):
        raise ValueError(
            f"label value {value!r} is not <= 63 letters, digits, '-', '_', '.', starting and ending "
            "with a letter or digit"
        )
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(value)
    return labels


Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
LabelKey = Annotated[str, AfterValidator(check_label_key)]

# charts/triton-lws/values.schema.json's quantity pattern (resources.cpu/memory/shmSize).
CHART_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?")


def check_quantity(value: str) -> str:
    """A positive Kubernetes quantity (kubernetes.utils.parse_quantity) in the chart's notation."""
    # Imported on use: the kubernetes client is heavy, and most importers of the spec (the CLI's
    # help, the steps' --help, the Triton stub) never validate a quantity.
    from kubernetes.utils import parse_quantity

    try:
        amount = parse_quantity(value)
    except ValueError:
        amount = None
    if amount is None or amount <= 0 or not CHART_QUANTITY.fullmatch(value):
        raise ValueError("is not a positive Kubernetes quantity such as 96, 500m, 1024Gi or 1.5Ti")
    return value


Quantity = Annotated[str, AfterValidator(check_quantity)]


def check_absolute_path(value: str) -> str:
    """An absolute, normalized POSIX path (no '..', '.', '//' or trailing '/'): a container mountPath."""
    if not (value.startswith("/") and posixpath.normpath(value) == value and "//" not in value) or (
        re.search(r"\s", value)
    ):
        raise ValueError(
            "is not an absolute clean path (no '..', '.', '//', spaces, trailing '/'), e.g. /models"
        )
    return value


AbsolutePath = Annotated[str, AfterValidator(check_absolute_path)]

# An image reference (github.com/distribution/reference regexp.go, v0.6.0): [domain[:port]/]path
# [:tag][@digest]; the digest as the chart's values.schema.json takes it (sha256 only).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)
IMAGE_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?"
)


def check_image(value: str) -> str:
    """`value` if it is an image reference (registry/path:tag[@sha256:digest]) of <= 255 characters."""
    if len(value) > 255 or not IMAGE_REFERENCE.fullmatch(value):
        raise ValueError("is not an image reference such as ghcr.io/org/name:tag or name@sha256:<64 hex>")
    return value


ImageRef = Annotated[str, AfterValidator(check_image)]

# Cron fields as Argo's CronWorkflow parser bounds them (github.com/robfig/cron/v3 v3.0.1, spec.go
# and parser.go getRange: '*'/'?', a-b, /step >= 1, names case-insensitive, start <= end).
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),  # robfig has no 7 for Sunday (spec.go bounds)
)
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
CRON_NAMES = {
    "month": {name: number for number, name in enumerate(MONTHS, start=1)},
    "day of week": {name: number for number, name in enumerate(WEEKDAYS)},
}


def _cron_value(text: str, field: str, low: int, high: int) -> int:
    value = CRON_NAMES.get(field, {}).get(text.lower())
    if value is None and text.isdigit():
        value = int(text)
    if value is None or not low <= value <= high:
        raise ValueError(f"{field} {text!r} is out of range {low}-{high}")
    return value


def check_cron(schedule: str) -> str:
    """A 5-field cron expression whose every field is in range (lists, ranges, steps, names, * and ?)."""
    parts = schedule.split()
    if len(parts) != len(CRON_FIELDS):
        raise ValueError(f"{schedule!r} is not a 5-field cron expression such as '0 3 * * *'")
    for part, (field, low, high) in zip(parts, CRON_FIELDS, strict=True):
        for item in part.split(","):
            span, _, step = item.partition("/")
            if step and not (step.isdigit() and int(step) >= 1):
                raise ValueError(f"{schedule!r}: {field} step {step!r} must be a positive integer")
            if span in ("*", "?"):
                continue
            start, _, end = span.partition("-")
            first = _cron_value(start, field, low, high)
            if end and _cron_value(end, field, low, high) < first:
                raise ValueError(f"{schedule!r}: {field} range {span!r} ends before it starts")
    return schedule


# --- model ---------------------------------------------------------------------------------------

MODEL_URI = re.compile(
    r"^(hf://(?P<hf_repo>[\w.-]+/[\w.-]+)@(?P<revision>[\w./-]+)"
    r"|s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<prefix>\S+)"
    r"|(?P<path>/\S*))$"
)


# Values shaped like the credentials users paste by mistake (public formats of each issuer): Hugging
# Face tokens, AWS access key ids (long-term AKIA, session ASIA), GitHub tokens, JWTs, and the
# user[:password]@ part of a URL. Such a value is refused and never shown back.
SECRET_VALUE = re.compile(
    r"hf_[A-Za-z0-9]{30,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{22,})"
    r"|\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]+"
    r"|(?<=://)[^/@\s'\"]+@"
)
HIDDEN = "<hidden: looks like a credential>"


def hide_secrets(text: str) -> str:
    """`text` with every secret-looking part replaced, for error lines."""
    return SECRET_VALUE.sub(HIDDEN, text)


class SecretRef(Strict):
    """A key in a Kubernetes Secret; literal credentials never appear in a spec."""

    name: str = Field(pattern=DNS_LABEL)
    key: str = Field(default="token", min_length=1)

    @field_validator("name", "key", mode="before")
    @classmethod
    def _not_a_credential(cls, value: Any) -> Any:
        if isinstance(value, str) and SECRET_VALUE.search(value):
            raise ValueError(
                "is a credential, not the name or key of a Kubernetes Secret; store the token in a "
                "Secret (kubectl create secret generic NAME --from-literal=token=...) and name it here"
            )
        return value


class ModelSpec(Strict):
    source: str = Field(description="hf://org/name@revision, s3://bucket/prefix or /absolute/path")
    family: Literal["llama"] = "llama"
    parameters_billion: float = Field(gt=0, description="parameter count, for the memory estimate")
    tokenizer: str | None = Field(default=None, description="tokenizer source; defaults to the checkpoint")
    hf_token_secret: SecretRef | None = None

    @field_validator("source", "tokenizer")
    @classmethod
    def _valid_uri(cls, value: str | None) -> str | None:
        # fullmatch: `$` alone would let a trailing newline through into the steps' arguments.
        if value is not None and not MODEL_URI.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a model URI; use hf://org/name@revision, s3://bucket/prefix "
                "or an absolute path"
            )
        return value

    @model_validator(mode="after")
    def _hub_needs_token_secret(self) -> ModelSpec:
        if self.source.startswith("hf://") and self.hf_token_secret is None:
            raise ValueError(
                "hf_token_secret is required for hf:// sources: name the Secret holding the token "
                "(e.g. {name: hf-token, key: token}); tokens are never written in a spec"
            )
        return self

    @property
    def source_parts(self) -> dict[str, str]:
        """The named parts of `source`: hf_repo/revision, bucket/prefix, or path."""
        match = MODEL_URI.match(self.source)
        assert match is not None  # validated above
        return {k: v for k, v in match.groupdict().items() if v is not None}


# --- backend and build ---------------------------------------------------------------------------


class Backend(StrEnum):
    TRTLLM_ENGINE = "trtllm-engine"
    TRTLLM_PYTORCH = "trtllm-pytorch"
    CPU_PYTHON = "cpu-python"  # the local profile: a Triton python-backend model on CPU


class Dtype(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(StrEnum):
    NONE = "none"
    FP8 = "fp8"
    INT8_WEIGHT_ONLY = "int8_wo"
    INT4_AWQ = "int4_awq"


BYTES_PER_WEIGHT = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0}
QUANTIZED_BYTES_PER_WEIGHT = {"fp8": 1.0, "int8_wo": 1.0, "int4_awq": 0.5}


class BuildSpec(Strict):
    dtype: Dtype = _enum_field(Dtype.BFLOAT16)
    quantization: Quantization = _enum_field(Quantization.NONE)
    tp: PositiveInt = 1
    pp: PositiveInt = 1
    max_batch_size: PositiveInt = 8
    max_num_tokens: PositiveInt = 8192
    max_input_len: PositiveInt = 4096
    max_seq_len: PositiveInt = 8192
    paged_context_fmha: bool = True
    kv_cache_free_gpu_mem_fraction: float = Field(default=0.9, gt=0, le=1)
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    convert_workers: PositiveInt = Field(default=2, description="convert_checkpoint.py --workers")
    extra_build_flags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lengths_consistent(self) -> BuildSpec:
        if self.max_input_len > self.max_seq_len:
            raise ValueError(
                f"max_input_len ({self.max_input_len}) must be <= max_seq_len ({self.max_seq_len})"
            )
        return self

    @property
    def bytes_per_weight(self) -> float:
        """Bytes one parameter takes on the GPU after quantization."""
        if self.quantization != Quantization.NONE:
            return QUANTIZED_BYTES_PER_WEIGHT[self.quantization]
        return BYTES_PER_WEIGHT[self.dtype]


# --- cluster -------------------------------------------------------------------------------------


class Toleration(Strict):
    key: LabelKey
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @field_validator("value")
    @classmethod
    def _label_value(cls, value: str | None) -> str | None:
        return value if value is None else check_label_value(value)


class S3Location(Strict):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = "megapod"
    region: str | None = None
    endpoint_url: str | None = Field(default=None, description="for S3-compatible stores")

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials_in_url(cls, value: str | None) -> str | None:
        if value is not None and SECRET_VALUE.search(value):
            raise ValueError(
                "must not carry credentials (user:password@ or a token); give them to the pods as "
                "AWS credentials (environment or IAM role), never in the spec"
            )
        return value


PROMETHEUS_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


class DcgmLabels(Strict):
    """The labels of DCGM_FI_* series naming the pod (and its namespace) that owns the GPU.

    dcgm-exporter's Helm chart (3.x and 4.x) scrapes with `honorLabels: false`, so Prometheus keeps its
    own target labels and renames the exporter's to exported_pod / exported_namespace.
    """

    pod: str = Field(
        default="exported_pod", pattern=PROMETHEUS_LABEL, description="`pod` with honorLabels: true"
    )
    namespace: str = Field(default="exported_namespace", pattern=PROMETHEUS_LABEL)


class ClusterSpec(Strict):
    namespace: str = Field(default="default", pattern=DNS_LABEL)
    instance_type: str | None = Field(default=None, description="e.g. p5.48xlarge; used as a node selector")
    gpu_product: str | None = Field(default=None, description="nvidia.com/gpu.product label value")
    gpus_per_node: PositiveInt = 8
    gpu_memory_gib: float = Field(default=80, gt=0)
    efa_per_node: NonNegativeInt = 0
    cpu: Quantity = "96"
    memory: Quantity = "1024Gi"
    hugepages_2mi: str | None = Field(default=None, description="hugepages-2Mi per pod, e.g. 5120Mi (EFA)")
    shm_size: Quantity = "256Gi"
    node_selector: Labels = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    volume_claim: str = Field(default="megapod-models", pattern=DNS_LABEL)
    volume_mount: AbsolutePath = "/var/run/models"
    s3: S3Location | None = None
    service_account: str = Field(default="megapod-pipeline", pattern=DNS_LABEL)
    gpu_pool: str = Field(default="gpu", pattern=DNS_LABEL, description="mutex name for the GPU pool")
    monitoring_labels: Labels = Field(
        default_factory=dict,
        description="labels your Prometheus selects monitors and rules by, e.g. {release: prometheus}",
    )
    prometheus_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="in-cluster Prometheus for server metrics, e.g. http://prometheus-operated.monitoring:9090",
    )
    dcgm_labels: DcgmLabels = Field(default_factory=DcgmLabels)

    @field_validator("hugepages_2mi")
    @classmethod
    def _optional_quantity(cls, value: str | None) -> str | None:
        return value if value is None else check_quantity(value)


# --- serving -------------------------------------------------------------------------------------


# The per-group scaling signals (workflows/backend_metrics.py says which backend produces which).
ScalingMetric = StrEnum("ScalingMetric", {name.upper(): name for name in SIGNALS_BY_NAME})


class ScalingPolicy(Strict):
    type: Literal["Pods", "Percent"]
    value: PositiveInt
    period_seconds: Annotated[int, Field(ge=1, le=1800)]


class ScalingRules(Strict):
    stabilization_window_seconds: Annotated[int, Field(ge=0, le=3600)]
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: list[ScalingPolicy] = Field(min_length=1)


def _default_scale_up() -> ScalingRules:
    # One group at a time, no faster than a group can possibly become ready.
    return ScalingRules(
        stabilization_window_seconds=60,
        policies=[ScalingPolicy(type="Pods", value=1, period_seconds=300)],
    )


def _default_scale_down() -> ScalingRules:
    # Groups take tens of minutes to come back: keep them through short lulls.
    return ScalingRules(
        stabilization_window_seconds=1800,
        policies=[ScalingPolicy(type="Pods", value=1, period_seconds=600)],
    )


class Provisioning(Strict):
    """How long a new group takes to serve; the HPA simulator uses these (defaults: measured on p5)."""

    node_boot_s: NonNegativeInt = 420
    image_pull_s: NonNegativeInt = 600
    model_load_s: NonNegativeInt = 1200


class AutoscalingSpec(Strict):
    engine: Literal["hpa", "keda", "none"] = "hpa"
    metric: ScalingMetric | None = _enum_field(
        None,
        description="default: the backend's (batch_slot_occupancy; request_rate for trtllm-pytorch)",
    )
    target: float | None = Field(
        default=None, gt=0, description="per group; default: the metric's (0.8 for the ratios), else required"
    )
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    sync_period_s: PositiveInt = 15
    scale_up: ScalingRules = Field(default_factory=_default_scale_up)
    scale_down: ScalingRules = Field(default_factory=_default_scale_down)
    provisioning: Provisioning = Field(default_factory=Provisioning)


class ReplicaBounds(Strict):
    min: Replicas = 1
    max: Replicas = 1

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class ServiceSpec(Strict):
    type: Literal["ClusterIP", "NLB", "ALB"] = "ClusterIP"
    scheme: Literal["internal", "internet-facing"] = Field(default="internal", description="NLB/ALB scheme")
    certificate_arn: str | None = Field(default=None, description="ACM certificate for the ALB (HTTPS)")
    http_port: Port = 8000
    grpc_port: Port = 8001
    metrics_port: Port = 8002


class TopologySpec(Strict):
    """Where a group's pods go relative to one another, by a node label such as the EFA spine.

    `preferred` asks the scheduler to co-locate a group's pods and never blocks a scale-up.
    `exclusive` is LWS's exclusive placement (required affinity inside the group, required
    anti-affinity to other groups): the Cluster Autoscaler cannot add nodes for a second group,
    because the template node it copies from a busy domain fails the anti-affinity and a group
    scaled from zero has no such label yet. Use it only with pre-provisioned capacity.
    """

    key: LabelKey = Field(description="a node label such as topology.k8s.aws/network-node-layer-3")
    mode: Literal["preferred", "exclusive"] = "preferred"


class RolloutSpec(Strict):
    """How `helm upgrade` replaces groups (LWS rollingUpdateConfiguration).

    LWS defaults to maxUnavailable 1, maxSurge 0: with one group a rolling update is an outage.
    megapod surges one group instead (it needs one group's worth of spare nodes while it starts).
    """

    max_surge: NonNegativeInt = 1
    max_unavailable: NonNegativeInt = 0

    @model_validator(mode="after")
    def _not_both_zero(self) -> RolloutSpec:
        # leaderworkerset_webhook.go (v0.7.0) refuses both 0: no rollout could make progress.
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0 (the rollout could not start)")
        return self


class ServingSpec(Strict):
    image: ImageRef = Field(
        default="ghcr.io/megapod/triton-trtllm:0.1.0",
        description="the serving image built from images/triton-trtllm (Triton + TRT-LLM + sshd + launcher)",
    )
    trtllm_version: str | None = Field(
        default=None,
        description="TensorRT-LLM release serving.image is built on (`megapod images` derives its Triton "
        "base); default per backend: trtllm-engine 0.12.0, trtllm-pytorch 0.19.0",
    )
    replicas: ReplicaBounds = Field(default_factory=ReplicaBounds)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    ssh_port: Annotated[int, Field(ge=1024, le=65535)] = 2222
    startup_timeout_s: Seconds = 3600
    barrier_timeout_s: Seconds = 900
    termination_grace_s: Seconds = 120
    topology: TopologySpec | None = Field(
        default=None, description="keep each group's pods inside one network domain (EFA locality)"
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    @model_validator(mode="after")
    def _ports_distinct(self) -> ServingSpec:
        # One pod serves all four: a port used twice cannot be bound (and the chart's Service
        # would carry two ports with one number, which Kubernetes refuses).
        ports = {
            "service.http_port": self.service.http_port,
            "service.grpc_port": self.service.grpc_port,
            "service.metrics_port": self.service.metrics_port,
            "ssh_port": self.ssh_port,
        }
        seen: dict[int, str] = {}
        for field, port in ports.items():
            if port in seen:
                raise ValueError(
                    f"{field} ({port}) is the same port as {seen[port]}; give each a port of its own"
                )
            seen[port] = field
        return self


# --- load test, benchmark, reports ---------------------------------------------------------------


class LoadStage(Strict):
    name: str = Field(pattern=DNS_LABEL)
    concurrency: NonNegativeInt
    duration_s: Seconds


class LoadExpectations(Strict):
    groups_serving: PositiveInt | None = Field(default=None, description="groups serving traffic ...")
    within_s: Seconds | None = Field(default=None, description="... within this many seconds of load start")
    p95_ttft_ms: float | None = Field(default=None, gt=0, description="p95 TTFT bound during scale-up")


class LoadTestSpec(Strict):
    stages: list[LoadStage] = Field(
        default_factory=lambda: [
            LoadStage(name="ramp", concurrency=8, duration_s=300),
            LoadStage(name="hold", concurrency=32, duration_s=2700),
            LoadStage(name="drop", concurrency=0, duration_s=1800),
        ],
        min_length=1,
    )
    isl: PositiveInt = 1024
    osl: PositiveInt = 256
    max_requests: PositiveInt = 100_000
    sample_interval_s: PositiveInt = 5
    expect: LoadExpectations = Field(default_factory=LoadExpectations)

    @property
    def duration_s(self) -> int:
        """Total planned duration of all stages."""
        return sum(stage.duration_s for stage in self.stages)


class Sequence(Strict):
    isl: PositiveInt
    osl: PositiveInt


class BenchmarkSpec(Strict):
    tool: Literal["genai-perf", "aiperf"] = "aiperf"
    concurrency: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 16, 64], min_length=1)
    sequences: list[Sequence] = Field(
        default_factory=lambda: [Sequence(isl=128, osl=128), Sequence(isl=2048, osl=128)], min_length=1
    )
    request_count: PositiveInt = 100
    warmup_requests: NonNegativeInt = 4
    streaming: bool = True
    point_timeout_s: Seconds = 1800
    random_seed: int = 123
    schedules: list[str] = Field(
        default_factory=lambda: ["0 3 * * *"],
        min_length=1,
        description="cron schedules (UTC) of the nightly benchmark",
    )

    @field_validator("schedules")
    @classmethod
    def _cron_expressions(cls, schedules: list[str]) -> list[str]:
        return [check_cron(schedule) for schedule in schedules]


class RegressionThresholds(Strict):
    """Relative change that counts as a regression, per metric (negative: a drop is bad)."""

    output_token_throughput: float = -0.05
    request_throughput: float = -0.05
    time_to_first_token_p95: float = 0.10
    inter_token_latency_p95: float = 0.10


class ReportsSpec(Strict):
    history: str = Field(default="/var/run/models/megapod/history", description="directory or s3:// prefix")
    baseline: str = Field(default="previous", description="'previous' or a pinned run id")
    fail_on_regression: bool = False
    thresholds: RegressionThresholds = Field(default_factory=RegressionThresholds)


class Images(Strict):
    pipeline: ImageRef = "ghcr.io/megapod/pipeline:0.1.0"


class ArgoSpec(Strict):
    """The Argo Workflows installation the pipeline runs on (v3.7 or newer)."""

    memoize: bool = Field(
        default=False,
        description="cache download/build outputs in the ConfigMap <name>-memo; a stock controller may "
        "only read ConfigMaps, so rbac.yaml then grants it get/create/update on that one",
    )
    controller_service_account: str = Field(
        default="argo", pattern=DNS_LABEL, description="the workflow-controller's ServiceAccount"
    )
    controller_namespace: str = Field(
        default="argo", pattern=DNS_LABEL, description="the namespace the workflow-controller runs in"
    )


# --- the spec ------------------------------------------------------------------------------------

# The chart names every object `<release>-triton-lws`, truncated to 40 characters, or just the
# release when it already contains "triton-lws" (`triton-lws.fullname`, charts/triton-lws/
# templates/_helpers.tpl; workflows.chart_values.release_fullname). That is one-to-one only for
# names of <= 40 - len("-triton-lws") characters without "triton-lws" (else `a` and `a-triton-lws`,
# or two names equal in their first 29 characters plus a "-triton-lw" tail, share every object);
# the leader Service's name is a DNS-1035 label, so the name starts with a letter.
RELEASE_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class Spec(Strict):
    """One deployment: what model, built how, served where, tested and reported how."""

    name: str = Field(
        pattern=RELEASE_NAME,
        description="deployment / release name; short enough that the chart's object names "
        "(<name>-triton-lws, cut at the chart's limit) stay its own",
    )
    model: ModelSpec
    backend: Backend = _enum_field(Backend.TRTLLM_ENGINE)
    build: BuildSpec = Field(default_factory=BuildSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    loadtest: LoadTestSpec = Field(default_factory=LoadTestSpec)
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    reports: ReportsSpec = Field(default_factory=ReportsSpec)
    images: Images = Field(default_factory=Images)
    argo: ArgoSpec = Field(default_factory=ArgoSpec)

    @model_validator(mode="before")
    @classmethod
    def _backend_scaling_defaults(cls, data: Any) -> Any:
        """Fill serving.autoscaling.metric/target left out: the backend's default signal, its target."""
        serving = data.get("serving", {}) if isinstance(data, dict) else None
        autoscaling = serving.get("autoscaling", {}) if isinstance(serving, dict) else None
        backend = str(data.get("backend", Backend.TRTLLM_ENGINE)) if isinstance(data, dict) else ""
        if not isinstance(autoscaling, dict) or backend not in set(Backend):
            return data  # not plain data, or a bad backend: the field validators report it
        version = serving.get("trtllm_version") or DEFAULT_TRTLLM.get(backend)
        try:
            metric = str(autoscaling.get("metric") or default_signal(backend, version))
        except ValueError:
            return data  # a release megapod does not serve: _release_can_work says which would
        if metric not in SIGNALS_BY_NAME:
            raise ValueError(_metric_not_produced(metric, backend, version))
        target = autoscaling.get("target", SIGNALS_BY_NAME[metric].default_target)
        autoscaling = {**autoscaling, "metric": metric, "target": target}
        return {**data, "serving": {**serving, "autoscaling": autoscaling}}

    @field_validator("name")
    @classmethod
    def _objects_are_our_own(cls, name: str) -> str:
        # Imported here: workflows.chart_values derives the chart's values from this module.
        from workflows.chart_values import CHART_NAME, MAX_FULLNAME

        longest = MAX_FULLNAME - len(f"-{CHART_NAME}")
        if len(name) > longest:
            raise ValueError(
                f"must be at most {longest} characters: the chart names its objects <name>-{CHART_NAME} and "
                f"cuts them at {MAX_FULLNAME}, so longer names can share another release's objects"
            )
        if CHART_NAME in name:
            raise ValueError(
                f"must not contain {CHART_NAME!r}: the chart would name its objects {name!r}, like those of "
                f"release {name.replace(CHART_NAME, '').strip('-') or 'x'!r}; drop it from the name"
            )
        return name

    @model_validator(mode="after")
    def _lengths_fit_the_build(self) -> Spec:
        # trtllm-build's engine refuses a request longer than max_input_len (input) or max_seq_len
        # (input + output): every benchmark point and the load test would fail after the build.
        sequences = [
            (f"benchmark.sequences.{i}", seq.isl, seq.osl) for i, seq in enumerate(self.benchmark.sequences)
        ]
        sequences.append(("loadtest", self.loadtest.isl, self.loadtest.osl))
        for where, isl, osl in sequences:
            if isl > self.build.max_input_len:
                raise ValueError(
                    f"{where}.isl ({isl}) is above build.max_input_len ({self.build.max_input_len})"
                )
            if isl + osl > self.build.max_seq_len:
                raise ValueError(
                    f"{where}.isl + osl ({isl} + {osl}) is above build.max_seq_len ({self.build.max_seq_len})"
                )
        return self

    @model_validator(mode="after")
    def _expectations_reachable(self) -> Spec:
        expected, most = self.loadtest.expect.groups_serving, self.serving.replicas.max
        if expected is not None and expected > most:
            raise ValueError(
                f"loadtest.expect.groups_serving ({expected}) is above serving.replicas.max ({most}): "
                "the load test could never pass"
            )
        return self

    @model_validator(mode="after")
    def _release_can_work(self) -> Spec:
        # Before the metric checks: a release that cannot work explains every later problem.
        check_release(self.backend, self.serving.trtllm_version, self.serving.image)
        return self

    @model_validator(mode="after")
    def _benchmark_tool_speaks_the_backend(self) -> Spec:
        # genai-perf 0.0.16's kserve payload (inputs/converters/tensorrtllm_converter.py) always
        # names the ensemble's inputs; perf_analyzer refuses inputs a model does not declare.
        if self.benchmark.tool == "genai-perf" and self.backend == Backend.TRTLLM_PYTORCH:
            raise ValueError(
                "benchmark.tool genai-perf sends the TRT-LLM ensemble's inputs (max_tokens, stream, "
                "min_length, exclude_input_in_output), which the llmapi model tensorrt_llm of backend "
                "trtllm-pytorch does not declare, and perf_analyzer refuses unknown inputs; use "
                "benchmark.tool aiperf"
            )
        return self

    @model_validator(mode="after")
    def _backend_produces_metric(self) -> Spec:
        metric, target = self.serving.autoscaling.metric, self.serving.autoscaling.target
        if metric not in produced_signals(str(self.backend), self.trtllm_version):
            raise ValueError(_metric_not_produced(str(metric), str(self.backend), self.trtllm_version))
        if target is None:
            raise ValueError(
                f"serving.autoscaling.target is required for metric {metric} (per group; measure what one "
                "group sustains with the benchmark)"
            )
        return self

    @model_validator(mode="after")
    def _plan_fits(self) -> Spec:
        check_group_divides(self.build.tp, self.build.pp, self.cluster.gpus_per_node)
        if self.world_size > INT32_MAX:  # the chart's group.worldSize, LWS `size`: int32 in Kubernetes
            raise ValueError(
                f"build.tp*build.pp = {self.world_size} GPUs is beyond what Kubernetes counts "
                f"(int32, {INT32_MAX}); no cluster has that many"
            )
        check_weights_fit(self)
        return self

    # Derived values: the only place they are computed.
    @property
    def world_size(self) -> int:
        """MPI ranks per model instance: one per GPU."""
        return self.build.tp * self.build.pp

    @property
    def trtllm_version(self) -> str | None:
        """The TensorRT-LLM release the serving image carries (None: the backend runs none)."""
        return self.serving.trtllm_version or DEFAULT_TRTLLM.get(self.backend)

    @property
    def group_size(self) -> int:
        """Pods (nodes) per model instance: the LeaderWorkerSet `size`."""
        return max(1, self.world_size // self.cluster.gpus_per_node)

    @property
    def gpus_per_pod(self) -> int:
        """GPUs each pod of a group requests."""
        return min(self.world_size, self.cluster.gpus_per_node)

    @property
    def weight_bytes(self) -> float:
        """Bytes of weights on the GPUs of one group."""
        return self.model.parameters_billion * 1e9 * self.build.bytes_per_weight

    @property
    def group_memory_bytes(self) -> float:
        """GPU memory in one group."""
        return self.world_size * self.cluster.gpu_memory_gib * GIB

    def content_hash(self) -> str:
        """A stable hash of the whole spec (for build manifests and memoization keys)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """The derived plan as plain values, for `megapod validate` and reports."""
        return {
            "name": self.name,
            "backend": self.backend,
            "tp": self.build.tp,
            "pp": self.build.pp,
            "world_size": self.world_size,
            "group_size": self.group_size,
            "gpus_per_pod": self.gpus_per_pod,
            "weights_gib": round(self.weight_bytes / GIB, 1),
            "group_memory_gib": round(self.group_memory_bytes / GIB, 1),
            "weights_fraction": round(self.weight_bytes / self.group_memory_bytes, 3),
        }


def _metric_not_produced(metric: str, backend: str, version: str | None) -> str:
    release = f" (TensorRT-LLM {version})" if version else ""
    return (
        f"serving.autoscaling.metric {metric} is not produced by backend {backend}{release}; "
        f"use one of: {', '.join(produced_signals(backend, version))}"
    )


# Weights may take at most this share of a group's GPU memory; the rest is KV cache and activations.
MAX_WEIGHTS_FRACTION = 0.9


def check_group_divides(tp: int, pp: int, gpus_per_node: int) -> None:
    """Refuse a tp*pp that does not fill whole nodes (or fit inside one)."""
    world = tp * pp
    if world > gpus_per_node and world % gpus_per_node:
        raise ValueError(
            f"build.tp*build.pp = {tp}*{pp} = {world} GPUs is not a multiple of cluster.gpus_per_node "
            f"({gpus_per_node}); use a world size that fills whole nodes, e.g. "
            f"{gpus_per_node * math.ceil(world / gpus_per_node)}"
        )


def check_weights_fit(spec: Spec) -> None:
    """Refuse a plan whose weights cannot fit the group's GPU memory, suggesting what would."""
    budget = spec.group_memory_bytes * MAX_WEIGHTS_FRACTION
    if spec.weight_bytes <= budget:
        return
    suggestions = []
    per_gpu_budget = spec.cluster.gpu_memory_gib * GIB * MAX_WEIGHTS_FRACTION
    gpus_needed = math.ceil(spec.weight_bytes / per_gpu_budget)
    pp_needed = math.ceil(gpus_needed / spec.build.tp)
    suggestions.append(f"build.pp={pp_needed} ({spec.build.tp * pp_needed} GPUs)")
    for quant, nbytes in QUANTIZED_BYTES_PER_WEIGHT.items():
        if nbytes < spec.build.bytes_per_weight and spec.model.parameters_billion * 1e9 * nbytes <= budget:
            suggestions.append(f"build.quantization={quant}")
            break
    raise ValueError(
        f"weights need {spec.weight_bytes / GIB:.0f} GiB but one group of {spec.world_size} x "
        f"{spec.cluster.gpu_memory_gib:g} GiB GPUs allows {budget / GIB:.0f} GiB "
        f"({MAX_WEIGHTS_FRACTION:.0%}); try {' or '.join(suggestions)}"
    )


# --- loading -------------------------------------------------------------------------------------


def _format_error(error: Any) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see README 'Spec reference')"
    elif error["type"] in ("enum", "literal_error"):
        message = message.replace("Input should be", "must be one of")
    else:
        message = message.replace("Input should be", "must be").replace("greater than or equal to", ">=")
        message = message.replace("less than or equal to", "<=").replace("greater than", ">")
    got = error.get("input")
    if error["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
        message += f" (got {got!r})"
    # Every field's line passes here: a pasted token is never echoed back, whatever field held it.
    return hide_secrets(f"{path}: {message}" if path else message)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML 6.0 keeps the last
    one silently; YAML 1.2 says keys are unique, and helm's sigs.k8s.io/yaml refuses them)."""

    def get_single_data(self) -> Any:
        """The document, after checking every mapping in it for duplicate keys."""
        node = self.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node)
        return self.construct_document(node)


def _refuse_duplicate_keys(root: yaml.Node) -> None:
    """ConstructorError naming the dotted path and line of the first repeated key (iterative; an
    alias's node is walked once)."""
    seen: set[int] = set()
    stack: list[tuple[str, yaml.Node]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((f"{path}{i}.", child) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                if name in first and key.tag != "tag:yaml.org,2002:merge":
                    raise yaml.constructor.ConstructorError(
                        problem=f"duplicate key {path}{name} (first at line {first[name] + 1}); keep one",
                        problem_mark=key.start_mark,
                    )
                first.setdefault(name, key.start_mark.line)
                stack.append((f"{path}{name}.", value))


class SpecLoader(UniqueKeyLoader):
    """UniqueKeyLoader that also reads `1e9` as a number, as YAML 1.2 and Kubernetes' go-yaml do
    (PyYAML's YAML 1.1 resolver wants `1.0e9` and would pass the string on)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)

# No spec is nested deeper than a handful of levels; YAML nested thousands deep only exhausts the stack.
MAX_NESTING = 16
# Numbers beyond 2**53 are no setting (and lose precision as floats): refused before any
# derivation multiplies them into infinity.
MAX_NUMBER = 2**53


def _value_problems(data: Any, origin: str) -> list[str]:
    """Lines for values no field accepts, found before validation: non-finite or huge numbers
    (`.inf`, 1e308, 5000-digit ints) and nesting deeper than MAX_NESTING (iterative, no recursion)."""
    problems = []
    seen: set[int] = set()  # YAML aliases share nodes: each is walked once (no "billion laughs")
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        where = ".".join(str(part) for part in path)
        if len(path) > MAX_NESTING:
            problems.append(f"{origin}: {where[:120]}...: nested more than {MAX_NESTING} levels deep")
        elif isinstance(node, dict | list):
            if id(node) not in seen:
                seen.add(id(node))
                items = node.items() if isinstance(node, dict) else enumerate(node)
                stack.extend(((*path, key), value) for key, value in items)
        elif _out_of_range(node):
            shown = repr(node) if isinstance(node, float) else f"an integer of {len(str(abs(node)))} digits"
            problems.append(f"{origin}: {where}: must be a finite number within ±2**53 (got {shown})")
    return sorted(problems)


def _out_of_range(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # An int is compared as an int: float() of a 4000-digit one overflows.
    return abs(value) > MAX_NUMBER if isinstance(value, int) else not abs(value) <= MAX_NUMBER


def parse_spec(data: Any, origin: str = "spec") -> Spec:
    """Validate already-parsed YAML data; raise SpecError with one line per problem."""
    if not isinstance(data, dict):
        raise SpecError([f"{origin}: expected a mapping of spec sections, got {type(data).__name__}"])
    if problems := _value_problems(data, origin):
        raise SpecError(problems)
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([f"{origin}: {_format_error(e)}" for e in exc.errors()]) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raise SpecError with one line per problem."""
    path = Path(path)
    data = read_yaml(path, "spec", lambda text: yaml.load(text, Loader=SpecLoader))  # a SafeLoader
    return parse_spec(data, str(path))


def read_yaml(path: Path, what: str, load: Callable[[str], Any]) -> Any:
    """`load(text)` of a YAML file (see read_yaml_text); SpecError, one line, for text that is not
    YAML, nested too deeply to parse, or holding an int beyond Python's 4300-digit limit."""
    text = read_yaml_text(path, what)
    try:
        return load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise SpecError([f"{path}:{where} not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except RecursionError:
        raise SpecError([f"{path}: nested too deeply to read (far more than {MAX_NESTING} levels)"]) from None
    except ValueError as exc:  # yaml's int(): more digits than Python converts
        raise SpecError([f"{path}: a value cannot be read ({str(exc).split(';')[0]})"]) from None


def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file (`what`: "spec", "rendered" for lint's messages); SpecError for a
    missing or non-regular file (checked before opening: a FIFO would block forever) or bytes that
    are not UTF-8."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SpecError([f"{path}: no such {what} file"]) from None
    except OSError as exc:
        raise SpecError([f"{path}: cannot read it ({exc.strerror})"]) from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise SpecError([f"{path}: {kind}; give the {what} YAML file"])
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: not UTF-8 text (byte {exc.start}); YAML files are UTF-8 text"]) from None
    except OSError as exc:
        raise SpecError([f"{path}: cannot read it ({exc.strerror})"]) from None
