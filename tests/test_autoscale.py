"""The autoscale-test stage: load generator and Prometheus sampler against real servers
(tritonserver, Prometheus with the chart's recording rules), and the Kubernetes side against the
API stand-in in tests/support/kube.py (no kube-apiserver can run here) driven by a scripted scenario.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from steps.autoscale.__main__ import kube_client, run
from steps.autoscale.__main__ import main as autoscale_main
from steps.autoscale.loadgen import LoadGenerator, LoadPlan, prompt, request_body, run_load
from steps.autoscale.samplers import KubeWatcher
from steps.contract import ENSEMBLE, LLMAPI
from tests.support import kube
from tests.support.prometheus import ScrapeTarget, chart_rule_groups, start_prometheus
from workflows.chart_values import scaling_series
from workflows.spec import LoadStage, load_spec, parse_spec

RELEASE = "tiny"
LWS = "tiny-triton-lws"  # the chart's fullname for release "tiny"


def spec_data(stages: list[dict], **loadtest) -> dict:
    return {
        "name": RELEASE,
        "model": {"source": "/models/tiny", "parameters_billion": 0.001},
        "backend": "cpu-python",
        "cluster": {"gpus_per_node": 1, "instance_type": "cpu.local"},
        "serving": {"replicas": {"min": 1, "max": 2},
                    "autoscaling": {"metric": "batch_slot_occupancy", "target": 0.8}},
        "loadtest": {"stages": stages, "isl": 8, "osl": 8, "sample_interval_s": 1, **loadtest},
    }


def stage(name: str, concurrency: int, duration_s: int) -> LoadStage:
    return LoadStage(name=name, concurrency=concurrency, duration_s=duration_s)


# --- load generator ------------------------------------------------------------------------------

@pytest.mark.integration
def test_loadgen_follows_stages_and_counts_tokens(triton_server) -> None:
    """Against real tritonserver: every finished stream has exactly osl tokens and a TTFT; no more
    requests in flight than the stage's concurrency; a zero-concurrency stage sends nothing."""
    plan = LoadPlan((stage("ramp", 2, 2), stage("hold", 4, 2), stage("drop", 0, 1)),
                    isl=8, osl=8, max_requests=10_000)
    result = run_load(triton_server.http_url, plan)
    frame = pd.DataFrame(result.rows())
    done = frame[frame["error"].isna()]
    assert len(done) > 10
    assert (done["tokens"] == 8).all()
    assert (done["ttft_s"] > 0).all() and (done["ttft_s"] <= done["end_s"] - done["start_s"]).all()
    assert set(frame["stage"]) == {"ramp", "hold"}
    assert frame[frame["stage"] == "ramp"]["worker"].max() == 1
    assert frame[frame["stage"] == "hold"]["worker"].max() == 3
    for at in done["start_s"]:  # in flight at each start: never above that stage's concurrency
        inflight = ((frame["start_s"] <= at) & (frame["end_s"] > at)).sum()
        assert inflight <= (2 if at < 2 else 4)
    assert (frame["start_s"] < 4.0).all()
    assert set(frame["error"].dropna()) <= {"deadline"}


@pytest.mark.integration
def test_loadgen_counts_server_errors_and_slow_streams(triton_server) -> None:
    """A request the server rejects is an error with 0 tokens; a stream slower than the request
    bound is a "timeout" that keeps the tokens it did receive; max_requests bounds the run."""
    plan = LoadPlan((stage("hold", 2, 3),), isl=8, osl=8, max_requests=6)
    generator = LoadGenerator(triton_server.http_url, plan)
    generator.endpoint = generator.endpoint.replace("/ensemble/", "/no-such-model/")
    result = asyncio_run(generator)
    assert len(result.records) == 6
    assert all(r.error.startswith("HTTP 404") and "unknown model" in r.error for r in result.records)
    assert all(r.tokens == 0 and r.ttft_s is None for r in result.records)

    too_long = LoadPlan((stage("hold", 1, 2),), isl=8, osl=4000, max_requests=1)
    (rejected,) = run_load(triton_server.http_url, too_long).records
    assert "context window" in rejected.error and rejected.tokens == 0

    slow = LoadPlan((stage("hold", 1, 5),), isl=8, osl=480, max_requests=1, request_timeout_s=0.3)
    started = time.monotonic()
    (record,) = run_load(triton_server.http_url, slow).records
    assert time.monotonic() - started < 4.5  # max_requests reached: the run ends early
    assert record.error == "timeout"
    assert 0 < record.tokens < 480 and record.ttft_s is not None


