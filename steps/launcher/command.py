"""The one MPMD `mpirun` that starts a whole group (pure: argv in, argv out).

Layout (as upstream's launch_triton_server.py, but across pods): rank 0 is a full tritonserver
(HTTP/gRPC/metrics, every model); ranks >= 1 load only the `tensorrt_llm` model and open no
ports. ssh is the rsh agent (no kubectl, no pods/exec). For trtllm-pytorch every rank runs
`trtllm-llmapi-launch tritonserver ...`: TensorRT-LLM's wrapper runs the command on rank 0 (with
the MPI variables stripped, plus `mgmn_leader_node`) and its MPI worker loop
(`tensorrt_llm.llmapi.mgmn_worker_node`) on the other ranks; Triton's `llmapi` model on rank 0
reads tp/pp from `tensorrt_llm/1/model.yaml`. This is what upstream's launch_triton_server.py
does with `--trtllm_llmapi_launch`; the same wrapper serves `trtllm-serve` multi-node
(`mpirun ... trtllm-llmapi-launch trtllm-serve MODEL --tp_size ... --pp_size ...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from steps.contract import LLMAPI, contract_for

TRTLLM_MODEL = "tensorrt_llm"  # upstream's name for the model every rank must load
LLMAPI_LAUNCH = "trtllm-llmapi-launch"
# The reference's Open MPI environment: no UCX/cm PMLs (EFA is used by NCCL, not MPI), TCP only.
REFERENCE_MCA = {"pml": "^cm,ucx", "btl": "tcp,self"}
DEFAULT_EXCLUDED_INTERFACES = "lo,docker0"


@dataclass(frozen=True)
class Ports:
    """Rank 0's Triton ports."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the mpirun command line depends on."""

    backend: str
    hosts: tuple[str, ...]  # leader first
    slots_per_host: int  # GPUs per pod = ranks per pod
    tritonserver: str
    model_repository: str
    ssh_config: str
    exit_timeout_s: int
    ports: Ports = field(default_factory=Ports)
    mpi_interface: str | None = None  # include only this interface; None: exclude lo,docker0
    run_as_root: bool = False
    rank_env: Mapping[str, str] = field(default_factory=dict)
    server_extra_args: tuple[str, ...] = ()
    bind_address: str | None = None  # rank 0's HTTP/gRPC/metrics address; None: Triton's 0.0.0.0

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.slots_per_host


def server_args(plan: LaunchPlan, rank: int) -> list[str]:
    """tritonserver argv for one rank."""
    args = [
        plan.tritonserver,
        f"--model-repository={plan.model_repository}",
        "--disable-auto-complete-config",
        f"--id=rank{rank}",
        # Python-backend shared-memory regions must not collide between ranks on one host.
        f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
        *plan.server_extra_args,
    ]
    if rank == 0:
        bind = plan.bind_address
        addresses = [f"--{kind}-address={bind}" for kind in ("http", "grpc", "metrics")] if bind else []
        return [
            *args,
            *addresses,
            f"--http-port={plan.ports.http}",
            f"--grpc-port={plan.ports.grpc}",
            "--allow-metrics=true",
            f"--metrics-port={plan.ports.metrics}",
            "--metrics-interval-ms=1000",
            # On SIGTERM Triton stops being ready and finishes in-flight requests for this long.
            f"--exit-timeout-secs={plan.exit_timeout_s}",
        ]
    return [
        *args,
        "--allow-http=false",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--model-control-mode=explicit",
        f"--load-model={TRTLLM_MODEL}",
    ]


def mca_args(plan: LaunchPlan) -> list[str]:
    """`--mca` pairs: ssh as rsh agent with our config, the reference's transport settings."""
    params = {
        "plm_rsh_agent": "ssh",
        "plm_rsh_args": f"-F {plan.ssh_config}",
        # The leader starts every orted itself: workers hold no client key to ssh onwards.
        "plm_rsh_no_tree_spawn": "1",
        # Pod short names do not resolve from other pods; keep the FQDNs we pass.
        "orte_keep_fqdn_hostnames": "1",
        # When a rank dies the group is lost anyway: kill the others at once instead of Open MPI's
        # SIGTERM-then-wait (1 s per step, about 3 s in total), so the launcher exits fast.
        "odls_base_sigkill_timeout": "0",
        **REFERENCE_MCA,
    }
    if plan.mpi_interface:
        params["btl_tcp_if_include"] = plan.mpi_interface
        params["oob_tcp_if_include"] = plan.mpi_interface
    else:
        params["btl_tcp_if_exclude"] = DEFAULT_EXCLUDED_INTERFACES
    return [arg for key, value in params.items() for arg in ("--mca", key, value)]


def mpirun_command(plan: LaunchPlan) -> list[str]:
    """The full mpirun argv for the group."""
    cmd = ["mpirun"]
    if plan.run_as_root:
        cmd.append("--allow-run-as-root")
    cmd += [
        "--host",
        ",".join(f"{host}:{plan.slots_per_host}" for host in plan.hosts),
        "--map-by",
        "slot",
        # tritonserver is multi-threaded; Open MPI's default core binding would pin it to one core.
        "--bind-to",
        "none",
        "--tag-output",
        *mca_args(plan),
    ]
    # `-x` belongs to an app context (Open MPI applies it to the context it precedes only).
    exports = [arg for key, value in sorted(plan.rank_env.items()) for arg in ("-x", f"{key}={value}")]
    if contract_for(plan.backend) is LLMAPI:  # the llmapi model: rank 0 serves, the rest run its worker loop
        return [*cmd, "-np", str(plan.world_size), *exports, LLMAPI_LAUNCH, *server_args(plan, 0)]
    for rank in range(plan.world_size):
        cmd += ["-np", "1", *exports, *server_args(plan, rank), ":"]
    return cmd[:-1]
