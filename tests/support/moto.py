"""A real moto S3 server on 127.0.0.1 for tests: the `moto_s3` session fixture.

Starts `moto_server` from the virtualenv on a free port, waits until it answers, and exports
dummy credentials plus AWS_ENDPOINT_URL (boto3 reads it) for the whole session. Tests create
buckets with unique names so they do not need a reset between them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from steps.processes import stop_process

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class MotoS3:
    """A running moto server."""

    endpoint_url: str
    pid: int

    def client(self):
        """A plain boto3 S3 client pointed at this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(timeout_s: float = 30) -> tuple[subprocess.Popen, str]:
    """Start moto_server on a free loopback port; returns (process, endpoint URL)."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout_s}s")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A real moto S3 server for the session; AWS_ENDPOINT_URL and dummy credentials exported."""
    proc, url = start_moto()
    saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=url)
    try:
        yield MotoS3(endpoint_url=url, pid=proc.pid)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_process(proc)