def test_loadgen_requests_follow_the_backends_contract() -> None:
    """The engine path's ensemble (tensorrtllm_backend v0.12.0 ensemble/config.pbtxt: min_length pins
    the length) and the PyTorch flow's llmapi model (v0.19.0 all_models/llmapi/tensorrt_llm/config.pbtxt:
    sampling_param_max_tokens, streaming; no input pins the length) get their own fields and model."""
    loadtest = parse_spec({"name": "x", "model": {"source": "/m", "parameters_billion": 1}}).loadtest
    for backend, contract in (("trtllm-engine", ENSEMBLE), ("trtllm-pytorch", LLMAPI)):
        plan = LoadPlan.from_spec(loadtest, backend)
        body = json.loads(request_body(plan))
        assert body == contract.request(prompt(loadtest.isl), loadtest.osl, stream=True)
        assert LoadGenerator("h:1", plan).endpoint == f"http://h:1/v2/models/{contract.model}/generate_stream"
    assert body == {"text_input": prompt(loadtest.isl), "sampling_param_max_tokens": loadtest.osl,
                    "streaming": True, "sampling_param_exclude_input_from_output": True}  # fmt: skip
    engine = LoadPlan.from_spec(loadtest, "trtllm-engine")
    assert json.loads(request_body(engine))["min_length"] == loadtest.osl


def asyncio_run(generator: LoadGenerator):
    import asyncio

    return asyncio.run(generator.run())


# --- Prometheus sampler --------------------------------------------------------------------------

@pytest.mark.integration
def test_stage_cli_samples_prometheus_with_chart_recording_rules(triton_server, tmp_path) -> None:
    """`python -m steps.autoscale --kube off --prometheus URL` (the local run's command line): real
    Prometheus scrapes the real tritonserver with the labels the chart's PodMonitor adds and the
    chart's own recording rules (helm template); the timeline gets the scaling signal per group and
    the per-leader request rate while the step's load runs."""
    data = spec_data([{"name": "hold", "concurrency": 4, "duration_s": 8},
                      {"name": "drop", "concurrency": 0, "duration_s": 2}])
    spec = parse_spec(data)
    labels = {"namespace": "default", "lws": LWS, "group_index": "0", "pod": f"{LWS}-0"}
    prometheus = start_prometheus(
        tmp_path / "prom",
        [ScrapeTarget(triton_server.metrics_url.removeprefix("http://").removesuffix("/metrics"), labels)],
        rule_groups=chart_rule_groups(spec, RELEASE))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    try:
        prometheus.wait_for(scaling_series(spec), timeout_s=30)  # rules evaluate before load starts
        code = autoscale_main(["--spec", str(spec_path), "--url", triton_server.http_url, "--kube", "off",
                               "--prometheus", prometheus.url, "--out", str(tmp_path / "out")])
    finally:
        prometheus.stop()
    assert code == 0
    timeline = pd.read_parquet(tmp_path / "out" / "timeline.parquet")
    signal = timeline[timeline["series"] == "signal"]
    assert set(signal["group"]) == {"0"} and signal["value"].notna().all()
    rates = timeline[timeline["series"] == "requests.rate"]
    assert set(rates["group"]) == {"0"} and rates["value"].max() > 0
    document = json.loads((tmp_path / "out" / "milestones.json").read_text())
    at = {m["name"]: m["time_s"] for m in document["milestones"]}
    assert at["load_drop"] == 8
    # no cluster: the HPA simulator decided on the sampled signal (the spec's default 60 s scale-up
    # window keeps it at one group in 10 s), and says so
    assert at["hpa_scaled_up"] is None and document["simulation"].startswith("simulated")
    desired = timeline[timeline["series"] == "hpa.desired"]
    assert len(desired) > 0 and desired["simulated"].all() and (desired["value"] == 1).all()


