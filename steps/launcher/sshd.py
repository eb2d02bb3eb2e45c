"""sshd (worker) and ssh client (leader) configuration for the per-release key.

The chart's per-release Secret holds the leader's identity (client key), the workers' shared host
key, `authorized_keys` (the client public key) and `known_hosts` (`* <host public key>`), so the
leader verifies worker host keys strictly without per-pod keys. Keys are copied into a private
runtime directory with 0600 modes, so Secret volume modes and fsGroup do not matter to ssh.
"""

from __future__ import annotations

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

# Not passed to ssh sessions: per-login values sshd sets itself, and MPI variables mpirun sets.
SESSION_ENV_DENY = {
    "HOSTNAME",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "TERM",
    "MAIL",
}
SESSION_ENV_DENY_PREFIXES = ("SSH_", "OMPI_", "PMIX_", "OPAL_")


class SshSetupError(RuntimeError):
    """Keys missing or unreadable."""


def session_env(env: Mapping[str, str]) -> dict[str, str]:
    """The container env that ssh sessions (and so remote ranks) should see, minus per-login vars.

    Values sshd_config cannot quote (containing `"`, `\\` or newlines) are left out.
    """
    return {
        key: value
        for key, value in sorted(env.items())
        if key not in SESSION_ENV_DENY
        and not key.startswith(SESSION_ENV_DENY_PREFIXES)
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


def make_runtime_dir(parent: Path | None = None) -> Path:
    """A fresh private (0700) directory for keys and configs."""
    return Path(tempfile.mkdtemp(prefix="megapod-ssh-", dir=parent))


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
    config = runtime_dir / SSHD_CONFIG
    config.write_text(render_sshd_config(port, runtime_dir, user, session_env(env), listen_address))
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    return config


def prepare_leader(identity: Path, known_hosts: Path, runtime_dir: Path, port: int, user: str) -> Path:
    """Write client key, known_hosts and ssh_config into `runtime_dir`; return the config path."""
    _private_copy(identity, runtime_dir, CLIENT_KEY, "identity (client key)")
    _private_copy(known_hosts, runtime_dir, KNOWN_HOSTS, "known_hosts")
    config = runtime_dir / SSH_CONFIG
    config.write_text(render_ssh_config(port, user, runtime_dir))
    return config
