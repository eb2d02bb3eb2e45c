"""Per-release SSH key material, the same files the chart's Secret (secret-ssh.yaml) holds.

ECDSA P-256 in PEM, like Helm's `genPrivateKey "ecdsa"`: OpenSSH 9.2 loads PEM EC keys but not
the PKCS#8 ed25519 keys Helm would make. File names are the ones the launcher reads by default
from the Secret's mount point, taken from the launcher's own argument parser.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from steps.launcher.__main__ import parser as launcher_parser


def launcher_default(role: str, dest: str) -> Path:
    """The launcher's default for one option of one role (e.g. where the chart mounts a key)."""
    roles = next(a for a in launcher_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return Path(roles.choices[role].get_default(dest))


def secret_file_names() -> dict[str, str]:
    """Launcher option dest -> file name inside the Secret's mount (id_ecdsa, known_hosts, ...)."""
    options = {
        "identity": "leader",
        "known_hosts": "leader",
        "authorized_keys": "worker",
        "host_key": "worker",
    }
    return {dest: launcher_default(role, dest).name for dest, role in options.items()}


def _keypair(path: Path) -> str:
    """Write an ECDSA P-256 PEM private key at `path`; return its OpenSSH public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-m", "PEM", "-N", "", "-C", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    public = path.with_name(path.name + ".pub")
    line = public.read_text().strip()
    public.unlink()
    return line


def write_release_keys(directory: Path) -> dict[str, Path]:
    """Create the Secret's four files in `directory` (0700, files 0600); return dest -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    names = secret_file_names()
    paths = {dest: directory / name for dest, name in names.items()}
    for path in paths.values():
        path.unlink(missing_ok=True)
    client_public = _keypair(paths["identity"])
    host_public = _keypair(paths["host_key"])
    paths["authorized_keys"].write_text(client_public + "\n")
    # Every worker shares the release host key, so one wildcard line verifies them all.
    paths["known_hosts"].write_text(f"* {host_public}\n")
    for path in paths.values():
        path.chmod(0o600)
    return paths
