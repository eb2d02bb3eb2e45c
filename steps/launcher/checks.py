"""Checks before a group starts: world size, the engine's parallel mapping, the network stack.

Each check returns problems as one-line strings (empty list: fine), so a misconfigured group
fails in seconds with a clear message instead of minutes later inside TensorRT-LLM (e.g. the
reference's "GPU number is incompatible with 8 gpusPerNode when MPI size is 8").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from steps.launcher.command import TRTLLM_MODEL
from steps.manifest import repository_problem

# tensorrt_llm/config.pbtxt parameters that point at the engine (v0.12 name, then newer).
ENGINE_PATH_KEYS = ("gpt_model_path", "engine_dir")
LLMAPI_OPTIONS = Path(TRTLLM_MODEL) / "1" / "model.yaml"
NET_ENV_VARS = (
    "FI_PROVIDER",
    "NCCL_NET_PLUGIN",
    "NCCL_SOCKET_IFNAME",
    "FI_EFA_USE_DEVICE_RDMA",
    "NCCL_DEBUG",
)
NCCL_NET_LIB = "libnccl-net.so"
NCCL_NET_DIRS = ("/opt/amazon/aws-ofi-nccl/lib", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu")


def check_world(group_size: int, gpus_per_node: int, world_size: int) -> list[str]:
    """World size (tp x pp) must be the LWS group size x GPUs per pod."""
    if group_size * gpus_per_node == world_size:
        return []
    return [
        f"world size {world_size} != LWS group size {group_size} x GPUs per node {gpus_per_node} "
        f"(= {group_size * gpus_per_node}); the LeaderWorkerSet and the launcher arguments disagree: "
        "render both from the same spec"
    ]


def check_repository(repository: Path) -> list[str]:
    """The model repository holds exactly the files publish's manifest lists (any backend's layout)."""
    damage = repository_problem(repository)
    if damage is None:
        return []
    return [f"model repository {repository} is not complete ({damage}); publish it again before serving"]


def engine_dir_from_repository(repository: Path) -> Path | None:
    """The engine directory named in the repository's tensorrt_llm/config.pbtxt, if any."""
    config = repository / TRTLLM_MODEL / "config.pbtxt"
    if not config.is_file():
        return None
    text = config.read_text()
    for key in ENGINE_PATH_KEYS:
        found = re.search(
            rf'key:\s*"{key}"\s*value:\s*\{{\s*string_value:\s*"([^"]+)"', text, flags=re.MULTILINE
        )
        if found:
            return Path(found.group(1))
    return None


def check_engine_mapping(engine_config: Mapping[str, Any], world_size: int, gpus_per_pod: int) -> list[str]:
    """The engine's recorded mapping (config.json) must match the group it is served on."""
    mapping = engine_config.get("pretrained_config", {}).get("mapping")
    if not isinstance(mapping, dict):
        return ["engine config.json has no pretrained_config.mapping; was it built by trtllm-build >= 0.9?"]
    problems = []
    built_world = mapping.get("world_size", mapping.get("tp_size", 1) * mapping.get("pp_size", 1))
    if built_world != world_size:
        problems.append(
            f"engine was built for world size {built_world} (tp {mapping.get('tp_size')} x pp "
            f"{mapping.get('pp_size')}) but the group runs {world_size} ranks; rebuild or fix the spec"
        )
    built_per_node = mapping.get("gpus_per_node")
    # TensorRT-LLM maps rank -> device as rank % gpus_per_node: across pods it must be exactly the
    # GPUs of a pod; inside one pod (e.g. TP4 on an 8-GPU node) a larger value maps ranks 1:1 too.
    spans_pods = world_size > gpus_per_pod
    if (
        built_per_node is not None
        and built_per_node != gpus_per_pod
        and (spans_pods or built_per_node < world_size)
    ):
        problems.append(
            f"engine records gpus_per_node={built_per_node} but each pod has {gpus_per_pod} GPUs; "
            "rebuild with the spec's cluster.gpus_per_node (TensorRT-LLM refuses this mismatch at load)"
        )
    return problems


def check_engine_dir(engine_dir: Path | None, world_size: int, gpus_per_pod: int) -> list[str]:
    """Read the engine's config.json and check its mapping; a missing engine is a problem."""
    if engine_dir is None:
        return [
            f"no engine directory: pass --engine-dir or set gpt_model_path in {TRTLLM_MODEL}/config.pbtxt"
        ]
    config = engine_dir / "config.json"
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        return [f"{config} not found; the engine directory is incomplete or not mounted"]
    except json.JSONDecodeError as exc:
        return [f"{config}: not JSON ({exc})"]
    return check_engine_mapping(data, world_size, gpus_per_pod)


def check_llmapi_options(repository: Path, world_size: int) -> list[str]:
    """For trtllm-pytorch: the model.yaml steps.publish writes must exist, give tp x pp = the world
    size, and name a checkpoint this pod can read (tensorrtllm_backend v0.19.0 llmapi model.py
    refuses to load without the file and hands `model` to the LLM API as is)."""
    options = repository / LLMAPI_OPTIONS
    if not options.is_file():
        return [f"{options} not found; publish the repository for backend trtllm-pytorch (steps.publish)"]
    try:
        data = yaml.safe_load(options.read_text()) or {}
    except yaml.YAMLError as exc:
        return [f"{options}: not YAML ({str(exc).splitlines()[0]})"]
    tp = int(data.get("tensor_parallel_size", 1))
    pp = int(data.get("pipeline_parallel_size", 1))
    problems = []
    if tp * pp != world_size:
        problems.append(
            f"{options}: tensor_parallel_size {tp} x pipeline_parallel_size {pp} != world size {world_size}"
        )
    model = Path(str(data.get("model", "")))
    if not (model / "config.json").is_file():
        problems.append(f"{options}: model {model} holds no config.json; is the model volume mounted?")
    return problems


def network_summary(env: Mapping[str, str], lib_dirs: Iterable[str] = NCCL_NET_DIRS) -> str:
    """One log line: NCCL/EFA settings, where libnccl-net.so is found, and EFA devices present."""
    settings = " ".join(f"{name}={env.get(name, '-')}" for name in NET_ENV_VARS)
    search = [*env.get("LD_LIBRARY_PATH", "").split(":"), *lib_dirs]
    plugin = next(
        (str(Path(d) / NCCL_NET_LIB) for d in search if d and (Path(d) / NCCL_NET_LIB).exists()), None
    )
    efa = len(list(Path("/dev/infiniband").glob("uverbs*"))) if Path("/dev/infiniband").is_dir() else 0
    return f"network: {settings} nccl-net-plugin={plugin or 'none (NCCL uses sockets)'} efa-devices={efa}"
