"""steps.benchmark: the sweep plan and command lines from the spec, bounded failing points, and
real runs: aiperf 0.13 against the real tritonserver (with a real Prometheus scraping it), and
genai-perf 0.0.16 through the perf_analyzer TEST DOUBLE (tests/doubles/perf_analyzer); both runs'
outputs then go through `megapod report`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from steps.benchmark.__main__ import main as benchmark_main
from steps.benchmark.sweep import ToolRun, run_sweep, run_tool
from steps.benchmark.tools import WARMUPS, Target, aiperf_command, genai_perf_command, plan_sweep
from steps.contract import ENSEMBLE, LLMAPI
from tests.support.prometheus import ScrapeTarget, start_prometheus
from workflows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DOUBLES = ROOT / "tests" / "doubles"
MEGAPOD = Path(sys.executable).with_name("megapod")


def write_spec(tmp_path: Path, tool: str, **benchmark) -> Path:
    """A tiny CPU deployment's spec with a small, bounded sweep."""
    spec = {
        "name": "tiny",
        "model": {"source": "/models/tiny-llama", "parameters_billion": 0.0001},
        "backend": "cpu-python",
        "cluster": {"gpus_per_node": 1, "gpu_memory_gib": 1},
        "benchmark": {"tool": tool, "concurrency": [1, 2], "sequences": [{"isl": 16, "osl": 4}],
                      "request_count": 4, "warmup_requests": 1, "point_timeout_s": 240, **benchmark},
    }  # fmt: skip
    path = tmp_path / f"spec-{tool}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --- plan and command lines ------------------------------------------------------------------------