# --- the whole stage against a scripted cluster --------------------------------------------------

def cluster_script() -> list[tuple[float, object]]:
    """What a cluster does when load arrives: HPA scales, a pod is unschedulable, a node boots,
    the group comes up; then load drops and the HPA scales in. Times in seconds."""
    ns = "default"

    def at_group(index, **kw):
        return lambda api: [api.put("pods", kube.group_pod(LWS, index, w, **kw)) for w in range(1)]

    return [
        (1.5, lambda api: api.put("horizontalpodautoscalers", kube.hpa(
            LWS, LWS, desired=2, current=1, metric="3500m", target="2"))),
        (1.5, lambda api: api.put("leaderworkersets", kube.lws(LWS, RELEASE, replicas=2, ready=1))),
        (2.5, at_group(1, unschedulable="0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")),
        (3.5, lambda api: api.put("nodes", kube.node("node-b", ready=False))),
        # connections cut and history compacted: the samplers must re-list (410 Gone) and go on
        (4.2, lambda api: (api.compact(), api.drop_watches())),
        (4.5, lambda api: api.put("nodes", kube.node("node-b", ready=True))),
        (4.5, at_group(1, phase="Pending", node_name="node-b", waiting="ContainerCreating")),
        (5.5, at_group(1, phase="Running", ready=True, node_name="node-b")),
        (5.5, lambda api: api.put("leaderworkersets", kube.lws(LWS, RELEASE, replicas=2, ready=2))),
        (8.5, lambda api: api.put("horizontalpodautoscalers", kube.hpa(
            LWS, LWS, desired=1, current=2, metric="100m", target="2"))),
        (9.0, lambda api: api.delete("pods", ns, f"{LWS}-1")),
    ]


@pytest.mark.integration
def test_autoscale_stage_milestones_match_scripted_cluster(triton_server, tmp_path) -> None:
    """`python -m steps.autoscale` against the API stand-in (a test double for kube-apiserver) and
    real tritonserver: the milestones match the script within one sample, the watch survives a
    dropped connection, pending reasons land in the timeline, and the samplers use few requests."""
    api = kube.FakeKubeAPI().start()
    try:
        api.put("nodes", kube.node("node-a", ready=True, created="2020-01-01T00:00:00Z"))
        api.put("leaderworkersets", kube.lws(LWS, RELEASE, replicas=1, ready=1))
        api.put("horizontalpodautoscalers", kube.hpa(LWS, LWS, desired=1, current=1, metric="0", target="2"))
        api.put("pods", kube.group_pod(LWS, 0, 0, phase="Running", ready=True, node_name="node-a"))
        data = spec_data([{"name": "ramp", "concurrency": 2, "duration_s": 3},
                          {"name": "hold", "concurrency": 4, "duration_s": 5},
                          {"name": "drop", "concurrency": 0, "duration_s": 3}],
                         expect={"groups_serving": 2, "within_s": 7})
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(data))
        config = api.write_kubeconfig(tmp_path / "kubeconfig")
        spec = load_spec(spec_path)
        watcher = KubeWatcher(kube_client("on", str(config)), spec.cluster.namespace)
        first_request = time.time()
        out = tmp_path / "out"
        # The script's clock starts with the load, as a cluster's reaction would.
        document = run(spec, triton_server.http_url, out, release=RELEASE, kube=watcher, prometheus=None,
                       on_load_start=kube.Scenario(api, cluster_script()).start)
        requests_per_minute = api.request_count(first_request) / ((time.time() - first_request) / 60)
    finally:
        api.stop()
    assert document == json.loads((out / "milestones.json").read_text())
    at = {m["name"]: m["time_s"] for m in document["milestones"]}
    timeline = pd.read_parquet(out / "timeline.parquet")
    expected = {"hpa_scaled_up": 1.5, "new_group_pods_created": 2.5, "new_nodes_ready": 4.5,
                "new_group_ready": 5.5, "load_drop": 8.0, "scale_in": 8.5}
    for name, when in expected.items():
        assert at[name] is not None and when <= at[name] <= when + 1.3, (name, at[name])
    assert at["load_start"] == 0.0
    assert document["passed"] and document["expectations"][0]["name"] == "groups_serving"
    timeline = pd.read_parquet(out / "timeline.parquet")
    pending = timeline[timeline["series"] == "group.pending"]["detail"]
    assert pending.str.contains("Insufficient nvidia.com/gpu").any()
    assert pending.str.contains("ContainerCreating").any()
    assert len(pd.read_parquet(out / "requests.parquet")) > 5
    # four kinds: one list + a few watches each (one reconnect after the drop), no polling
    assert requests_per_minute < 100, requests_per_minute


