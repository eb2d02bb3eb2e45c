"""The real control plane of `make cluster` (scripts/cluster/cluster.py) for tests.

The `cluster` fixture uses a running cluster (`make cluster`), or starts one from the binaries
`make test`'s bootstrap built (scripts/cluster/build.sh) and stops it at the end of the session.
A cluster that cannot start fails the tests that need it, with the reason: nothing is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_PY = ROOT / "scripts" / "cluster" / "cluster.py"
RUN = Path(os.environ.get("MEGAPOD_CLUSTER_DIR", ROOT / ".tools" / "cluster" / "run"))


def _cluster_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLUSTER_PY), *args], capture_output=True, text=True)


@dataclass(frozen=True)
class Cluster:
    """A started cluster, as scripts/cluster/cluster.py describes it in cluster.json."""

    kubeconfig: Path
    server: str
    ca: Path
    argo_server: str
    kubectl_binary: Path
    argo_binary: Path
    argo_jsonschema: Path  # Argo's api/jsonschema/schema.json at the pinned version
    modules: dict[str, Path]  # the pinned modules' folders in the module cache (CRDs, manifests)

    @staticmethod
    def load() -> Cluster:
        """The cluster described by the cluster folder."""
        state = json.loads((RUN / "cluster.json").read_text())
        return Cluster(
            kubeconfig=Path(state["kubeconfig"]),
            server=state["server"],
            ca=Path(state["ca"]),
            argo_server=state["argo_server"],
            kubectl_binary=Path(state["kubectl"]),
            argo_binary=Path(state["argo"]),
            argo_jsonschema=Path(state["argo_jsonschema"]),
            modules={name: Path(path) for name, path in state["modules"].items()},
        )

    def api(self, token: str | None = None) -> k8s.ApiClient:
        """An API client as the cluster admin, or as the holder of `token` (no other credential)."""
        if token is None:
            return k8s_config.new_client_from_config(str(self.kubeconfig))
        configuration = k8s.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca)
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return k8s.ApiClient(configuration)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run the pinned kubectl as the admin; raises on failure with kubectl's stderr."""
        result = subprocess.run(
            [str(self.kubectl_binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def token(self, namespace: str, service_account: str, duration: str = "1h") -> str:
        """A bound token of a ServiceAccount (TokenRequest, as a pod's projected token)."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).strip()

    def restart_adapter(self, config: Path, prometheus_url: str) -> None:
        """Give prometheus-adapter other rules (a file in the adapter's --config format) and the
        Prometheus to query; returns once the custom metrics API is available again."""
        result = _cluster_cli("adapter", str(config), prometheus_url)
        if result.returncode != 0:
            raise RuntimeError(f"restarting prometheus-adapter: {result.stderr.strip()}")

    def namespace(self, name: str) -> str:
        """Create namespace `name` afresh (deleting a leftover one first); returns its name."""
        core = k8s.CoreV1Api(self.api())
        try:
            core.delete_namespace(name)
            wait_until(lambda: not _exists(core.read_namespace, name), 120, f"namespace {name} deleted")
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        return name


def _exists(read: Callable[[str], Any], name: str) -> bool:
    try:
        read(name)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll `check` until it returns a truthy value (returned); fail the test naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture(scope="session", name="cluster")
def cluster_fixture() -> Iterator[Cluster]:
    """The running cluster, or one started here (and stopped after the session)."""
    if _cluster_cli("status").returncode == 0:
        yield Cluster.load()
        return
    started = _cluster_cli("up")
    if started.returncode != 0:
        pytest.fail(f"make cluster failed: {started.stderr.strip()}")
    try:
        yield Cluster.load()
    finally:
        _cluster_cli("down")
