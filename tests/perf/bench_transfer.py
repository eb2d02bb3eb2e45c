"""Transfer benchmark (a script, not a test): download and publish throughput vs plain baselines.

    .venv/bin/python tests/perf/bench_transfer.py [--gib 1] [--files 8]

On the same local servers (the HF-Hub stand-in, moto S3) and in the same run it prints:
- download: steps.download (hf://) vs parallel raw HTTP GETs of the same files (one per file);
- publish: steps.publish's S3 upload + verification vs plain boto3 `upload_file` per file;
- resume: bytes re-transferred after SIGKILL of `python -m steps.download` at 50%, against the
  target of at most one part per file.
Targets: ratios >= 0.9x; re-transfer <= files x part size.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from steps import download as dl  # noqa: E402
from steps.manifest import Manifest, hash_tree  # noqa: E402
from steps.publish import publish_s3  # noqa: E402
from steps.transfer import DEFAULT_PART_SIZE, MIB, human_bytes  # noqa: E402
from tests.support.hfhub import HubServer, snapshot  # noqa: E402
from tests.support.moto import CREDENTIALS, start_moto, stop  # noqa: E402
from workflows.spec import load_spec  # noqa: E402

REPO = "bench/checkpoint"


def make_checkpoint(directory: Path, total: int, files: int) -> Path:
    """`files` shards of random bytes adding up to `total`."""
    directory.mkdir(parents=True)
    size = total // files
    for i in range(files):
        with (directory / f"model-{i + 1:05d}-of-{files:05d}.safetensors").open("wb") as handle:
            for _ in range(size // (16 * MIB)):
                handle.write(os.urandom(16 * MIB))
            handle.write(os.urandom(size % (16 * MIB)))
    return directory


def timed(fn) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_parallel_get(hub: HubServer, out: Path) -> None:
    """Baseline: one plain streaming GET per file, all files in parallel."""
    out.mkdir(parents=True)
    files = list(hub.repos[REPO].files.values())

    def get(f) -> None:
        with (
            requests.get(f"{hub.url}/lfs/{f.sha256}", stream=True, timeout=60) as r,
            (out / f.path).open("wb") as h,
        ):
            r.raise_for_status()
            for chunk in r.iter_content(8 * MIB):
                h.write(chunk)

    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        list(pool.map(get, files))


def bench_download(hub: HubServer, work: Path, total: int) -> float:
    """Ratio baseline_time / our_time for the hf:// download."""
    base = timed(lambda: raw_parallel_get(hub, work / "raw"))
    ours = timed(lambda: dl.download(f"hf://{REPO}@main", work / "ours", progress_interval_s=3600))
    print(
        f"download  baseline {human_bytes(total / base)}/s  steps.download {human_bytes(total / ours)}/s  "
        f"ratio {base / ours:.2f}x (target >= 0.9x)"
    )
    return base / ours


def bench_publish(endpoint: str, checkpoint: Path, total: int) -> float:
    """S3 ratio: plain upload_file per file vs publish_s3 (upload, list/size/ETag checks, pointer)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    files = sorted(checkpoint.iterdir())
    base = timed(lambda: [client.upload_file(str(f), "bench", f"plain/{f.name}") for f in files])
    spec = load_spec(ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml")
    staging = checkpoint.parent / "staging"
    staging.mkdir()
    for f in files:
        os.link(f, staging / f.name)
    manifest = Manifest("repository", "bench", "", hash_tree(staging))
    ours = timed(lambda: publish_s3(staging, "s3://bench/ours", manifest, spec))
    print(
        f"publish   baseline {human_bytes(total / base)}/s  steps.publish  {human_bytes(total / ours)}/s  "
        f"ratio {base / ours:.2f}x (target >= 0.9x)"
    )
    return base / ours


def bench_resume(hub: HubServer, work: Path, total: int, files: int) -> int:
    """Kill a download subprocess at 50%, rerun; returns bytes sent more than once."""
    dest = work / "resume"
    start = hub.stats.total_body_bytes
    env = {**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steps.download",
            "--source",
            f"hf://{REPO}@main",
            "--dest",
            str(dest),
            "--outputs",
            str(work / "outputs"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while hub.stats.total_body_bytes - start < total // 2 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = hub.stats.total_body_bytes - start
    dl.download(f"hf://{REPO}@main", dest, progress_interval_s=3600)
    sent = hub.stats.total_body_bytes - start
    again = sent - total
    bound = files * DEFAULT_PART_SIZE
    print(
        f"resume    killed at {first / total:.0%}; re-transferred {human_bytes(again)} "
        f"({again / total:.1%} of the checkpoint); target <= one part per file = {human_bytes(bound)}"
    )
    return again


def main() -> int:
    """Run the three measurements and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=8)
    args = parser.parse_args()
    total = int(args.gib * 1024**3) // args.files * args.files
    os.environ.update(CREDENTIALS)
    with tempfile.TemporaryDirectory(prefix="megapod-bench-") as tmp:
        work = Path(tmp)
        checkpoint = make_checkpoint(work / "checkpoint", total, args.files)
        part = human_bytes(DEFAULT_PART_SIZE)
        print(f"checkpoint: {args.files} files, {human_bytes(total)}; part size {part}")
        with HubServer() as hub:
            hub.add(snapshot(REPO, checkpoint))
            os.environ["HF_ENDPOINT"] = hub.url
            bench_download(hub, work, total)
            bench_resume(hub, work, total, args.files)
        proc, endpoint = start_moto()
        try:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            bench_publish(endpoint, checkpoint, total)
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