def test_watcher_stops_asking_for_a_forbidden_kind(tmp_path) -> None:
    """Without RBAC for nodes (a ClusterRole the pipeline may lack) the node watch gives up after one
    403 instead of retrying forever; the other kinds are still watched (API stand-in)."""
    api = kube.FakeKubeAPI(forbidden={"nodes"}).start()
    try:
        api.put("pods", kube.group_pod(LWS, 0, 0, phase="Running", ready=True))
        watcher = KubeWatcher(kube_client("on", str(api.write_kubeconfig(tmp_path / "kc"))), "default")
        watcher.start()
        assert watcher.wait_synced(10)
        time.sleep(1.5)
        watcher.stop()
        node_requests = [p for _, _, p in api.requests if p.startswith("/api/v1/nodes")]
        assert len(node_requests) == 1
        assert [p["metadata"]["name"] for p in watcher.snapshot("pods")] == [f"{LWS}-0"]
    finally:
        api.stop()


def test_autoscale_rejects_bad_spec(tmp_path, capsys) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("name: x\n")
    code = autoscale_main(["--spec", str(spec_path), "--url", "127.0.0.1:1", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_milestones_without_cluster_still_mark_load_phases(tmp_path: Path) -> None:
    """Local runs have no Kubernetes: load start and drop are known, cluster milestones are None."""
    from steps.autoscale.milestones import derive_milestones
    from steps.autoscale.timeline import requests_frame, timeline_frame

    spec = parse_spec(spec_data([{"name": "a", "concurrency": 4, "duration_s": 10},
                                 {"name": "b", "concurrency": 0, "duration_s": 5}]))
    rows = [{"time_s": t, "series": "signal", "group": "127.0.0.1:8002", "value": v, "detail": ""}
            for t, v in [(0, 0.0), (5, 3.0), (10, 1.0)]]
    milestones = {m.name: m.time_s for m in derive_milestones(spec, timeline_frame(rows), requests_frame([]))}
    assert milestones["load_start"] == 0 and milestones["load_drop"] == 10
    assert milestones["signal_above_target"] == 5
    assert milestones["hpa_scaled_up"] is None and milestones["new_group_ready"] is None


def test_hpa_rows_parse_quantities_and_conditions() -> None:
    """HPA status as the controller writes it: quantities such as '1500m', conditions with reasons;
    an HPA for another target (e.g. another release) is ignored."""
    from steps.autoscale.samplers import hpa_rows

    mine = kube.hpa(LWS, LWS, desired=2, current=1, metric="1500m", target="1")
    mine["status"]["conditions"] = [{"type": "ScalingLimited", "status": "True", "reason": "TooManyReplicas",
                                     "message": "the desired replica count is more than the maximum"}]
    other = kube.hpa("other", "other-lws", desired=5, current=5, metric="9", target="1")
    rows = {(r["series"], r["group"]): r for r in hpa_rows(3.0, [other, mine], LWS)}
    assert rows[("hpa.metric", "")]["value"] == 1.5 and rows[("hpa.desired", "")]["value"] == 2
    assert rows[("hpa.condition", "ScalingLimited")]["detail"].startswith("TooManyReplicas:")
    assert len([r for r in rows if r[0] == "hpa.desired"]) == 1
