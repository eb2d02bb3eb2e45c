"""Where the CPU tritonserver lives and how to start it (rank 0) with the python-backend stub working.

scripts/bootstrap.sh unpacks tritonserver 2.51 from nvidia-pytriton into `.tools/tritonserver`
(bin/tritonserver, backends/python with the 3.11 stub, `libs` -> nvidia_pytriton.libs) and builds
`.tools/triton-venv` (numpy<2, tokenizers, safetensors) for the models' Python code.

What the stub really needs (checked by running it): its embedded interpreter is initialised in
*isolated* mode (sys.flags.isolated == 1), so PYTHONPATH and PYTHONHOME are ignored and sys.path is
Debian's /usr/lib/python3.11 + dist-packages + the model directory. Our model.py files therefore
prepend the directories listed in STUB_PATH_VAR themselves before importing numpy (see
steps/cpu_backend/models/*/1/model.py). PYTHONPATH/PYTHONHOME are still set so that stubs built
without isolation (other Triton images) see the same environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOME_VAR = "MEGAPOD_TRITON_HOME"
VENV_VAR = "MEGAPOD_TRITON_VENV"
# Read by our model.py files: os.pathsep-separated directories to put in front of sys.path.
STUB_PATH_VAR = "MEGAPOD_STUB_PYTHONPATH"
DEFAULT_HOME = REPO_ROOT / ".tools" / "tritonserver"
DEFAULT_VENV = REPO_ROOT / ".tools" / "triton-venv"
STUB_NAME = "triton_python_backend_stub"
# Debian 12's python3.11: the stub links its libpython, so the venv must be built from it.
STUB_PYTHON_VERSION = "3.11"


class TritonNotFound(RuntimeError):
    """The tritonserver install (or the stub's Python environment) is missing or incomplete."""


@dataclass(frozen=True)
class TritonInstall:
    """A usable tritonserver: binary, backends dir, bundled shared libraries and the stub's venv."""

    home: Path
    venv: Path

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        return self.home / "backends"

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{STUB_PYTHON_VERSION}" / "site-packages"


def find_tritonserver(env: Mapping[str, str] | None = None) -> TritonInstall:
    """Locate tritonserver ($MEGAPOD_TRITON_HOME or .tools/tritonserver) and the stub venv; check both."""
    env = os.environ if env is None else env
    install = TritonInstall(
        home=Path(env.get(HOME_VAR) or DEFAULT_HOME), venv=Path(env.get(VENV_VAR) or DEFAULT_VENV)
    )
    required = {
        install.binary: "the tritonserver binary",
        install.backend_dir / "python" / STUB_NAME: "the python-backend stub",
        install.backend_dir / "python" / "libtriton_python.so": "the python backend",
        install.libs: "the bundled libraries (libs -> nvidia_pytriton.libs)",
        install.site_packages / "numpy": "numpy<2 in the stub's venv",
    }
    for path, what in required.items():
        if not path.exists():
            raise TritonNotFound(
                f"{what} not found at {path}; run scripts/bootstrap.sh or set {HOME_VAR}/{VENV_VAR}"
            )
    return install


def stub_environment(
    install: TritonInstall, base: Mapping[str, str] | None = None, *, extra_paths: Iterable[Path] = ()
) -> dict[str, str]:
    """Environment for tritonserver and its python-backend stubs (library path + model import path)."""
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
    )
    python_path = os.pathsep.join(str(p) for p in (install.site_packages, REPO_ROOT, *extra_paths))
    env[STUB_PATH_VAR] = python_path
    env["PYTHONPATH"] = python_path
    env["PYTHONHOME"] = "/usr"
    # The server and stub would otherwise compete with numpy's BLAS threads on small machines.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def tritonserver_args(
    repository: Path | str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    *,
    address: str = "127.0.0.1",
    extra: Iterable[str] = (),
    install: TritonInstall | None = None,
) -> list[str]:
    """Rank-0 command line: all endpoints on `address`, metrics on, fast exit, strict configs."""
    install = install or find_tritonserver()
    return [
        str(install.binary),
        f"--model-repository={repository}",
        f"--backend-directory={install.backend_dir}",
        "--disable-auto-complete-config",
        "--id=rank0",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--metrics-interval-ms=1000",
        # Ports are reused quickly by the next test server.
        "--exit-timeout-secs=5",
        *extra,
    ]
