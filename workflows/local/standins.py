"""What stands in for the cloud during `megapod run --local`, started before the DAG, stopped after.

- S3: for an `s3://` model source, a real moto server on 127.0.0.1 (AWS_ENDPOINT_URL and dummy
  credentials go to every task); when the source prefix is empty it is seeded with the tiny
  Llama of `steps.tinymodel`, which stands in for the checkpoint.
- Prometheus: when spec.cluster.prometheus_url names this machine, a real Prometheus there with
  the chart's recording rules (workflows.local.prometheus), scraping the leader's metrics port
  once the deploy task reports the leader's endpoint.
- The stage images (pipeline and serving): this interpreter's environment (runner.default_environment).

Every stand-in is announced on the console and recorded in the run folder (`standins.json`),
so nobody mistakes a local run for a cluster run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console

from steps.processes import stop_process
from workflows.argo.stages import STAGE_BUILDERS
from workflows.images import stage_image
from workflows.local import prometheus
from workflows.local.engine import LocalEnvironment
from workflows.local.errors import LocalRunError
from workflows.local.expressions import SUCCEEDED
from workflows.local.nodes import Node
from workflows.local.runner import default_environment

LOOPBACK = "127.0.0.1"
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "megapod-local", "AWS_SECRET_ACCESS_KEY": "megapod-local",
             "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
START_TIMEOUT_S = 30.0
LOCAL_RUN_ENV = "MEGAPOD_LOCAL_RUN"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _refuse_taken_port(url: str) -> None:
    """A server already answering there (another local run?) would be taken for ours: refuse."""
    parsed = urlparse(url)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers bind: a port whose last connections sit in TIME-WAIT is free to listen on
        # (a rerun within a minute); only a live listener makes the bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((parsed.hostname or "127.0.0.1", parsed.port or 80))
        except OSError:
            raise LocalRunError(
                f"{parsed.hostname}:{parsed.port} is already in use (another local run?); stop it or "
                "choose another port in the spec"
            ) from None


@contextmanager
def background_server(argv: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen]:
    """Start a server process, wait until ready_url answers, stop it (by its pid) on exit."""
    _refuse_taken_port(ready_url)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise LocalRunError(f"{argv[0]} exited with {process.returncode} while starting (log: {log})")
            try:
                urllib.request.urlopen(ready_url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise LocalRunError(
                        f"{argv[0]} did not answer {ready_url} in {START_TIMEOUT_S:g}s"
                    ) from None
                time.sleep(0.1)
        yield process
    finally:
        stop_process(process)


def seed_s3(endpoint: str, bucket: str, prefix: str, run_dir: Path) -> bool:
    """Create the bucket; upload the tiny model under prefix unless something is there. True if seeded."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=DUMMY_AWS["AWS_DEFAULT_REGION"],
                      aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    if s3.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/", MaxKeys=1).get("KeyCount"):
        return False
    from steps.tinymodel import make_tiny_llama

    model = run_dir / "standins" / "tiny-llama"
    if not model.exists():
        make_tiny_llama(model)
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(model).as_posix()}")
    return True


@dataclass
class StandIns:
    """The environment tasks run in, and a hook the executor calls on every node change."""

    environment: LocalEnvironment
    spec: Any
    monitoring: prometheus.ChartMonitoring | None = None
    prometheus_dir: Path | None = None

    def on_change(self, node: Node) -> None:
        """Point Prometheus at the leader as soon as deploy reports its endpoint."""
        from workflows.argo.common import DEPLOY

        endpoint = node.parameters.get("endpoint")
        if node.key != DEPLOY or node.phase != SUCCEEDED or not endpoint or self.monitoring is None:
            return
        host = endpoint.removeprefix("http://").rsplit(":", 1)[0]
        metrics = f"{host}:{self.spec.serving.service.metrics_port}"
        prometheus.write_targets(self.prometheus_dir, self.monitoring, [metrics])


@contextmanager
def cloud_stand_ins(spec: Any, run_dir: Path, console: Console) -> Iterator[StandIns]:
    """The local environment for the spec's pipeline; servers started here stop on exit."""
    images = sorted({stage_image(spec, stage) for stage in STAGE_BUILDERS})
    standins = StandIns(default_environment(images), spec)
    environment = standins.environment
    # Steps that must act differently off-cluster (deploy: local pods, not helm) key on this,
    # and keep their state (pids, namespaces) in the run folder.
    environment.env[LOCAL_RUN_ENV] = str(run_dir.resolve())
    record: dict[str, Any] = {"images": f"{', '.join(images)} -> {sys.executable}"}
    source = spec.model.source_parts
    with ExitStack() as stack:
        if "bucket" in source:
            port = free_port()
            endpoint = f"http://{LOOPBACK}:{port}"
            moto = [str(Path(sys.executable).with_name("moto_server")), "-H", LOOPBACK, "-p", str(port)]
            stack.enter_context(
                background_server(moto, f"{endpoint}/moto-api/", run_dir / "standins" / "moto.log")
            )
            seeded = seed_s3(endpoint, source["bucket"], source["prefix"], run_dir)
            environment.env.update(DUMMY_AWS, AWS_ENDPOINT_URL=endpoint)
            what = "seeded with the tiny Llama of steps.tinymodel" if seeded else "already holds the model"
            record["s3"] = f"moto at {endpoint}; {spec.model.source} {what}"
        elif "hf_repo" in source:
            raise LocalRunError(
                f"model.source {spec.model.source}: local runs have no Hugging Face Hub; use an s3:// "
                "source (a local S3 is started) or an absolute path"
            )
        if spec.cluster.prometheus_url:
            record["prometheus"] = start_prometheus(standins, run_dir, stack)
        for name, what in record.items():
            console.print(f"stand-in {name}: {what}", highlight=False, soft_wrap=True)
        (run_dir / "standins.json").write_text(json.dumps(record, indent=2) + "\n")
        yield standins


def start_prometheus(standins: StandIns, run_dir: Path, stack: ExitStack) -> str:
    """Start Prometheus at spec.cluster.prometheus_url (which must be on this machine)."""
    spec = standins.spec
    listen = prometheus.loopback_listen_address(spec.cluster.prometheus_url)
    if listen is None:
        raise LocalRunError(
            f"cluster.prometheus_url {spec.cluster.prometheus_url}: a local run starts its own Prometheus, "
            "so use http://127.0.0.1:PORT (or leave it unset)"
        )
    from workflows.render import CHART_VALUES_FILE

    directory = run_dir / "standins" / "prometheus"
    monitoring = prometheus.chart_monitoring(
        run_dir / "rendered" / CHART_VALUES_FILE, spec.name, spec.cluster.namespace
    )
    config = prometheus.write_config(directory, monitoring)
    argv = prometheus.prometheus_argv(config, listen, directory / "data")
    stack.enter_context(background_server(argv, f"http://{listen}/-/ready", directory / "prometheus.log"))
    standins.monitoring, standins.prometheus_dir = monitoring, directory
    return f"Prometheus 127.0.0.1 at {listen} with the chart's recording rules ({directory / 'rules.yml'})"
