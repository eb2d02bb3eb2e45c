"""History and regressions: one file per run (directory or S3 via a real moto server), baselines,
thresholds from the spec, the exit code with --fail-on-regression, concurrent appends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reports.cli import main as report_main
from reports.history import append_run, compare, open_history, parse_thresholds, read_run
from reports.table import RunInfo
from tests.support import moto as moto_support
from tests.support.moto import MotoS3
from tests.test_reports import write_sweep
from workflows.spec import RegressionThresholds

moto_s3 = moto_support.moto_s3  # the shared session fixture

ROOT = Path(__file__).resolve().parents[1]


def run_inputs(root: Path, run_id: str, started_at: str, *, scale: float = 1.0, tool: str = "aiperf") -> Path:
    """A benchmark output directory with run.json, as steps.benchmark writes it."""
    write_sweep(root, tool, throughput_scale=scale)
    (root / "run.json").write_text(json.dumps({"run_id": run_id, "started_at": started_at, "tool": tool}))
    return root


def report(tmp_path: Path, inputs: Path, history: str, *extra: str) -> int:
    return report_main(["--input", str(inputs), "--out", str(tmp_path / f"out-{inputs.name}"),
                        "--history", history, *extra])  # fmt: skip


def test_planted_20_percent_throughput_drop_is_flagged_and_fails_the_run_with_the_flag(tmp_path, capsys):
    history = str(tmp_path / "history")
    good = run_inputs(tmp_path / "monday", "monday", "2025-01-06T02:00:00+00:00")
    assert report(tmp_path, good, history) == 0
    worse = run_inputs(tmp_path / "tuesday", "tuesday", "2025-01-07T02:00:00+00:00", scale=0.8)
    assert report(tmp_path, worse, history) == 0  # flagged, but only fails the run when asked
    assert report(tmp_path, worse, history, "--fail-on-regression") == 1
    assert "regression(s) against the baseline" in capsys.readouterr().err

    html = (tmp_path / "out-tuesday" / "report.html").read_text()
    assert "regression(s) against baseline 20250106T020000Z_monday_" in html
    summary = (tmp_path / "out-tuesday" / "summary.md").read_text()
    assert "| output_token_throughput | avg | tokens/s |" in summary and "-20.0%" in summary
    # A steady run is not flagged against the dropped one... and 20% better is not a regression either.
    better = run_inputs(tmp_path / "wednesday", "wednesday", "2025-01-08T02:00:00+00:00", scale=1.0)
    assert report(tmp_path, better, history, "--fail-on-regression") == 0
    assert len(list((tmp_path / "history").glob("*.parquet"))) == 4


def test_thresholds_come_from_the_spec_and_a_pinned_baseline_is_used(tmp_path):
    spec_text = (ROOT / "workflows" / "examples" / "llama-3.1-8b-1node.yaml").read_text()
    spec = tmp_path / "spec.yaml"
    # 25% allowed: the planted 20% drop is then within bounds.
    spec.write_text(
        spec_text + "\nreports:\n  thresholds: {output_token_throughput: -0.25, request_throughput: -0.25}\n"
    )
    history = str(tmp_path / "history")
    report(
        tmp_path, run_inputs(tmp_path / "a", "a", "2025-01-01T00:00:00+00:00"), history, "--spec", str(spec)
    )
    report(tmp_path, run_inputs(tmp_path / "b", "b", "2025-01-02T00:00:00+00:00", scale=0.9), history)
    dropped = run_inputs(tmp_path / "c", "c", "2025-01-03T00:00:00+00:00", scale=0.8)
    assert report(tmp_path, dropped, history, "--spec", str(spec), "--fail-on-regression") == 0
    # Pinned to run a with the default thresholds (-5%): the 20% drop fails.
    assert report(tmp_path, dropped, history, "--baseline", "a", "--fail-on-regression") == 1
    assert "against baseline 20250101T000000Z_a_" in (tmp_path / "out-c" / "report.html").read_text()


def test_unknown_pinned_baseline_is_bad_input(tmp_path, capsys):
    history = str(tmp_path / "history")
    report(tmp_path, run_inputs(tmp_path / "a", "a", "2025-01-01T00:00:00+00:00"), history)
    later = run_inputs(tmp_path / "b", "b", "2025-01-02T00:00:00+00:00")
    assert report(tmp_path, later, history, "--baseline", "nightly-42") == 2
    err = capsys.readouterr().err
    assert "baseline run 'nightly-42' is not in history" in err and "runs there: a" in err
    assert not (tmp_path / "out-b").exists()


def test_previous_baseline_is_the_last_comparable_run(tmp_path):
    """A genai-perf run in between is not compared with aiperf runs."""
    history = str(tmp_path / "history")
    report(tmp_path, run_inputs(tmp_path / "a", "a", "2025-01-01T00:00:00+00:00"), history)
    report(
        tmp_path,
        run_inputs(tmp_path / "b", "b", "2025-01-02T00:00:00+00:00", tool="genai-perf", scale=2),
        history,
    )
    assert report(tmp_path, run_inputs(tmp_path / "c", "c", "2025-01-03T00:00:00+00:00"), history) == 0
    assert "against baseline 20250101T000000Z_a_" in (tmp_path / "out-c" / "report.html").read_text()


def test_threshold_names_map_to_metric_and_statistic():
    parsed = parse_thresholds(RegressionThresholds().model_dump())
    assert parsed == {
        ("output_token_throughput", "avg"): -0.05,
        ("request_throughput", "avg"): -0.05,
        ("time_to_first_token", "p95"): 0.10,
        ("inter_token_latency", "p95"): 0.10,
    }


def test_latency_rise_beyond_threshold_is_a_regression():
    point = {
        "concurrency": 4,
        "isl": 128,
        "osl": 128,
        "metric": "time_to_first_token",
        "stat": "p95",
        "unit": "ms",
    }
    before = pd.DataFrame([{**point, "value": 100.0}])
    after = pd.DataFrame([{**point, "value": 111.0}])
    result = compare(after, before, {"time_to_first_token_p95": 0.10})
    assert result["regressed"].tolist() == [True] and result["change"].iloc[0] == pytest.approx(0.11)
    assert compare(before, after, {"time_to_first_token_p95": 0.10})["regressed"].tolist() == [False]


CONCURRENT_APPEND = """
import sys
from reports.cli import main
sys.exit(main(["--input", sys.argv[1], "--out", sys.argv[2], "--history", sys.argv[3]]))
"""


def append_concurrently(tmp_path: Path, inputs: Path, history: str, writers: int = 2) -> None:
    """Start `writers` report processes for the same run at once (a cron double-fire)."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_APPEND, str(inputs), str(tmp_path / f"out{i}"), history],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(writers)
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err


