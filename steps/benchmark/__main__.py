"""`python -m steps.benchmark --spec SPEC --url HOST:PORT --tokenizer DIR --out DIR [--prometheus URL]`.

Exit 0 when at least one point was measured (failed points are recorded in their point.json and
reported), 1 when every point failed, 2 on bad input. Output parameters: run_id, points, failed_points.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from steps.benchmark.sweep import run_sweep
from steps.benchmark.tools import Target
from steps.contract import contract_for
from workflows.spec import SpecError, load_spec

HOST_PORT = re.compile(r"^(?:https?://)?(?P<host>[\w.-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})/?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
DEFAULT_SETTLE_S = 15.0


class BadInput(ValueError):
    """A command-line value that cannot work; the message says what would."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m steps.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, type=Path)
    p.add_argument("--url", required=True, help="HTTP endpoint of the deployment, HOST:PORT")
    p.add_argument("--grpc-url", help="gRPC endpoint HOST:PORT (default: --url's host, spec grpc_port)")
    p.add_argument("--tokenizer", required=True, type=Path, help="the checkpoint's tokenizer directory")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--prometheus",
        help="Prometheus base URL for per-point server metrics (default: spec cluster.prometheus_url)",
    )
    p.add_argument(
        "--prometheus-settle",
        type=float,
        default=DEFAULT_SETTLE_S,
        help="seconds to wait after the sweep before querying Prometheus (one scrape interval)",
    )
    p.add_argument("--outputs", type=Path, default=Path("/tmp/outputs"))
    return p.parse_args(argv)


def host_port(value: str, flag: str) -> tuple[str, int]:
    """('host', port) from HOST:PORT or http://HOST:PORT."""
    match = HOST_PORT.match(value.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise BadInput(f"{flag} {value!r}: expected HOST:PORT (e.g. 127.0.0.1:8000 or my-svc.ns:8000)")
    return match["host"], int(match["port"])


def check_tokenizer(path: Path) -> None:
    """The tokenizer must be a local directory with tokenizer files (never fetched from a hub)."""
    if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise BadInput(
            f"--tokenizer {path}: not a directory with {' or '.join(TOKENIZER_FILES)}; "
            "pass the downloaded checkpoint's directory"
        )


def write_outputs(outputs: Path, values: dict[str, str]) -> None:
    """One file per output parameter, no trailing newline (contracts.md)."""
    outputs.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (outputs / name).write_text(value)


def main(argv: list[str] | None = None) -> int:
    """Parse, validate, run the sweep, write output parameters."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = load_spec(args.spec)
        host, port = host_port(args.url, "--url")
        grpc = args.grpc_url or f"{host}:{spec.serving.service.grpc_port}"
        host_port(grpc, "--grpc-url")
        check_tokenizer(args.tokenizer)
        contract = contract_for(spec.backend)
    except (SpecError, BadInput) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    if shutil.which(spec.benchmark.tool) is None:
        print(
            f"benchmark: {spec.benchmark.tool} (spec benchmark.tool) is not on PATH; install it or pick the "
            "other tool (aiperf | genai-perf)",
            file=sys.stderr,
        )
        return 1
    target = Target(http_url=f"{host}:{port}", grpc_url=re.sub(r"^https?://", "", grpc), contract=contract)
    result = run_sweep(
        spec,
        target,
        args.tokenizer.resolve(),
        args.out.resolve(),
        prometheus_url=args.prometheus or spec.cluster.prometheus_url,
        settle_s=args.prometheus_settle,
    )
    write_outputs(
        args.outputs,
        {"run_id": result.run_id, "points": str(len(result.points)), "failed_points": str(result.failed)},
    )
    if result.failed == len(result.points):
        print(f"benchmark: every point failed; see {args.out}/*/point.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