def test_sweep_plan_and_both_tools_command_lines_come_from_the_spec(tmp_path):
    spec = load_spec(write_spec(tmp_path, "aiperf", concurrency=[8, 1], request_count=37, warmup_requests=3,
                                sequences=[{"isl": 128, "osl": 64}, {"isl": 2048, "osl": 128}]))  # fmt: skip
    plan = plan_sweep(spec.benchmark)
    assert [(p.isl, p.osl, p.concurrency) for p in plan] == [
        (128, 64, 1),
        (128, 64, 8),
        (2048, 128, 1),
        (2048, 128, 8),
    ]
    target = Target("10.0.0.1:8000", "10.0.0.1:8001")
    point = plan[1]
    aiperf = aiperf_command(spec.benchmark, point, target, tmp_path / "tok", tmp_path)
    flags = dict(zip(aiperf[2::2], aiperf[3::2], strict=False))
    assert aiperf[:2] == ["aiperf", "profile"] and "--streaming" in aiperf
    assert (
        flags["--url"] == "10.0.0.1:8000"
        and flags["--custom-endpoint"] == "/v2/models/ensemble/generate_stream"
    )
    assert (flags["--concurrency"], flags["--isl"], flags["--osl"]) == ("8", "128", "64")
    assert (
        aiperf[aiperf.index("--request-count") + 1] == "37"
        and aiperf[aiperf.index("--warmup-request-count") + 1] == "3"
    )
    template = json.loads(
        (tmp_path / "payload_template.json").read_text().replace("{{ text|tojson }}", '"hi"')
        .replace("{{ max_tokens }}", "64").replace("{{ stream|tojson }}", "true")
    )  # fmt: skip
    assert template == {"text_input": "hi", "max_tokens": 64, "min_length": 64, "stream": True,
                        "exclude_input_in_output": True}  # fmt: skip
    genai = genai_perf_command(spec.benchmark, point, target, tmp_path / "tok", tmp_path)
    assert genai[genai.index("-u") + 1] == "10.0.0.1:8001"
    assert genai[genai.index("--endpoint-type") + 1 : genai.index("--endpoint-type") + 4] == [
        "kserve",
        "--backend",
        "tensorrtllm",
    ]
    assert genai[genai.index("--request-count") + 1] == "37" and "--service-kind" not in genai
    # The warm-up is a run of its own (perf_analyzer r24.08 has no --warmup-request-count).
    warmup = WARMUPS["genai-perf"](spec.benchmark, point, target, tmp_path / "tok", tmp_path / "w")
    assert "--warmup-request-count" not in genai + warmup
    assert warmup[warmup.index("--request-count") + 1] == "3"
    assert warmup[warmup.index("-u") + 1] == "10.0.0.1:8001"
    assert WARMUPS["aiperf"](spec.benchmark, point, target, tmp_path / "tok", tmp_path) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--url", "no-port"], "--url 'no-port': expected HOST:PORT"),
        (
            ["--url", "127.0.0.1:8000", "--tokenizer", "/nonexistent"],
            "--tokenizer /nonexistent: not a directory",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, expected):
    spec = write_spec(tmp_path, "aiperf")
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    base = {
        "--spec": str(spec),
        "--url": "127.0.0.1:8000",
        "--tokenizer": str(tokenizer),
        "--out": str(tmp_path / "o"),
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert (
        benchmark_main([x for kv in base.items() for x in kv] + ["--outputs", str(tmp_path / "outputs")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "o").exists()


def test_failed_and_timed_out_points_are_recorded_and_the_sweep_goes_on(tmp_path):
    """The tool runner is the real one; the commands it is given fail in the three ways a client can."""
    spec = load_spec(write_spec(tmp_path, "aiperf", concurrency=[1, 2, 4], point_timeout_s=1))
    commands = iter([
        ["sh", "-c", "echo 'Connection refused: 127.0.0.1:8000' >&2; exit 3"],
        ["sleep", "30"],
        ["true"],
    ])  # fmt: skip

    def runner(command, **kwargs) -> ToolRun:
        return run_tool(next(commands), **kwargs)

    out = tmp_path / "bench"
    result = run_sweep(
        spec, Target("127.0.0.1:1", "127.0.0.1:2"), tmp_path, out, runner=runner, log=lambda _: None
    )
    assert result.failed == 3
    metas = [json.loads((out / p["point"] / "point.json").read_text()) for p in result.points]
    assert [m["concurrency"] for m in metas] == [1, 2, 4]
    assert metas[0]["exit_code"] == 3 and "Connection refused: 127.0.0.1:8000" in metas[0]["error"]
    assert (
        metas[1]["exit_code"] is None
        and "timed out after 1s" in metas[1]["error"]
        and metas[1]["duration_s"] < 15
    )
    assert "exited 0 but wrote no profile_export_*.json" in metas[2]["error"]
    run = json.loads((out / "run.json").read_text())
    assert [p["status"] for p in run["points"]] == ["failed"] * 3 and run["deployment"]["gpus"] is None


# --- real clients against the real server ----------------------------------------------------------


def benchmark_cli(
    spec: Path, server, tokenizer: Path, out: Path, *extra: str, env: dict | None = None
) -> None:
    outputs = out.parent / f"{out.name}-outputs"
    command = [sys.executable, "-m", "steps.benchmark", "--spec", str(spec), "--url", server.http_url,
               "--grpc-url", server.grpc_url, "--tokenizer", str(tokenizer), "--out", str(out),
               "--outputs", str(outputs), *extra]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (outputs / "failed_points").read_text() == "0", done.stdout + done.stderr


def megapod_report(inputs: Path, out: Path) -> pd.DataFrame:
    done = subprocess.run([str(MEGAPOD), "report", "--input", str(inputs), "--out", str(out),
                           "--history", str(out.parent / "history")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unreadable" not in done.stderr and (out / "report.html").is_file()
    return pd.read_parquet(out / "results.parquet")


@pytest.mark.integration
def test_aiperf_sweep_against_real_triton_with_prometheus_then_megapod_report(
    tmp_path, triton_server, tiny_model
):
    prometheus = start_prometheus(
        tmp_path / "prometheus", [ScrapeTarget(triton_server.metrics_url.split("/")[2])]
    )
    try:
        prometheus.wait_for("nv_inference_request_success")
        out = tmp_path / "bench"
        benchmark_cli(write_spec(tmp_path, "aiperf"), triton_server, tiny_model, out,
                      "--prometheus", prometheus.url, "--prometheus-settle", "3")  # fmt: skip
    finally:
        prometheus.stop()

    for name in ("isl16-osl4-c1", "isl16-osl4-c2"):
        meta = json.loads((out / name / "point.json").read_text())
        assert meta["status"] == "ok" and meta["tool"] == "aiperf" and meta["tool_version"] == "0.13.0"
        assert (out / name / "profile_export_aiperf.json").is_file() and (
            out / name / "profile_export_aiperf.csv"
        ).is_file()
        server = json.loads((out / name / "prometheus.json").read_text())
        assert server["errors"] == []
        metrics = server["metrics"]
        assert metrics["requests_succeeded"]["value"] >= 4  # at least this point's requests in its window
        assert metrics["queue_time"]["value"] is not None and metrics["cpu_utilization"]["value"] is not None
        assert metrics["gpu_utilization"]["value"] is None  # no DCGM on a CPU server: recorded as null

    results = megapod_report(out, tmp_path / "report")
    measured = results[(results["metric"] == "request_count") & (results["stat"] == "avg")]
    assert sorted(measured["concurrency"]) == [1, 2] and set(measured["value"]) == {4.0}
    assert set(results["tool"]) == {"aiperf"} and set(results["isl"]) == {16} and set(results["osl"]) == {4}
    ttft = results[(results["metric"] == "time_to_first_token") & (results["stat"] == "p95")]["value"]
    assert len(ttft) == 2 and (ttft > 0).all()
    assert {"server.queue_time", "server.requests_succeeded"} <= set(results["metric"])
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Server metrics per point" in html and "<script" not in html


@pytest.mark.integration
def test_genai_perf_with_perf_analyzer_test_double_against_real_triton_then_megapod_report(
    tmp_path, triton_server, tiny_model
):
    """genai-perf 0.0.16 for real; perf_analyzer is the TEST DOUBLE in tests/doubles (gRPC streaming)."""
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(DOUBLES), str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    out = tmp_path / "bench"
    spec = write_spec(tmp_path, "genai-perf", concurrency=[2])
    benchmark_cli(spec, triton_server, tiny_model, out, env=env)

    point = out / "isl16-osl4-c2"
    meta = json.loads((point / "point.json").read_text())
    assert (
        meta["tool"] == "genai-perf"
        and meta["tool_version"] == "0.0.16"
        and meta["url"] == triton_server.grpc_url
    )
    # The warm-up ran as its own genai-perf run (logged), its artifacts gone; one export remains.
    warmup_log = (point / "warmup.log").read_text()
    assert "/warmup-" in warmup_log and "profile_export_genai_perf.json" in warmup_log
    assert not list(point.glob("warmup-*")) and len(list(point.rglob("profile_export.json"))) == 1
    export = json.loads(next(point.rglob("profile_export.json")).read_text())  # the double's output
    requests = export["experiments"][0]["requests"]
    assert (
        export["experiments"][0]["experiment"] == {"mode": "concurrency", "value": 2} and len(requests) == 4
    )
    assert all(r["response_timestamps"] and r["request_inputs"]["max_tokens"] == 4 for r in requests)

    results = megapod_report(out, tmp_path / "report")
    stats = results[results["stat"] == "avg"].set_index("metric")["value"]
    assert stats["request_count"] == 4 and stats["input_sequence_length"] == pytest.approx(16, abs=2)
    assert stats["output_token_throughput"] > 0 and stats["inter_token_latency"] > 0
    assert "but the JSON says" not in (tmp_path / "report" / "summary.md").read_text()  # CSV agrees
    assert 'id="problems"' not in (tmp_path / "report" / "report.html").read_text()


# --- the pinned perf_analyzer and the per-backend contract ------------------------------------------

PIPELINE_DOCKERFILE = ROOT / "images" / "pipeline" / "Dockerfile"


def perf_analyzer_double(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOUBLES / "perf_analyzer"), *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_perf_analyzer_double_is_the_pipeline_images_release_and_refuses_what_it_lacks():
    """The pipeline image's SDK tag is the perf_analyzer release the double's flag table comes from
    (perf_analyzer r24.08 src/command_line_parser.cc long_options[]); an option outside it, such as
    --warmup-request-count (first in r24.09), gets getopt's "unrecognized option" and exit 99
    (GENERIC_ERROR, src/constants.h), which is what genai-perf 0.0.16 met on the 24.08 SDK."""
    sdk = re.search(r"nvcr\.io/nvidia/tritonserver:(\d+\.\d+)-py3-sdk\b", PIPELINE_DOCKERFILE.read_text())
    double = (DOUBLES / "perf_analyzer").read_text()
    assert sdk and f'RELEASE = "r{sdk[1]}"' in double
    done = perf_analyzer_double("-m", "ensemble", "--async", "--warmup-request-count", "4")
    assert done.returncode == 99 and "unrecognized option '--warmup-request-count'" in done.stderr
    lacking = perf_analyzer_double("-m", "ensemble", "--collect-metrics")  # in r24.08, not implemented
    assert lacking.returncode == 1 and "--collect-metrics not implemented" in lacking.stderr


@pytest.mark.integration
def test_perf_analyzer_double_refuses_input_data_the_model_does_not_declare(tmp_path, triton_server):
    """r24.08 src/data_loader.cc ReadTensorData: a data entry naming a tensor the model lacks fails."""
    data = tmp_path / "inputs.json"
    data.write_text(json.dumps({"data": [{"text_input": ["hi"], "max_tokens": [2], "no_such_input": [1]}]}))
    done = perf_analyzer_double(
        "-m", "ensemble", "--async", "-i", "grpc", "--streaming", "-u", triton_server.grpc_url,
        "--concurrency-range", "1", "--service-kind", "triton", "--request-count", "1",
        "--input-data", str(data), "--profile-export-file", str(tmp_path / "export.json"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "The input or output 'no_such_input' is not found in the model configuration" in done.stderr


def test_genai_perf_is_refused_for_the_llmapi_contract_with_one_line(tmp_path, capsys):
    """genai-perf 0.0.16's kserve payload (genai_perf/inputs/converters/tensorrtllm_converter.py:
    max_tokens, exclude_input_in_output, stream, min_length) names inputs the llmapi model of
    tensorrtllm_backend v0.19.0 lacks; perf_analyzer would refuse them, so the spec is refused
    (by `megapod validate`, and by the step, which loads it)."""
    data = yaml.safe_load(write_spec(tmp_path, "genai-perf").read_text())
    data |= {"backend": "trtllm-pytorch", "serving": {"autoscaling": {"target": 2}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    code = benchmark_main([
        "--spec", str(tmp_path / "spec.yaml"), "--url", "127.0.0.1:8000", "--tokenizer", str(tokenizer),
        "--out", str(tmp_path / "o"), "--outputs", str(tmp_path / "out"),
    ])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "the llmapi model tensorrt_llm of backend trtllm-pytorch does not declare" in err[0]
    assert "use benchmark.tool aiperf" in err[0]


def test_aiperf_payload_is_the_backends_contract(tmp_path):
    """The aiperf template renders to the contract's request (steps.contract), per backend."""
    import jinja2

    spec = load_spec(write_spec(tmp_path, "aiperf"))
    point = plan_sweep(spec.benchmark)[0]
    bodies = {}
    for contract in (ENSEMBLE, LLMAPI):
        out = tmp_path / contract.model
        out.mkdir()
        command = aiperf_command(spec.benchmark, point, Target("h:1", "h:2", contract), tmp_path, out)
        assert f"/v2/models/{contract.model}/generate_stream" in command
        rendered = jinja2.Template((out / "payload_template.json").read_text()).render(
            text="hi", max_tokens=point.osl, stream=True
        )
        bodies[contract.model] = json.loads(rendered)
        assert bodies[contract.model] == contract.request("hi", point.osl, stream=True)
    assert bodies["tensorrt_llm"] == {"text_input": "hi", "sampling_param_max_tokens": 4, "streaming": True,
                                      "sampling_param_exclude_input_from_output": True}  # fmt: skip
