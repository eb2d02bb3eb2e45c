"""Command lines for the two benchmark clients, built from the spec's benchmark section.

aiperf 0.13 talks HTTP to Triton's `/v2/models/<model>/generate_stream` through its `template`
endpoint (the payload template must be a file: the inline form splits on commas); the payload is
the backend's request contract (steps.contract). genai-perf 0.0.16 talks gRPC through
perf_analyzer with `--endpoint-type kserve --backend tensorrtllm`, whose payload is the TRT-LLM
ensemble's (genai_perf/inputs/converters/tensorrtllm_converter.py: text_input, max_tokens,
exclude_input_in_output, stream, min_length), so it can drive only the ensemble contract.

Warm-up with genai-perf is a separate, unrecorded genai-perf run of `warmup_requests` requests at
the point's concurrency: genai-perf 0.0.16 turns its warm-up into perf_analyzer's
`--warmup-request-count`, which the 24.08 SDK's perf_analyzer does not have (it first appears in
perf_analyzer r24.09, src/command_line_parser.cc) and answers with its usage and exit 99.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from steps.contract import ENSEMBLE, Contract
from workflows.spec import BenchmarkSpec

AIPERF = "aiperf"
GENAI_PERF = "genai-perf"
TEMPLATE_FILE = "payload_template.json"
# aiperf's Jinja variables for one request's prompt, output length and streaming flag.
AIPERF_VARIABLES = {
    "text": "{{ text|tojson }}",
    "max_tokens": "{{ max_tokens }}",
    "stream": "{{ stream|tojson }}",
}


@dataclass(frozen=True)
class PointPlan:
    """One sweep point."""

    concurrency: int
    isl: int
    osl: int

    @property
    def name(self) -> str:
        """Directory name, e.g. 'isl128-osl128-c4'."""
        return f"isl{self.isl}-osl{self.osl}-c{self.concurrency}"


@dataclass(frozen=True)
class Target:
    """Where the deployment answers: HTTP for aiperf, gRPC for genai-perf/perf_analyzer."""

    http_url: str
    grpc_url: str
    contract: Contract = ENSEMBLE

    @property
    def model(self) -> str:
        """The model the clients address."""
        return self.contract.model


def plan_sweep(bench: BenchmarkSpec) -> list[PointPlan]:
    """Every (ISL, OSL) pair at every concurrency, lightest load first within a pair."""
    return [PointPlan(c, seq.isl, seq.osl) for seq in bench.sequences for c in sorted(bench.concurrency)]


def tool_version(tool: str) -> str | None:
    """`<tool> --version` (the first version-looking token), or None if it cannot be run."""
    try:
        done = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\d+\.\d+[\w.+-]*", done.stdout + done.stderr)
    return match.group(0) if match else None


def aiperf_template(contract: Contract) -> str:
    """aiperf's payload template: the contract's request with Jinja variables in its value slots."""
    marks = {name: f"@@{name}@@" for name in AIPERF_VARIABLES}
    text = json.dumps(contract.request(marks["text"], marks["max_tokens"], stream=marks["stream"]))
    for name, variable in AIPERF_VARIABLES.items():
        text = text.replace(json.dumps(marks[name]), variable)
    return text


def aiperf_command(
    bench: BenchmarkSpec, point: PointPlan, target: Target, tokenizer: Path, out_dir: Path
) -> list[str]:
    """aiperf profile for one point; writes the payload template file into out_dir."""
    template = out_dir / TEMPLATE_FILE
    template.write_text(aiperf_template(target.contract))
    command = [
        AIPERF,
        "profile",
        "--model",
        target.model,
        "--url",
        target.http_url,
        "--endpoint-type",
        "template",
        "--custom-endpoint",
        f"/v2/models/{target.model}/generate_stream",
        "--extra-inputs",
        f"payload_template:{template}",
        "--extra-inputs",
        f"response_field:{target.contract.output}",
        "--tokenizer",
        str(tokenizer),
        "--isl",
        str(point.isl),
        "--isl-stddev",
        "0",
        "--osl",
        str(point.osl),
        "--osl-stddev",
        "0",
        "--concurrency",
        str(point.concurrency),
        "--request-count",
        str(bench.request_count),
        "--random-seed",
        str(bench.random_seed),
        "--request-timeout-seconds",
        str(bench.point_timeout_s),
        "--artifact-dir",
        str(out_dir),
        "--ui",
        "none",
        # Server and GPU metrics come from Prometheus per point (aiperf's own probes would hit
        # Triton's metrics port with HEAD, which it answers 405).
        "--no-server-metrics",
        "--no-gpu-telemetry",
    ]
    if bench.warmup_requests:
        command += ["--warmup-request-count", str(bench.warmup_requests)]
    if bench.streaming:
        command.append("--streaming")
    return command


def genai_perf_command(
    bench: BenchmarkSpec,
    point: PointPlan,
    target: Target,
    tokenizer: Path,
    out_dir: Path,
    *,
    requests: int | None = None,
) -> list[str]:
    """genai-perf profile for one point (perf_analyzer must be on PATH); `requests` for a warm-up run."""
    command = [
        GENAI_PERF,
        "profile",
        "-m",
        target.model,
        "--endpoint-type",
        "kserve",
        "--backend",
        "tensorrtllm",
        "-u",
        target.grpc_url,
        "--tokenizer",
        str(tokenizer),
        "--synthetic-input-tokens-mean",
        str(point.isl),
        "--synthetic-input-tokens-stddev",
        "0",
        "--output-tokens-mean",
        str(point.osl),
        "--output-tokens-stddev",
        "0",
        "--output-tokens-mean-deterministic",
        "--concurrency",
        str(point.concurrency),
        "--request-count",
        str(requests or bench.request_count),
        "--random-seed",
        str(bench.random_seed),
        "--artifact-dir",
        str(out_dir),
    ]
    if bench.streaming:
        command.append("--streaming")
    return command


def genai_perf_warmup(
    bench: BenchmarkSpec, point: PointPlan, target: Target, tokenizer: Path, out_dir: Path
) -> list[str] | None:
    """The unrecorded warm-up run before a genai-perf point (None without warm-up requests)."""
    if not bench.warmup_requests:
        return None
    return genai_perf_command(bench, point, target, tokenizer, out_dir, requests=bench.warmup_requests)


COMMANDS = {AIPERF: aiperf_command, GENAI_PERF: genai_perf_command}
# aiperf warms up in the same run (its own --warmup-request-count, not perf_analyzer's).
WARMUPS = {AIPERF: lambda *args: None, GENAI_PERF: genai_perf_warmup}


def tool_environment(tool: str, base: dict[str, str]) -> dict[str, str]:
    """The client's environment: offline hub for genai-perf; aiperf breaks with HF_HUB_OFFLINE=1."""
    env = dict(base)
    if tool == GENAI_PERF:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.pop("HF_HUB_OFFLINE", None)
    return env


def describe(command: list[str]) -> str:
    """The command as one JSON line (for logs and point.json)."""
    return json.dumps(command)
