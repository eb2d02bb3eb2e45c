"""A real Prometheus standing in for the cluster's, with the chart's own recording rules.

The rules are what `helm template` renders from charts/triton-lws with the spec's chart values
(the PrometheusRule's groups, unchanged). Scrape targets come from a file_sd file that the
runner fills once deploy reports the leader's endpoint, labelled as the release's PodMonitor
labels leaders on a cluster (namespace, lws, group_index, pod), so the rules select them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from workflows.local.errors import LocalRunError

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "triton-lws"
TOOLS_BIN = ROOT / ".tools" / "bin"
SCRAPE_INTERVAL = "1s"  # local load tests last seconds, not the cluster's tens of minutes
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})


@dataclass(frozen=True)
class ChartMonitoring:
    """What the chart renders for monitoring one release: its recording rules and leader labels."""

    rules: dict[str, Any]  # a Prometheus rules file: {"groups": [...]}
    lws: str  # the LeaderWorkerSet's name (the `lws` label the rules select on)
    namespace: str


def chart_monitoring(values_file: Path, release: str, namespace: str) -> ChartMonitoring:
    """Render the chart with `helm template` and take its PrometheusRule and LeaderWorkerSet name."""
    helm = shutil.which("helm", path=os.pathsep.join([str(TOOLS_BIN), os.environ.get("PATH", "")]))
    if helm is None:
        raise LocalRunError(
            f"helm is not installed (looked in {TOOLS_BIN} and PATH; run scripts/bootstrap.sh demo)"
        )
    argv = [helm, "template", release, str(CHART), "--namespace", namespace, "-f", str(values_file)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise LocalRunError(f"helm template failed: {done.stderr.strip().splitlines()[-1:]}")
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    kinds = {doc["kind"]: doc for doc in objects}
    if "PrometheusRule" not in kinds or "LeaderWorkerSet" not in kinds:
        raise LocalRunError("the chart rendered no PrometheusRule/LeaderWorkerSet (monitoring disabled?)")
    return ChartMonitoring(
        rules={"groups": kinds["PrometheusRule"]["spec"]["groups"]},
        lws=kinds["LeaderWorkerSet"]["metadata"]["name"],
        namespace=namespace,
    )


def loopback_listen_address(url: str) -> str | None:
    """host:port to serve on when `url` names this machine; None for a remote Prometheus."""
    parsed = urlparse(url)
    if parsed.hostname not in LOOPBACK_HOSTS or parsed.port is None:
        return None
    return f"127.0.0.1:{parsed.port}"


def write_config(directory: Path, monitoring: ChartMonitoring) -> Path:
    """prometheus.yml + rules.yml + an empty targets file in directory; returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yml").write_text(yaml.safe_dump(monitoring.rules, sort_keys=False))
    write_targets(directory, monitoring, [])
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(directory / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "megapod-leaders",
                "file_sd_configs": [{"files": [str(directory / "targets.json")], "refresh_interval": "1s"}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_targets(directory: Path, monitoring: ChartMonitoring, leaders: list[str]) -> None:
    """Scrape these leaders (host:port; group index = position), labelled as the PodMonitor labels them."""
    groups = [
        {
            "targets": [address],
            "labels": {
                "namespace": monitoring.namespace,
                "lws": monitoring.lws,
                "group_index": str(index),
                "pod": f"{monitoring.lws}-{index}",
                "container": "leader",
            },
        }
        for index, address in enumerate(leaders)
    ]
    # Replace atomically: Prometheus re-reads the file while we write it.
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".json", delete=False) as handle:
        json.dump(groups, handle)
    Path(handle.name).replace(directory / "targets.json")


def prometheus_argv(config: Path, listen: str, data: Path) -> list[str]:
    """The prometheus command line for a throwaway local server."""
    return [
        "prometheus",
        f"--config.file={config}",
        f"--web.listen-address={listen}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=1d",
    ]
