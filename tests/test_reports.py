"""reports: parsing both tools' exports, the tidy table, the HTML/Markdown report, bad input.

Exports here are written in the exact shapes genai-perf 0.0.16 and aiperf 0.13 produce (their
JSON/CSV exporters: genai_perf/export_data/*_exporter.py, aiperf/exporters/metrics_*_exporter.py);
tests/test_benchmark.py feeds the real tools' own files through the same code.
"""

from __future__ import annotations

import csv
import http.server
import json
import re
import subprocess
import threading
from functools import partial
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd
import pytest

from reports.cli import main as report_main
from reports.exports import parse_csv_export, read_tool_export
from reports.sections import ReportContext, Section, plugin_sections
from reports.table import RESULT_COLUMNS
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SPEC = ROOT / "workflows" / "examples" / "llama-3.1-405b-p5.yaml"
# What Argo's artifact server sends with every artifact (server/artifacts/artifact_server.go).
ARGO_CSP = "sandbox; base-uri 'none'; default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'"
CHROMIUM = "/usr/bin/chromium"
REQUIRED_COLUMNS = [
    "run_id", "tool", "tool_version", "model", "backend", "tp", "pp", "nodes", "gpus",
    "concurrency", "isl", "osl", "metric", "stat", "value", "unit",
]  # fmt: skip

LATENCY = {"time_to_first_token": 1.0, "inter_token_latency": 0.05, "request_latency": 4.0}
STATS = ("avg", "min", "max", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "std")


def metric_stats(base: float, unit: str) -> dict:
    """A distribution around base, as both tools write it."""
    spread = {"avg": 1.0, "min": 0.6, "max": 1.8, "p1": 0.62, "p5": 0.65, "p10": 0.7, "p25": 0.85,
              "p50": 0.97, "p75": 1.1, "p90": 1.3, "p95": 1.45, "p99": 1.7, "std": 0.2}  # fmt: skip
    return {"unit": unit, **{stat: base * factor for stat, factor in spread.items()}}


def export_json(tool: str, concurrency: int, isl: int, osl: int, throughput: float) -> dict:
    """A summary export: latencies grow with concurrency, throughput as given."""
    data = {name: metric_stats(base * 1000 * (1 + concurrency / 8), "ms") for name, base in LATENCY.items()}
    data["output_token_throughput_per_user"] = metric_stats(throughput / concurrency, "tokens/sec/user")
    data["output_sequence_length"] = metric_stats(osl, "tokens")
    data["input_sequence_length"] = metric_stats(isl, "tokens")
    data["output_token_throughput"] = {"unit": "tokens/sec", "avg": throughput}
    data["request_throughput"] = {"unit": "requests/sec", "avg": throughput / osl}
    data["request_count"] = {"unit": "count" if tool == "genai-perf" else "requests", "avg": 100.0}
    if tool == "genai-perf":
        data["input_config"] = {
            "perf_analyzer": {"stimulus": {"concurrency": concurrency}},
            "input": {"synthetic_tokens": {"mean": isl, "stddev": 0}, "output_tokens": {"mean": osl}},
        }
    else:
        data = {"schema_version": "1.4", "aiperf_version": "0.13.0", **data, "is_complete": True}
        data["input_config"] = {
            "phases": [
                {"name": "warmup", "concurrency": 1},
                {"name": "profiling", "concurrency": concurrency},
            ],
            "datasets": [{"name": "main", "prompts": {"isl": {"mean": isl}, "osl": {"mean": osl}}}],
        }
    return data


