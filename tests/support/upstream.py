"""Upstream files the tests validate against, from the pinned Go modules in the module cache.

scripts/cluster/go/<group>/go.mod pins each module; scripts/cluster/build.sh (run by `make
test`'s bootstrap) downloads them. Nothing here is copied into the repository.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GO_MODULES = ROOT / "scripts" / "cluster" / "go"


@functools.cache
def module_dir(group: str, module: str) -> Path:
    """The module cache folder of `module` at the version scripts/cluster/go/<group> pins."""
    done = subprocess.run(
        ["go", "-C", str(GO_MODULES / group), "list", "-mod=readonly", "-m", "-f", "{{.Dir}}", module],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    folder = Path(done.stdout.strip())
    if done.returncode or not done.stdout.strip() or not folder.is_dir():
        raise FileNotFoundError(
            f"{module} (pinned in {GO_MODULES / group}/go.mod) is not in the Go module cache: "
            f"run scripts/cluster/build.sh (make test does) ({done.stderr.strip()})"
        )
    return folder


def argo_schema() -> Path:
    """Argo Workflows' JSON schema (api/jsonschema/schema.json) of the pinned release."""
    argo = module_dir("argo-workflows", "github.com/argoproj/argo-workflows/v4")
    return argo / "api" / "jsonschema" / "schema.json"


# (apiVersion, kind) -> the CRD file in its pinned module: (wrapper group, module, path).
CRDS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): (
        "kubernetes", "sigs.k8s.io/lws", "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        "manifests", "github.com/prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "manifests", "github.com/prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
}  # fmt: skip


def crd_file(api_version: str, kind: str) -> Path:
    """The CRD of a custom kind the chart renders, at the pinned version."""
    group, module, path = CRDS[(api_version, kind)]
    return module_dir(group, module) / path
