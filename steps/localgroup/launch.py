"""The launcher command lines of one group, as charts/triton-lws's pod template passes them.

`leader_args` / `worker_args` mirror `templates/_pod.tpl` flag for flag, reading the same chart
values (`workflows.chart_values.chart_values(spec)`), with the Secret's mount point replaced by
the local key directory. tests/test_localgroup.py compares them with helm's own render, so the
local group runs exactly what the pods run. `lws_env` is what LeaderWorkerSet injects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steps.launcher.group import GROUP_SIZE_VAR, LEADER_ADDRESS_VAR

WORKER_INDEX_VAR = "LWS_WORKER_INDEX"  # set by LWS on every pod: 0 for the leader


def leader_args(values: dict[str, Any], keys: dict[str, Path]) -> list[str]:
    """`python -m steps.launcher` args of the leader container (keys: launcher dest -> file)."""
    ports, launcher, group = values["ports"], values["launcher"], values["group"]
    return [
        "leader",
        "--backend", str(values["backend"]),
        "--model-repository", str(values["model"]["repository"]),
        "--world-size", str(group["worldSize"]),
        "--gpus-per-node", str(group["gpusPerPod"]),
        "--ssh-port", str(ports["ssh"]),
        "--identity", str(keys["identity"]),
        "--known-hosts", str(keys["known_hosts"]),
        "--barrier-timeout", str(launcher["barrierTimeoutSeconds"]),
        "--http-port", str(ports["http"]),
        "--grpc-port", str(ports["grpc"]),
        "--metrics-port", str(ports["metrics"]),
        "--grace-period", str(launcher["terminationGracePeriodSeconds"]),
    ]  # fmt: skip


def worker_args(values: dict[str, Any], keys: dict[str, Path]) -> list[str]:
    """`python -m steps.launcher` args of a worker container."""
    return [
        "worker",
        "--ssh-port", str(values["ports"]["ssh"]),
        "--authorized-keys", str(keys["authorized_keys"]),
        "--host-key", str(keys["host_key"]),
        "--grace-period", str(values["launcher"]["terminationGracePeriodSeconds"]),
    ]  # fmt: skip


def replace_option(args: list[str], option: str, value: str) -> list[str]:
    """args with `option`'s value replaced (the option must be present)."""
    index = args.index(option)
    return [*args[: index + 1], value, *args[index + 2 :]]


def lws_env(leader_fqdn: str, group_size: int, worker_index: int) -> dict[str, str]:
    """The variables LeaderWorkerSet sets in every container of a group."""
    return {
        LEADER_ADDRESS_VAR: leader_fqdn,
        GROUP_SIZE_VAR: str(group_size),
        WORKER_INDEX_VAR: str(worker_index),
    }