def test_concurrent_appends_to_a_directory_keep_both(tmp_path):
    inputs = run_inputs(tmp_path / "in", "nightly", "2025-01-01T00:00:00+00:00")
    append_concurrently(tmp_path, inputs, str(tmp_path / "history"))
    store = open_history(str(tmp_path / "history"))
    names = store.names()
    assert len(names) == 2 and all("_nightly_" in n for n in names)
    assert all(len(read_run(store, n)) > 0 for n in names)
    assert not [p for p in (tmp_path / "history").iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.integration
def test_s3_history_keeps_concurrent_runs_and_finds_the_baseline(tmp_path, moto_s3: MotoS3):
    """Real moto S3 server; boto3 reads AWS_ENDPOINT_URL like a pod with an S3-compatible store."""
    bucket = moto_s3.new_bucket("history")
    history = f"s3://{bucket}/megapod/history"
    inputs = run_inputs(tmp_path / "in", "nightly", "2025-01-01T00:00:00+00:00")
    append_concurrently(tmp_path, inputs, history)
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2 and all(k.startswith("megapod/history/20250101T000000Z_nightly_") for k in keys)
    worse = run_inputs(tmp_path / "worse", "next", "2025-01-02T00:00:00+00:00", scale=0.8)
    assert report(tmp_path, worse, history, "--fail-on-regression") == 1


def test_appends_never_overwrite_even_with_identical_run_identity(tmp_path):
    store = open_history(str(tmp_path / "history"))
    run = RunInfo(run_id="same", started_at="2025-01-01T00:00:00+00:00")
    frame = pd.DataFrame([{"run_id": "same", "metric": "request_count", "stat": "avg", "value": 1.0}])
    names = {append_run(store, run, frame) for _ in range(5)}
    assert len(names) == 5 and len(store.names()) == 5


# --- broken histories (issue 13.6) -------------------------------------------------------------------


@pytest.mark.parametrize("make", ["a file", "under a file", "unwritable"])
def test_a_history_that_cannot_be_used_is_one_line_and_nothing_is_written(tmp_path, capsys, make):
    (tmp_path / "file").write_text("x")
    history = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "h",
               "unwritable": Path("/proc/megapod-history")}[make]  # fmt: skip
    inputs = run_inputs(tmp_path / "a", "a", "2025-01-01T00:00:00+00:00")
    assert report(tmp_path, inputs, str(history)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"history {history}: cannot use it as a directory" in line
    assert not (tmp_path / "out-a").exists()


def test_an_unreachable_s3_history_is_one_line_within_seconds(tmp_path, capsys, monkeypatch):
    """Nothing listens on the endpoint; boto3 1.4x reads AWS_ENDPOINT_URL itself (botocore
    configprovider.py 'endpoint_url'), and the store's timeouts keep the refusal short."""
    import socket
    import time

    with socket.socket() as probe:  # a port that was free a moment ago: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    inputs = run_inputs(tmp_path / "a", "a", "2025-01-01T00:00:00+00:00")
    started = time.monotonic()
    assert report(tmp_path, inputs, "s3://megapod-history/runs") == 2
    assert time.monotonic() - started < 30
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("megapod report: history s3://megapod-history/runs: cannot list it (")
    assert not (tmp_path / "out-a").exists()


def test_one_corrupt_history_file_is_skipped_with_a_warning_naming_it(tmp_path, capsys):
    """Before: every later report exited 2 on the one unreadable parquet file."""
    history = tmp_path / "history"
    report(tmp_path, run_inputs(tmp_path / "a", "a", "2025-01-01T00:00:00+00:00"), str(history))
    report(tmp_path, run_inputs(tmp_path / "b", "b", "2025-01-02T00:00:00+00:00"), str(history))
    (corrupt,) = history.glob("*_b_*.parquet")
    corrupt.write_bytes(b"PAR1 truncated by a full disk")
    capsys.readouterr()
    later = run_inputs(tmp_path / "c", "c", "2025-01-03T00:00:00+00:00")
    assert report(tmp_path, later, str(history)) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "warning" in line and corrupt.name in line and "skipped" in line
    assert "against baseline 20250101T000000Z_a_" in (tmp_path / "out-c" / "report.html").read_text()
