"""Transfer benchmark (a script, not a test): download and publish throughput vs plain baselines.

    .venv/bin/python tests/perf/bench_transfer.py [--gib 1] [--files 8] [--rounds 3] [--only WHAT]

On the same local servers (the HF-Hub stand-in, moto S3) and in the same run it prints:
- download: steps.download (hf://) vs parallel raw HTTP GETs of the same files (one per file);
- publish: steps.publish's S3 upload + verification vs plain boto3 `upload_file` per file;
- resume: bytes re-transferred after SIGKILL of `python -m steps.download` at 50%, against the
  target of at most one part per file.
Targets: ratios >= 0.9x; re-transfer <= files x part size.

The machine is shared and noisy, so baseline and ours run alternately (AB, BA, AB, ...) for
`--rounds` rounds; each round gives one ratio and the median ratio is the figure reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from steps import download as dl  # noqa: E402
from steps.manifest import Manifest, hash_tree  # noqa: E402
from steps.processes import stop_process  # noqa: E402
from steps.publish import publish_s3  # noqa: E402
from steps.transfer import DEFAULT_PART_SIZE, MIB, human_bytes  # noqa: E402
from tests.support.hfhub import HubServer, snapshot  # noqa: E402
from tests.support.moto import CREDENTIALS, start_moto  # noqa: E402
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


def alternate(
    name: str,
    baseline: Callable[[int], None],
    ours: Callable[[int], None],
    rounds: int,
    total: int,
    cleanup: Callable[[], None] = lambda: None,
) -> float:
    """Time baseline and ours alternately (order flipped every round); print and return the median ratio.

    After each timed run, untimed: `cleanup` and a sync, so one run's deletions and dirty pages
    are not paid for by the next.
    """
    ratios, base_times, our_times = [], [], []
    for i in range(rounds):
        order = [(baseline, base_times), (ours, our_times)]
        for fn, times in order if i % 2 == 0 else order[::-1]:
            times.append(timed(lambda fn=fn, i=i: fn(i)))
            cleanup()
            os.sync()
        ratios.append(base_times[-1] / our_times[-1])
    each = " ".join(f"{r:.2f}" for r in ratios)
    print(
        f"{name:9s} baseline {human_bytes(total / statistics.median(base_times))}/s  "
        f"ours {human_bytes(total / statistics.median(our_times))}/s  "
        f"median ratio {statistics.median(ratios):.2f}x (rounds: {each}; target >= 0.9x)",
        flush=True,
    )
    return statistics.median(ratios)


def bench_download(hub: HubServer, work: Path, total: int, rounds: int) -> float:
    """Median ratio baseline_time / our_time for the hf:// download."""

    def baseline(i: int) -> None:
        raw_parallel_get(hub, work / "raw")

    def ours(i: int) -> None:
        dl.download(f"hf://{REPO}@main", work / "ours", progress_interval_s=3600)

    def cleanup() -> None:
        shutil.rmtree(work / "raw", ignore_errors=True)
        shutil.rmtree(work / "ours", ignore_errors=True)

    return alternate("download", baseline, ours, rounds, total, cleanup)


def bench_publish(endpoint: str, checkpoint: Path, total: int, rounds: int) -> float:
    """S3 median ratio: plain upload_file per file vs publish_s3 (upload, verification, pointer)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    files = sorted(checkpoint.iterdir())
    spec = load_spec(ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml")
    staging = checkpoint.parent / "staging"
    staging.mkdir()
    for f in files:
        os.link(f, staging / f.name)
    manifest = Manifest("repository", "bench", "", hash_tree(staging))

    def baseline(i: int) -> None:
        for f in files:
            client.upload_file(str(f), "bench", f"plain{i}/{f.name}")

    def ours(i: int) -> None:
        publish_s3(staging, f"s3://bench/ours{i}", manifest, spec)

    return alternate("publish", baseline, ours, rounds, total)


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
        f"({again / total:.1%} of the checkpoint); target <= one part per file = {human_bytes(bound)}",
        flush=True,
    )
    return again


def main() -> int:
    """Run the three measurements and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/ours rounds")
    parser.add_argument("--only", choices=("download", "resume", "publish"), action="append")
    args = parser.parse_args()
    total = int(args.gib * 1024**3) // args.files * args.files
    only = set(args.only or ("download", "resume", "publish"))
    os.environ.update(CREDENTIALS)
    with tempfile.TemporaryDirectory(prefix="megapod-bench-") as tmp:
        work = Path(tmp)
        checkpoint = make_checkpoint(work / "checkpoint", total, args.files)
        part = human_bytes(DEFAULT_PART_SIZE)
        print(f"checkpoint: {args.files} files, {human_bytes(total)}; part size {part}")
        with HubServer() as hub:
            hub.add(snapshot(REPO, checkpoint))
            os.environ["HF_ENDPOINT"] = hub.url
            if "download" in only:
                bench_download(hub, work, total, args.rounds)
            if "resume" in only:
                bench_resume(hub, work, total, args.files)
        if "publish" in only:
            proc, endpoint = start_moto()
            try:
                os.environ["AWS_ENDPOINT_URL"] = endpoint
                bench_publish(endpoint, checkpoint, total, args.rounds)
            finally:
                stop_process(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
