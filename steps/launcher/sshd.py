"""sshd (worker) and ssh client (leader) configuration for the per-release key.

The chart's per-release Secret holds the leader's identity (client key), the workers' shared host
key, `authorized_keys` (the client public key) and `known_hosts` (`* <host public key>`), so the
leader verifies worker host keys strictly without per-pod keys. Keys are copied into a private
runtime directory with 0600 modes, so Secret volume modes and fsGroup do not matter to ssh; the
configs are 0600 too, and sshd's SetEnv carries only the variables the ranks need (an allow-list),
so tokens in the container's environment never reach a file. The launcher removes the directory
when it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

CLIENT_KEY = "client_key"
HOST_KEY = "host_key"
AUTHORIZED_KEYS = "authorized_keys"
KNOWN_HOSTS = "known_hosts"
SSHD_CONFIG = "sshd_config"
SSH_CONFIG = "ssh_config"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start as root without it

# What ssh sessions (orted and the ranks it starts) are given: only what those programs read, never
# the container's whole environment (HF_TOKEN, AWS_SESSION_TOKEN, ... would land in sshd_config).
SESSION_ENV_NAMES = {
    # Open MPI docs, launching-apps/ssh.rst and prerequisites.rst: orted and libmpi must be found
    # on every node through PATH and LD_LIBRARY_PATH (sshd otherwise gives a login's default PATH).
    "PATH",
    "LD_LIBRARY_PATH",
    # tritonserver's python backend stub and TensorRT-LLM's python code (NGC image ENV).
    "PYTHONPATH",
    "PYTHONHOME",
    # Locale and temporary files for every program the ranks run.
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    # NVIDIA container runtime: which GPUs and capabilities the container was given.
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    # Hugging Face libraries (tokenizers in the python models): cache location and offline mode only.
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
}
SESSION_ENV_PREFIXES = (
    "CUDA_",  # CUDA runtime environment variables (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_MAX_CONNECTIONS)
    "NCCL_",  # NCCL's environment variables (NCCL_DEBUG, NCCL_SOCKET_IFNAME, NCCL_NET_PLUGIN, ...)
    "FI_",  # libfabric fi(7) and fi_efa(7): FI_PROVIDER, FI_EFA_USE_DEVICE_RDMA, ...
    "RDMAV_",  # rdma-core's libibverbs (RDMAV_FORK_SAFE, which the EFA setup guides set)
    "TLLM_",  # TensorRT-LLM's runtime switches (TLLM_LOG_LEVEL, ...)
    "TRTLLM_",
    # A local run's group marker (steps.localgroup.group.MARKER_VAR): how strays of a crashed group
    # are found, the ranks a worker's sshd started included. Not imported: that module is heavy.
    "MEGAPOD_LOCAL_",
)


class SshSetupError(RuntimeError):
    """Keys missing or unreadable."""


def session_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of the container env ssh sessions (and so remote ranks) need: the allow-list above.

    Values sshd_config cannot quote (containing `"`, `\\` or newlines) are left out.
    """
    return {
        key: value
        for key, value in sorted(env.items())
        if (key in SESSION_ENV_NAMES or key.startswith(SESSION_ENV_PREFIXES))
        and not any(ch in value for ch in '"\\\n')
        and key.replace("_", "").isalnum()
    }


def render_sshd_config(
    port: int, runtime_dir: Path, user: str, env: Mapping[str, str], listen_address: str | None = None
) -> str:
    """sshd_config: the release key only, no passwords, no forwarding, only `user`."""
    # Triton images run as root, and ranks must run as the same user as the leader's mpirun.
    root_login = "prohibit-password" if user == "root" else "no"
    lines = [
        f"Port {port}",
        # A pod listens on all its addresses; pods sharing one host listen on loopback only.
        *([f"ListenAddress {listen_address}"] if listen_address else []),
        f"HostKey {runtime_dir / HOST_KEY}",
        f"AuthorizedKeysFile {runtime_dir / AUTHORIZED_KEYS}",
        "PidFile none",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        f"PermitRootLogin {root_login}",
        f"AllowUsers {user}",
        # Our runtime dir is 0700 and the keys 0600, but StrictModes also vets every parent
        # directory (e.g. a 1777 /tmp) and would refuse the key for no gain.
        "StrictModes no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "AllowStreamLocalForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PermitUserEnvironment no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "LogLevel INFO",
    ]
    if env:
        # Only the first SetEnv line counts, so every variable goes on one line.
        lines.append("SetEnv " + " ".join(f'"{key}={value}"' for key, value in env.items()))
    return "\n".join(lines) + "\n"


def render_ssh_config(port: int, user: str, runtime_dir: Path) -> str:
    """Client config mpirun's ssh uses: our key, strict host keys against the release host key."""
    return "\n".join(
        [
            "Host *",
            f"  Port {port}",
            f"  User {user}",
            f"  IdentityFile {runtime_dir / CLIENT_KEY}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {runtime_dir / KNOWN_HOSTS}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  CheckHostIP no",
            "  BatchMode yes",
            "  PasswordAuthentication no",
            "  ConnectTimeout 10",
            # A worker pod that vanishes without a TCP reset is noticed within 15 s.
            "  ServerAliveInterval 5",
            "  ServerAliveCountMax 3",
            "  LogLevel ERROR",
            "",
        ]
    )


def _private_copy(source: Path, runtime_dir: Path, name: str, what: str) -> Path:
    """Copy a mounted key file into the runtime dir with 0600 (ssh refuses group-readable keys)."""
    if not source.is_file():
        raise SshSetupError(f"{what} {source} not found; mount the release's SSH Secret there")
    target = runtime_dir / name
    shutil.copyfile(source, target)
    target.chmod(0o600)
    return target


def _private_write(path: Path, text: str) -> Path:
    """Create `path` 0600 before any byte is written (no window where others may read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT
    return path


def make_runtime_dir(parent: Path | None = None) -> Path:
    """A fresh private (0700) directory for keys and configs, removed when this process exits.

    The launcher exits through return paths on SIGTERM too (its handlers only set a flag), so the
    keys do not outlive the pod's process in a run folder; only a SIGKILL leaves the directory.
    """
    path = Path(tempfile.mkdtemp(prefix="megapod-ssh-", dir=parent))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def prepare_worker(
    host_key: Path,
    authorized_keys: Path,
    runtime_dir: Path,
    port: int,
    user: str,
    env: Mapping[str, str],
    listen_address: str | None = None,
) -> Path:
    """Write host key, authorized_keys and sshd_config into `runtime_dir`; return the config path."""
    _private_copy(host_key, runtime_dir, HOST_KEY, "host key")
    _private_copy(authorized_keys, runtime_dir, AUTHORIZED_KEYS, "authorized_keys")
    text = render_sshd_config(port, runtime_dir, user, session_env(env), listen_address)
    config = _private_write(runtime_dir / SSHD_CONFIG, text)
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    return config


def prepare_leader(identity: Path, known_hosts: Path, runtime_dir: Path, port: int, user: str) -> Path:
    """Write client key, known_hosts and ssh_config into `runtime_dir`; return the config path."""
    _private_copy(identity, runtime_dir, CLIENT_KEY, "identity (client key)")
    _private_copy(known_hosts, runtime_dir, KNOWN_HOSTS, "known_hosts")
    config = _private_write(runtime_dir / SSH_CONFIG, render_ssh_config(port, user, runtime_dir))
    return config
