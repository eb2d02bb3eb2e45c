"""`megapod render`: write every Argo document of a spec and the chart values as YAML files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from workflows.spec import Spec

WORKFLOWS_DIR = "workflows"
CHART_VALUES_FILE = "chart-values.yaml"
RBAC_FILE = "rbac.yaml"


def rendered_documents(spec: Spec) -> dict[str, str]:
    """`<kind>-<name>.yaml` -> YAML text, for every WorkflowTemplate and the CronWorkflow."""
    from workflows.argo import documents

    rendered = {}
    for document in documents(spec):
        rendered[f"{document.kind.lower()}-{document.name}.yaml"] = document.to_yaml()
    return rendered


def chart_values_yaml(spec: Spec) -> str:
    """Values for charts/triton-lws as YAML (the same text the deploy stage hands to helm)."""
    from workflows.argo.stages import chart_values_text

    return chart_values_text(spec)


def rbac_yaml(spec: Spec) -> str:
    """ServiceAccounts, Roles and bindings the pipeline's pods run with (workflows/rbac.py)."""
    from workflows.rbac import rbac_yaml as render_rbac

    return render_rbac(spec)


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)


class OutputError(ValueError):
    """--out cannot hold the rendered files (a file where a directory must be, or the reverse)."""


def _check_writable(out: Path, relatives: list[Path]) -> None:
    """OutputError, before anything is written, when a target or a directory on its way is taken."""
    for relative in relatives:
        target = out / relative
        if target.is_dir():
            raise OutputError(f"--out {out}: {target} is a directory; remove it or choose another --out")
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise OutputError(
                        f"--out {out}: {parent} exists and is not a directory; choose a directory for --out"
                    )
                break


def render_to_dir(spec: Spec, out: Path) -> list[Path]:
    """Write out/rbac.yaml, out/workflows/<kind>-<name>.yaml for every document and out/chart-values.yaml.

    Everything is rendered in memory first: a failure leaves nothing new behind.
    Returns the written paths in apply order (RBAC, then the documents), chart values last.
    """
    files = {Path(RBAC_FILE): rbac_yaml(spec)}
    files.update({Path(WORKFLOWS_DIR) / name: text for name, text in rendered_documents(spec).items()})
    files[Path(CHART_VALUES_FILE)] = chart_values_yaml(spec)
    for text in files.values():
        list(yaml.safe_load_all(text))  # a document that does not parse back is a bug: fail before writing
    _check_writable(out, list(files))
    written = []
    for relative, text in files.items():
        _write_atomically(out / relative, text)
        written.append(out / relative)
    return written
