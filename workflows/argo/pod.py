"""What a stage's pod gets from the spec: volumes, GPU/EFA resources, placement, secrets, retries."""

from __future__ import annotations

from hera.workflows import EmptyDirVolume, Env, ExistingVolume, Resources, RetryStrategy, SecretEnv
from hera.workflows.models import Backoff, Cache, IntOrString, LocalObjectReference, Memoize, Toleration

from workflows.chart_values import chart_values
from workflows.spec import Spec

GPU_RESOURCE = "nvidia.com/gpu"
EFA_RESOURCE = "vpc.amazonaws.com/efa"
HUGEPAGES_RESOURCE = "hugepages-2Mi"
HF_TOKEN_ENV = "HF_TOKEN"  # what huggingface_hub reads

# CPU-only stages move files or drive clients: small pods; download fetches many shards in parallel.
SMALL_POD = Resources(cpu_request="1", memory_request="4Gi", memory_limit="8Gi")
DOWNLOAD_POD = Resources(cpu_request="4", memory_request="16Gi", memory_limit="32Gi")


def models_volume(spec: Spec) -> ExistingVolume:
    """The RWX claim holding checkpoints, engines and repositories, at spec.cluster.volume_mount."""
    return ExistingVolume(
        name="models", claim_name=spec.cluster.volume_claim, mount_path=spec.cluster.volume_mount
    )


def shm_volume(spec: Spec) -> EmptyDirVolume:
    """/dev/shm in memory: NCCL and the checkpoint converter's workers need far more than 64 MiB."""
    return EmptyDirVolume(
        name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=spec.cluster.shm_size
    )


def gpu_resources(spec: Spec) -> Resources:
    """One node's worth of GPUs (and its EFA devices and hugepages) for the build step."""
    extra: dict[str, str] = {}
    if spec.cluster.efa_per_node:
        extra[EFA_RESOURCE] = str(spec.cluster.efa_per_node)
    if spec.cluster.hugepages_2mi:
        extra[HUGEPAGES_RESOURCE] = spec.cluster.hugepages_2mi
    # Extended resources and hugepages must have requests equal to limits.
    custom = {"requests": dict(extra), "limits": dict(extra)} if extra else None
    return Resources(
        cpu_request=spec.cluster.cpu,
        memory_request=spec.cluster.memory,
        memory_limit=spec.cluster.memory,
        gpus=spec.gpus_per_pod,
        gpu_flag=GPU_RESOURCE,
        custom_resources=custom,
    )


def gpu_placement(spec: Spec) -> dict:
    """Node selector and tolerations for GPU pods: the same ones the serving chart uses."""
    values = chart_values(spec)
    return {
        "node_selector": values["nodeSelector"] or None,
        "tolerations": [Toleration(**t) for t in values["tolerations"]] or None,
    }


def base_env() -> list[Env]:
    """Environment every step gets: unbuffered output so logs stream into the Argo UI."""
    return [Env(name="PYTHONUNBUFFERED", value="1")]


def hub_token_env(spec: Spec) -> list[SecretEnv]:
    """HF token from the spec's Secret reference (never a parameter: parameters are visible in the UI)."""
    secret = spec.model.hf_token_secret
    if secret is None:
        return []
    return [SecretEnv(name=HF_TOKEN_ENV, secret_name=secret.name, secret_key=secret.key)]


def retry(limit: int, policy: str) -> RetryStrategy:
    """Exponential backoff: 30 s, 1 min, 2 min... capped at 10 min per wait and 2 h in total."""
    return RetryStrategy(
        limit=str(limit),
        retry_policy=policy,
        backoff=Backoff(duration="30s", factor=IntOrString("2"), cap="10m", max_duration="2h"),
    )


def memo_config_map(spec: Spec) -> str:
    """The ConfigMap Argo keeps memoized outputs in (created by the controller on first save)."""
    return f"{spec.name}-memo"


def memoize(spec: Spec, key: str, max_age: str) -> Memoize | None:
    """Cache a stage's outputs under `key` when spec.argo.memoize; otherwise None (no cache).

    Opt-in because saving needs the controller to create and update ConfigMaps, which a stock
    install does not grant (argo-cluster-role: get/list/watch), and a failed save turns the
    finished step into Error (workflow/controller/cache/configmap_cache.go, v4.1.2).
    """
    if not spec.argo.memoize:
        return None
    return Memoize(
        key=key, max_age=max_age, cache=Cache(config_map=LocalObjectReference(name=memo_config_map(spec)))
    )