def genai_perf_csv(data: dict) -> str:
    """genai-perf's CSV: a percentile table, a blank line, a Metric/Value table; numbers '1,052.64'."""
    rows = [["Metric", "avg", "min", "max", "p99", "p95", "p90", "p75", "p50", "p25", "p10", "p5", "p1"]]
    for name, entry in data.items():
        if isinstance(entry, dict) and "p50" in entry:
            title = f"{name.replace('_', ' ').title()} ({entry['unit']})"
            rows.append([title] + [f"{entry[s]:,.2f}" for s in rows[0][1:]])
    rows += [[], ["Metric", "Value"]]
    for name in ("output_token_throughput", "request_throughput", "request_count"):
        rows.append([f"{name.replace('_', ' ').title()} ({data[name]['unit']})", f"{data[name]['avg']:,.2f}"])
    return _csv(rows)


def _csv(rows: list[list[str]]) -> str:
    out = []
    writer = csv.writer(_Lines(out))
    writer.writerows(rows)
    return "".join(out)


class _Lines:
    def __init__(self, out: list[str]):
        self.write = out.append


def write_point(root: Path, tool: str, concurrency: int, isl: int, osl: int, throughput: float,
                *, point_json: bool = True) -> Path:  # fmt: skip
    """A sweep point directory as steps.benchmark leaves it (genai-perf nests its artifact dir)."""
    point_dir = root / f"isl{isl}-osl{osl}-c{concurrency}"
    data = export_json(tool, concurrency, isl, osl, throughput)
    if tool == "genai-perf":
        export_dir = point_dir / f"ensemble-triton-tensorrtllm-concurrency{concurrency}"
        export_dir.mkdir(parents=True)
        (export_dir / "profile_export_genai_perf.json").write_text(json.dumps(data, indent=2))
        (export_dir / "profile_export_genai_perf.csv").write_text(genai_perf_csv(data))
    else:
        point_dir.mkdir(parents=True)
        (point_dir / "profile_export_aiperf.json").write_text(json.dumps(data, indent=2))
        warmup = point_dir / "phases" / "warmup"
        warmup.mkdir(parents=True)  # aiperf's per-phase copy: must never be reported
        (warmup / "profile_export_aiperf.json").write_text(json.dumps(export_json(tool, 1, isl, osl, 1.0)))
    if point_json:
        meta = {"tool": tool, "tool_version": "0.0.16" if tool == "genai-perf" else "0.13.0",
                "concurrency": concurrency, "isl": isl, "osl": osl, "status": "ok",
                "started_at": "2025-01-01T00:00:00+00:00"}  # fmt: skip
        (point_dir / "point.json").write_text(json.dumps(meta))
    return point_dir


SWEEP = ((1, 128, 128), (4, 128, 128), (16, 128, 128), (4, 2048, 128))


def write_sweep(root: Path, tool: str, throughput_scale: float = 1.0, points: tuple = SWEEP) -> Path:
    """A whole sweep; throughput rises with concurrency (scaled, to plant regressions)."""
    for concurrency, isl, osl in points:
        write_point(root, tool, concurrency, isl, osl, throughput_scale * 100.0 * concurrency**0.7)
    return root


def reference_args(tmp_path: Path, inputs: Path) -> list[str]:
    """Report on the reference spec, with history kept in tmp_path (not the spec's volume path)."""
    return ["--input", str(inputs), "--out", str(tmp_path / "out"), "--spec", str(REFERENCE_SPEC),
            "--history", str(tmp_path / "history")]  # fmt: skip


def read_results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


# --- parsing ---------------------------------------------------------------------------------------


def test_genai_perf_csv_two_tables_with_quoted_thousands(tmp_path):
    data = export_json("genai-perf", 16, 128, 128, 2104.5)
    path = tmp_path / "profile_export_genai_perf.csv"
    path.write_text(genai_perf_csv(data))
    assert '"2,104.50"' in path.read_text()  # the quoting this test is about
    metrics = parse_csv_export(path, "genai-perf")
    assert metrics["output_token_throughput"].stats["avg"] == pytest.approx(2104.5)
    assert metrics["time_to_first_token"].unit == "ms"
    assert metrics["time_to_first_token"].stats["p95"] == pytest.approx(
        data["time_to_first_token"]["p95"], abs=0.01
    )


