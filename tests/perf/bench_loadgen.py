"""Benchmark (not a test): the autoscale load generator against aiperf, and the samplers' API load.

    .venv/bin/python tests/perf/bench_loadgen.py [--concurrency 64] [--requests 640] [--osl 32]

1. Starts one real tritonserver (the tiny CPU ensemble) and runs, against it, aiperf (the
   baseline, same command line the benchmark step uses) and steps.autoscale.loadgen with the same
   concurrency, request count, ISL and OSL. Prints each one's streamed output tokens/s and
   requests/s, the ratio ours/aiperf (target >= 1.0: the load generator is never the bottleneck),
   and our client CPU seconds per 1k streamed tokens.
2. Runs the Kubernetes samplers (watches) against the API stand-in for --sampler-seconds while a
   script changes objects every second, and prints API requests per minute, beside what polling
   the same four kinds every sample interval would cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from steps.autoscale.loadgen import LoadPlan, run_load  # noqa: E402
from steps.benchmark.tools import PointPlan, Target, aiperf_command  # noqa: E402
from steps.cpu_backend.repository import write_ensemble_single  # noqa: E402
from steps.tinymodel import make_tiny_llama  # noqa: E402
from tests.support.triton import start_triton  # noqa: E402
from workflows.spec import BenchmarkSpec, LoadStage  # noqa: E402

TOOLS_BIN = ROOT / ".tools" / "bin"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_aiperf(http_url: str, tokenizer: Path, out: Path, args: argparse.Namespace) -> dict:
    """aiperf at the point; returns its throughput figures and wall/CPU time."""
    bench = BenchmarkSpec(tool="aiperf", request_count=args.requests, warmup_requests=0, point_timeout_s=600)
    point = PointPlan(args.concurrency, args.isl, args.osl)
    out.mkdir(parents=True, exist_ok=True)
    command = aiperf_command(bench, point, Target(http_url, ""), tokenizer, out)
    command[0] = str(TOOLS_BIN / "aiperf")
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"aiperf failed ({done.returncode}): {done.stderr[-2000:]}")
    export = next(out.rglob("profile_export_aiperf.json"))
    data = json.loads(export.read_text())
    return {"tokens_per_s": data["output_token_throughput"]["avg"],
            "requests_per_s": data["request_throughput"]["avg"], "wall_s": wall}


def run_ours(http_url: str, args: argparse.Namespace) -> dict:
    """The load generator at the same point, bounded by the request count."""
    plan = LoadPlan((LoadStage(name="bench", concurrency=args.concurrency, duration_s=1200),),
                    isl=args.isl, osl=args.osl, max_requests=args.requests)
    cpu_before = self_cpu()
    result = run_load(http_url, plan)
    cpu = self_cpu() - cpu_before
    done = [r for r in result.records if r.error is None]
    span = max(r.end_s for r in done) - min(r.start_s for r in done)
    tokens = sum(r.tokens for r in done)
    return {"tokens_per_s": tokens / span, "requests_per_s": len(done) / span, "cpu_s": cpu,
            "cpu_per_1k_tokens": cpu / tokens * 1000, "errors": len(result.records) - len(done)}


def sampler_requests_per_minute(seconds: float, interval_s: int = 5) -> tuple[float, float]:
    """API requests/minute of the watch-based samplers vs polling four kinds every interval."""
    from steps.autoscale.__main__ import kube_client
    from steps.autoscale.samplers import KubeWatcher
    from tests.support import kube

    api = kube.FakeKubeAPI().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = api.write_kubeconfig(Path(tmp) / "kubeconfig")
            watcher = KubeWatcher(kube_client("on", str(config)), "default")
            started = time.time()
            watcher.start()
            for tick in range(int(seconds)):
                api.put("pods", kube.group_pod("bench", 0, 0, phase="Running", ready=tick % 2 == 0))
                time.sleep(1)
            watcher.stop()
            minutes = (time.time() - started) / 60
            return api.request_count(started) / minutes, 4 * 60 / interval_s
    finally:
        api.stop()


def median_run(runs: list[dict]) -> dict:
    """The run with the median requests/s."""
    return sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--isl", type=int, default=16)
    parser.add_argument("--osl", type=int, default=32)
    parser.add_argument("--sampler-seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-loadgen-"))
    model = make_tiny_llama(work / "model", seed=0)
    write_ensemble_single(work / "repository", model, max_batch_size=args.concurrency)
    server = start_triton(work / "repository", work)
    aiperf_runs, our_runs = [], []
    try:
        run_ours(server.http_url, argparse.Namespace(**{**vars(args), "requests": args.concurrency}))  # warm
        # Interleaved rounds: the 2-core machine is shared, so one run each would mostly measure noise.
        for round_ in range(args.rounds):
            aiperf_runs.append(run_aiperf(server.http_url, model, work / f"aiperf-{round_}", args))
            our_runs.append(run_ours(server.http_url, args))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    aiperf, ours = median_run(aiperf_runs), median_run(our_runs)
    print(f"point: concurrency {args.concurrency}, {args.requests} requests, ISL {args.isl}, OSL {args.osl}, "
          f"median of {args.rounds} interleaved rounds")
    print("per round requests/s: aiperf " + " ".join(f"{r['requests_per_s']:.2f}" for r in aiperf_runs)
          + " | loadgen " + " ".join(f"{r['requests_per_s']:.2f}" for r in our_runs))
    # Both streams carry exactly OSL token events per request; aiperf's own token count re-tokenizes the
    # returned text (more tokens than events), so tokens/s is compared per event: requests/s x OSL.
    aiperf_events = aiperf["requests_per_s"] * args.osl
    print(f"aiperf : {aiperf_events:8.1f} token events/s  {aiperf['requests_per_s']:6.2f} requests/s  "
          f"(aiperf's re-tokenized count: {aiperf['tokens_per_s']:.1f} tokens/s)")
    print(f"loadgen: {ours['tokens_per_s']:8.1f} token events/s  {ours['requests_per_s']:6.2f} requests/s  "
          f"({ours['errors']} errors)")
    print(f"ratio loadgen/aiperf: tokens/s {ours['tokens_per_s'] / aiperf_events:.2f}, "
          f"requests/s {ours['requests_per_s'] / aiperf['requests_per_s']:.2f}  (target >= 1.0)")
    print(f"loadgen client CPU: {ours['cpu_s']:.2f} s = {ours['cpu_per_1k_tokens']:.3f} CPU s per 1k tokens")
    watched, polled = sampler_requests_per_minute(args.sampler_seconds)
    print(f"samplers: {watched:.1f} API requests/minute with watches "
          f"(polling 4 kinds every 5 s: {polled:.0f}/minute)")


if __name__ == "__main__":
    main()
