"""A real Prometheus for tests: 127.0.0.1, free port, temp storage, stopped by PID.

`start_prometheus(tmp_dir, scrape_targets=[...], rule_groups=[...])` writes prometheus.yml (and a
rules file), starts `prometheus` from Debian's package, and waits until it is ready.
`chart_rule_groups(spec, release, namespace)` renders charts/triton-lws with `helm template` and
returns the PrometheusRule's groups, so tests load exactly the recording rules the chart ships.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from steps.processes import stop_process
from tests.support.triton import LOOPBACK, free_port
from workflows.chart_values import CHART_DIR, chart_values
from workflows.spec import Spec

READY_TIMEOUT_S = 30.0


@dataclass
class ScrapeTarget:
    """One static target (`host:port`) with the labels a PodMonitor would have added."""

    address: str
    labels: dict[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


@dataclass
class PrometheusProcess:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def query(self, expr: str) -> list[dict]:
        """Instant query result list."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]

    def wait_for(self, expr: str, timeout_s: float = 60.0) -> list[dict]:
        """Poll an instant query until it returns something (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{expr} returned nothing within {timeout_s:.0f}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it hangs)."""
        stop_process(self.process)


def chart_rule_groups(spec: Spec, release: str, namespace: str | None = None) -> list[dict]:
    """The recording-rule groups of the chart's PrometheusRule for this spec (via `helm template`)."""
    namespace = namespace or spec.cluster.namespace
    helm = shutil.which("helm")
    if helm is None:
        raise RuntimeError("helm not on PATH; run scripts/bootstrap.sh")
    rendered = subprocess.run(
        [helm, "template", release, str(CHART_DIR), "--namespace", namespace, "--values", "-",
         "--show-only", "templates/prometheusrule.yaml"],
        input=yaml.safe_dump(chart_values(spec)), capture_output=True, text=True, check=True,
    ).stdout
    return next(d for d in yaml.safe_load_all(rendered) if d)["spec"]["groups"]


def start_prometheus(tmp_dir: Path, scrape_targets: list[ScrapeTarget], *, rule_groups: list[dict] = (),
                     scrape_interval: str = "1s", evaluation_interval: str = "1s") -> PrometheusProcess:
    """Start Prometheus scraping the targets with the rule groups loaded; wait until ready."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    rules_path = tmp_dir / "rules.yml"
    # Fast rules for tests: same expressions, shorter evaluation interval than the chart's.
    groups = [{**g, "interval": evaluation_interval} for g in rule_groups]
    rules_path.write_text(yaml.safe_dump({"groups": groups}))
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(rules_path)],
        "scrape_configs": [
            {"job_name": f"target-{n}", "metrics_path": t.metrics_path,
             "static_configs": [{"targets": [t.address], "labels": t.labels}]}
            for n, t in enumerate(scrape_targets)
        ],
    }
    config_path = tmp_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_dir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={tmp_dir / 'data'}",
             f"--web.listen-address={LOOPBACK}:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    server = PrometheusProcess(process, port, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"prometheus not ready after {READY_TIMEOUT_S:.0f}s:\n{server.log_tail()}")