def test_csv_cross_check_flags_a_disagreeing_csv(tmp_path):
    data = export_json("genai-perf", 4, 128, 128, 500.0)
    (tmp_path / "profile_export_genai_perf.json").write_text(json.dumps(data))
    data["request_throughput"]["avg"] = 9.99
    (tmp_path / "profile_export_genai_perf.csv").write_text(genai_perf_csv(data))
    export = read_tool_export(tmp_path / "profile_export_genai_perf.json",
                              tmp_path / "profile_export_genai_perf.csv", "genai-perf")  # fmt: skip
    assert export.metrics["request_throughput"].stats["avg"] == pytest.approx(500.0 / 128)  # JSON wins
    assert (
        len(export.warnings) == 1
        and "profile_export_genai_perf.csv: request_throughput avg" in export.warnings[0]
    )


def test_truncated_json_falls_back_to_the_csv_with_a_warning(tmp_path):
    data = export_json("genai-perf", 4, 128, 128, 500.0)
    json_path = tmp_path / "profile_export_genai_perf.json"
    json_path.write_text(json.dumps(data)[:300])
    (tmp_path / "profile_export_genai_perf.csv").write_text(genai_perf_csv(data))
    export = read_tool_export(json_path, tmp_path / "profile_export_genai_perf.csv", "genai-perf")
    assert export.metrics["output_token_throughput"].stats["avg"] == pytest.approx(500.0)
    assert str(json_path) in export.warnings[0] and "truncated" in export.warnings[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "empty file"),
        ('{"request_throughput": {"unit": "requests/sec", "avg": 3', "not valid JSON"),
        ('{"results": [1, 2, 3], "version": "9"}', "not a aiperf summary export"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_unreadable_export_names_the_file_and_other_points_still_report(tmp_path, content, expected, capsys):
    inputs = write_sweep(tmp_path / "in", "aiperf", points=((1, 128, 128), (4, 128, 128)))
    broken = inputs / "isl128-osl128-c4" / "profile_export_aiperf.json"
    broken.write_text(content)
    code = report_main(["--input", str(inputs), "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert str(broken) in err and expected in err
    results = read_results(tmp_path / "out")
    assert set(results["concurrency"]) == {1}  # the good point is still reported
    html = (tmp_path / "out" / "report.html").read_text()
    assert expected in html and "unreadable" in html


# --- the tidy table --------------------------------------------------------------------------------


def test_results_table_columns_and_per_gpu_throughput_from_the_spec(tmp_path):
    """The reference spec (TP8 x PP2, 16 GPUs): tidy columns, canonical names, per-GPU derived."""
    inputs = write_sweep(tmp_path / "in", "genai-perf")
    assert report_main(reference_args(tmp_path, inputs)) == 0
    results = read_results(tmp_path / "out")
    assert results.columns.tolist()[: len(RESULT_COLUMNS)] == RESULT_COLUMNS
    assert set(REQUIRED_COLUMNS) <= set(results.columns)
    spec = load_spec(REFERENCE_SPEC)
    assert set(results["gpus"]) == {spec.world_size} and set(results["nodes"]) == {spec.group_size}
    assert set(results["tool"]) == {"genai-perf"} and set(results["tool_version"]) == {"0.0.16"}
    assert results["model"].iloc[0] == "meta-llama/Meta-Llama-3.1-405B"
    for metric in ("time_to_first_token", "inter_token_latency", "request_latency", "output_token_throughput",
                   "output_token_throughput_per_user", "request_throughput", "output_sequence_length",
                   "input_sequence_length", "request_count"):  # fmt: skip
        assert metric in set(results["metric"]), metric
    assert {"avg", "min", "max", "p50", "p90", "p95", "p99"} <= set(results["stat"])
    point = results[(results["concurrency"] == 16) & (results["stat"] == "avg")].set_index("metric")["value"]
    assert point["output_token_throughput_per_gpu"] == pytest.approx(point["output_token_throughput"] / 16)
    csv_results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(csv_results) == len(results)
    # The model matches the reference figures: compared, and marked not measured where no point exists.
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Reference figures" in html and "trtllm-bench offline, H100" in html and "not measured" in html


def test_points_without_point_json_take_load_and_lengths_from_input_config(tmp_path):
    inputs = tmp_path / "in"
    write_point(inputs, "aiperf", 8, 256, 64, 800.0, point_json=False)
    write_point(inputs, "genai-perf", 2, 512, 32, 300.0, point_json=False)
    assert report_main(["--input", str(inputs), "--out", str(tmp_path / "out")]) == 0
    results = read_results(tmp_path / "out")
    loads = set(results[["tool", "concurrency", "isl", "osl"]].itertuples(index=False, name=None))
    assert loads == {("aiperf", 8, 256, 64), ("genai-perf", 2, 512, 32)}
    throughput = results[(results["metric"] == "output_token_throughput") & (results["tool"] == "aiperf")]
    assert throughput["value"].tolist() == [800.0]  # not the warm-up phase's copy


def sweep_with_failed_point(tmp_path: Path, error: str) -> Path:
    """One good aiperf point and one at concurrency 64 whose tool failed with `error`."""
    inputs = write_sweep(tmp_path / "in", "aiperf", points=((1, 128, 128),))
    failed = inputs / "isl128-osl128-c64"
    failed.mkdir()
    (failed / "point.json").write_text(json.dumps({
        "tool": "aiperf", "concurrency": 64, "isl": 128, "osl": 128, "status": "failed", "error": error,
    }))  # fmt: skip
    return inputs


def test_failed_point_is_listed_with_the_tools_error(tmp_path):
    inputs = sweep_with_failed_point(tmp_path, "timed out after 1800s (point_timeout_s); killed")
    assert report_main(["--input", str(inputs), "--out", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "isl128-osl128-c64: failed: timed out after 1800s" in summary
    assert "| 64 | 128 | 128 | failed |" in summary


@pytest.mark.parametrize(
    ("mode", "sentence"),
    [("processes", '"pods" were plain local processes'), ("netns", "in its own network namespace"),
     ("kubernetes", None)],
)  # fmt: skip
def test_serving_mode_is_in_the_configuration(tmp_path, mode, sentence):
    """--serving-mode (deploy's isolation): shown in the configuration; a local run without network
    isolation says plainly that the pods were local processes."""
    inputs = write_sweep(tmp_path / "in", "aiperf", points=((1, 128, 128),))
    out = tmp_path / "out"
    assert report_main(["--input", str(inputs), "--out", str(out), "--serving-mode", mode]) == 0
    summary, html = (out / "summary.md").read_text(), (out / "report.html").read_text()
    assert f"- serving mode: {mode}" in summary
    if sentence is None:
        assert "Local run" not in summary and "Local run" not in html
    else:
        assert sentence in summary and sentence.replace('"', "&quot;") in html


@pytest.mark.parametrize(
    ("make_input", "expected"),
    [
        (lambda root: root / "missing", "no such directory"),
        (lambda root: root, "no benchmark results found"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, make_input, expected):
    out = tmp_path / "out"
    assert report_main(["--input", str(make_input(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not out.exists()


def test_contributed_sections_render_and_their_input_errors_are_contained(tmp_path, monkeypatch):
    """The hook reports/autoscaling.py plugs into (see /work/notes/report-autoscale-interface.md)."""
    import sys
    import types

    from reports.errors import InputError

    good = types.ModuleType("megapod_test_section_good")
    good.build_section = lambda ctx: Section("extra", "Extra", f"<p>{ctx.autoscale_dir.name}</p>", "extra md")
    bad = types.ModuleType("megapod_test_section_bad")

    def broken(ctx):
        raise InputError(ctx.autoscale_dir / "milestones.json", "not valid JSON")

    bad.build_section = broken
    monkeypatch.setitem(sys.modules, good.__name__, good)
    monkeypatch.setitem(sys.modules, bad.__name__, bad)
    ctx = ReportContext(tmp_path, tmp_path, tmp_path / "autoscale", None, "r1", pd.DataFrame())
    sections = plugin_sections(ctx, (good.__name__, bad.__name__, "megapod_no_such_section"))
    assert [s.title for s in sections] == ["Extra", "Megapod_test_section_bad"]
    assert sections[0].html == "<p>autoscale</p>"
    assert "milestones.json: not valid JSON" in sections[1].problems[0]


# --- the HTML report in a real browser -------------------------------------------------------------


class _ArgoLikeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with the Content-Security-Policy Argo's artifact server uses."""

    def end_headers(self):
        self.send_header("Content-Security-Policy", ARGO_CSP)
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def argo_like_server(tmp_path):
    """A static server on 127.0.0.1 with Argo's artifact CSP, serving tmp_path/out."""
    (tmp_path / "out").mkdir(exist_ok=True)
    handler = partial(_ArgoLikeHandler, directory=str(tmp_path / "out"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.integration
def test_report_renders_in_headless_chromium_under_argos_csp(tmp_path, argo_like_server):
    """No script, every chart inline (so Argo's img-src 'self' cannot block it), renders, screenshot."""
    inputs = write_sweep(tmp_path / "in", "genai-perf")
    assert report_main(reference_args(tmp_path, inputs)) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in html.lower() and "javascript:" not in html.lower()
    assert not re.search(r"""(src|href)=["'](?!#)""", html), "no external or data: URL may be referenced"
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    assert len(svgs) == 4  # Pareto, TTFT, ITL, throughput per GPU
    for svg in svgs:
        ElementTree.fromstring(svg)  # each chart is well-formed SVG

    dom = chromium(tmp_path, f"{argo_like_server}/report.html", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 4 and "Throughput vs per-user speed" in dom.stdout
    assert "Content Security Policy" not in dom.stderr, "the page must not trip Argo's CSP"

    shot = tmp_path / "out" / "report.png"
    run = chromium(tmp_path, f"{argo_like_server}/report.html", f"--screenshot={shot}",
                   "--window-size=1400,2600", "--hide-scrollbars")  # fmt: skip
    assert run.returncode == 0 and shot.stat().st_size > 50_000, run.stderr[-2000:]


# --- hostile and broken input (issue 13.1, 13.6): one line per problem, never a traceback ----------


def report_err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run the report CLI in-process: (exit code, stderr lines)."""
    code = report_main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_run_where_every_point_failed_is_red_and_names_the_stage(tmp_path, capsys):
    """Issue 13.1: a resumed run against a torn-down deployment fails every point; the report is
    still written (it lists the failures) but the run must not be green."""
    inputs = tmp_path / "in"
    for concurrency in (1, 4):
        point = inputs / f"isl128-osl128-c{concurrency}"
        point.mkdir(parents=True)
        (point / "point.json").write_text(json.dumps({
            "tool": "aiperf", "concurrency": concurrency, "isl": 128, "osl": 128, "status": "failed",
            "error": "connection refused: 127.0.0.1:8000",
        }))  # fmt: skip
    code, err = report_err(["--input", str(inputs), "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    (line,) = [row for row in err if "no benchmark point succeeded" in row]
    assert "2 failed" in line and "benchmark stage measured nothing" in line and "connection refused" in line
    assert "isl128-osl128-c1: failed" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.parametrize("where", ["point.json", "input_config"])
@pytest.mark.parametrize("raw", ["NaN", "Infinity", "1e30", "1" + "0" * 30, "-3", "true"])
def test_nonsense_load_values_make_that_point_unreadable(tmp_path, capsys, where, raw):
    """NaN / 1e30 / 10**30 / -3 / true as a concurrency: that point is unreadable (named), the
    others still report (Python's json reads NaN and Infinity: Lib/json/decoder.py, 3.11)."""
    inputs = write_sweep(tmp_path / "in", "aiperf", points=((1, 128, 128), (4, 128, 128)))
    bad = inputs / "isl128-osl128-c4"
    if where == "point.json":
        meta = json.loads((bad / "point.json").read_text())
        (bad / "point.json").write_text(json.dumps({**meta, "concurrency": "@"}).replace('"@"', raw))
    else:
        (bad / "point.json").unlink()
        export = bad / "profile_export_aiperf.json"
        data = json.loads(export.read_text())
        data["input_config"]["phases"][1]["concurrency"] = "@"
        export.write_text(json.dumps(data).replace('"@"', raw))
    code, err = report_err(["--input", str(inputs), "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    (line,) = err
    assert "unreadable input" in line and str(bad) in line and "is not a whole number" in line
    assert set(read_results(tmp_path / "out")["concurrency"]) == {1}


@pytest.mark.parametrize("started_at", ["yesterday", 12, "2025-13-45T99:00:00"])
def test_odd_started_at_is_a_warning_and_the_run_still_goes_to_history(tmp_path, capsys, started_at):
    inputs = write_sweep(tmp_path / "in", "aiperf", points=((1, 128, 128),))
    (inputs / "run.json").write_text(json.dumps({"run_id": "r1", "started_at": started_at}))
    args = ["--input", str(inputs), "--out", str(tmp_path / "out"), "--history", str(tmp_path / "h")]
    code, err = report_err(args, capsys)
    assert code == 0
    (line,) = err
    assert "run.json: started_at" in line and "not an ISO 8601 time" in line
    assert len(list((tmp_path / "h").glob("*_r1_*.parquet"))) == 1


@pytest.mark.parametrize(("value", "drawn"), [(1e308, False), (float("inf"), True), (float("nan"), True)])
def test_absurd_measured_values_are_tabled_and_the_chart_is_a_note(tmp_path, capsys, value, drawn):
    """1e308 leaves matplotlib 3.x's MaxNLocator no finite tick range (lib/matplotlib/ticker.py
    _raw_ticks: "arange: cannot compute length"); the chart becomes a note, the table keeps the value."""
    inputs = write_sweep(tmp_path / "in", "aiperf", points=((1, 128, 128), (4, 128, 128)))
    for export in inputs.glob("*/profile_export_aiperf.json"):
        data = json.loads(export.read_text())
        data["output_token_throughput"]["avg"] = value
        export.write_text(json.dumps(data))
    code, _ = report_err(["--input", str(inputs), "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert ("not drawn, values out of range" in html) != drawn
    results = read_results(tmp_path / "out")
    throughput = results[(results["metric"] == "output_token_throughput") & (results["stat"] == "avg")]
    # A finite value is kept as measured; a non-finite one is not a measurement (dropped at read).
    assert throughput["value"].tolist() == ([value, value] if value == 1e308 else [])
    assert (results["metric"] == "request_latency").any()


def test_out_that_is_a_file_is_bad_input(tmp_path, capsys):
    inputs = write_sweep(tmp_path / "in", "aiperf", points=((1, 128, 128),))
    (tmp_path / "out").write_text("keep me")
    code, err = report_err(["--input", str(inputs), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and "is not a directory" in err[0]
    assert (tmp_path / "out").read_text() == "keep me"


def test_markup_in_tool_errors_is_not_copied_into_summary_md(tmp_path):
    """Markdown renderers pass raw HTML through (CommonMark 0.31 §6.6 'Raw HTML'); tool errors are text."""
    inputs = sweep_with_failed_point(tmp_path, "<script>alert(1)</script><img src=x onerror=alert(2)>")
    assert report_main(["--input", str(inputs), "--out", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "<script" not in summary and "<img" not in summary
    assert "&lt;script>alert(1)&lt;/script>" in summary
