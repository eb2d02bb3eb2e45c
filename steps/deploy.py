"""Deploy (or tear down) one release of charts/triton-lws and prove it serves.

    python -m steps.deploy --spec SPEC --values FILE [--release NAME] [--timeout S] [--outputs DIR]
    python -m steps.deploy --spec SPEC --teardown [--release NAME]

Cluster mode: `helm upgrade --install` with the rendered chart values, then watches (not polls) the
LeaderWorkerSet and its pods until the requested groups are Ready, printing each group's phase
(scheduling, pulling, loading, ready); then one streaming request through tritonclient must return
tokens. Outputs `endpoint` and `grpc_endpoint`. A timeout names every unready pod with its reason
and last event. `--teardown` uninstalls the release and waits until its pods are gone.

Local mode (backend cpu-python, or --local): no cluster; group 0 runs on this machine through
steps.localgroup: every pod runs the real launcher with the chart's flags, as a network namespace
(root) or, where namespaces are not allowed, as a plain local process (output `isolation` says
which). Its state lives in RUN_DIR/deploy/<release>/ so `--teardown` finds it
(see /work/notes/local-deploy-interface.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from steps.autoscale.samplers import INSTANCE_LABEL, KubeWatcher, pending_reason, release_lws_name
from steps.contract import ENSEMBLE, Contract, contract_for
from steps.manifest import repository_problem
from workflows.chart_values import CHART_DIR
from workflows.spec import Backend, Spec, SpecError, load_spec

log = logging.getLogger("megapod.deploy")
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
SMOKE_PROMPT = "megapod smoke test"
SMOKE_TOKENS = 4
# The local executor's run folder (same for deploy and teardown tasks); MEGAPOD_RUN_DIR is older.
RUN_DIR_VARS = ("MEGAPOD_LOCAL_RUN", "MEGAPOD_RUN_DIR")
POLL_S = 1.0  # how often the in-memory watch state is looked at (no API requests)


class DeployError(RuntimeError):
    """The release could not be brought up or down; the message says what is wrong and why."""


@dataclass(frozen=True)
class Endpoints:
    http: str
    grpc: str
    isolation: str | None = None  # local mode: "netns" or "processes"


# --- helm ----------------------------------------------------------------------------------------

def helm_binary() -> str:
    """helm from $MEGAPOD_HELM or PATH."""
    helm = os.environ.get("MEGAPOD_HELM") or shutil.which("helm")
    if not helm:
        raise DeployError("helm not found on PATH; install helm 3 or set MEGAPOD_HELM")
    return helm


def helm_install_command(release: str, namespace: str, values: Path, chart: Path = CHART_DIR) -> list[str]:
    """`helm upgrade --install` of the chart with the values rendered from the spec."""
    return [helm_binary(), "upgrade", "--install", release, str(chart), "--namespace", namespace,
            "--values", str(values)]


def helm_uninstall_command(release: str, namespace: str) -> list[str]:
    return [helm_binary(), "uninstall", release, "--namespace", namespace, "--ignore-not-found"]


def run_helm(command: list[str]) -> None:
    """Run helm; raise DeployError with its stderr on failure."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise DeployError(f"{' '.join(command[1:3])} failed: {detail[-1] if detail else done.returncode}")


# --- readiness -----------------------------------------------------------------------------------

def group_phase(pods: list[dict], group_size: int) -> str:
    """scheduling / pulling / loading / ready for one group's pods."""
    if len(pods) >= group_size and all(_ready(p) for p in pods):
        return "ready"
    if len(pods) < group_size or any(not p.get("spec", {}).get("nodeName") for p in pods):
        return "scheduling"
    if any(p.get("status", {}).get("phase") == "Pending" for p in pods):
        return "pulling"
    return "loading"


def _ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def groups_of(pods: list[dict], lws_name: str) -> dict[int, list[dict]]:
    """Pods of one LeaderWorkerSet by group index."""
    groups: dict[int, list[dict]] = {}
    for pod in pods:
        labels = pod.get("metadata", {}).get("labels", {})
        if labels.get(LWS_NAME_LABEL) == lws_name and labels.get(GROUP_INDEX_LABEL, "").isdigit():
            groups.setdefault(int(labels[GROUP_INDEX_LABEL]), []).append(pod)
    return groups


class Progress:
    """Logs one line whenever a group changes phase."""

    def __init__(self) -> None:
        self.phases: dict[int, str] = {}

    def update(self, groups: dict[int, list[dict]], group_size: int, wanted: int) -> int:
        """Log changes; return how many of the wanted groups are ready."""
        ready = 0
        for index in range(wanted):
            phase = group_phase(groups.get(index, []), group_size)
            ready += phase == "ready"
            if self.phases.get(index) != phase:
                self.phases[index] = phase
                log.info("group %d: %s (%d/%d pods)", index, phase, len(groups.get(index, [])), group_size)
        return ready


def wait_ready(spec: Spec, release: str, watcher: KubeWatcher, core_api, timeout_s: float) -> str:
    """Wait until the release's LWS has its groups Ready; return the LWS name or raise DeployError."""
    watcher.start(["lws", "pods"])
    deadline = time.monotonic() + timeout_s
    progress = Progress()
    lws_name = None
    try:
        while True:
            lws_objects = watcher.snapshot("lws")
            lws_name = release_lws_name(lws_objects, release) or lws_name
            lws = next((o for o in lws_objects if o["metadata"]["name"] == lws_name), None)
            if lws is not None:
                wanted = lws.get("spec", {}).get("replicas") or spec.serving.replicas.min
                groups = groups_of(watcher.snapshot("pods"), lws_name)
                if progress.update(groups, spec.group_size, wanted) >= wanted:
                    return lws_name
            if time.monotonic() >= deadline:
                raise DeployError(not_ready_message(release, lws_name, watcher, core_api, spec, timeout_s))
            time.sleep(POLL_S)
    finally:
        watcher.stop()


def not_ready_message(release: str, lws_name: str | None, watcher: KubeWatcher, core_api, spec: Spec,
                      timeout_s: float) -> str:
    """One line naming each unready pod, why, and its last event."""
    if lws_name is None:
        return (f"release {release}: no LeaderWorkerSet labelled {INSTANCE_LABEL}={release} appeared within "
                f"{timeout_s:.0f} s; is the LeaderWorkerSet controller installed?")
    pods = [p for group in groups_of(watcher.snapshot("pods"), lws_name).values() for p in group]
    unready = [p for p in pods if not _ready(p)]
    parts = []
    for pod in sorted(unready, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        event = last_event(core_api, spec.cluster.namespace, name)
        suffix = f" (last event: {event})" if event else ""
        parts.append(f"{name}: {pending_reason(pod) or 'not ready'}{suffix}")
    if not parts:
        parts.append("no pods were created (check the LeaderWorkerSet's events)")
    return f"release {release}: groups not ready after {timeout_s:.0f} s; " + "; ".join(parts)


def last_event(core_api, namespace: str, pod_name: str) -> str:
    """The newest event about a pod as 'Reason: message', or ''."""
    try:
        listing = core_api.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pod_name}", _preload_content=False)
        items = json.loads(listing.data).get("items", [])
    except Exception as exc:  # events are a hint; never hide the timeout behind an events error
        log.info("events for %s unavailable: %s", pod_name, exc)
        return ""
    items = [e for e in items if e.get("involvedObject", {}).get("name") == pod_name]
    if not items:
        return ""
    newest = max(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return f"{newest.get('reason', '')}: {newest.get('message', '')}".strip(": ")


def service_endpoints(core_api, spec: Spec, release: str) -> Endpoints:
    """HTTP and gRPC endpoints of the release's leader Service (load balancer address when it has one)."""
    namespace = spec.cluster.namespace
    listing = json.loads(core_api.list_namespaced_service(
        namespace, label_selector=f"{INSTANCE_LABEL}={release}", _preload_content=False).data)
    services = [s for s in listing.get("items", [])
                if s.get("metadata", {}).get("labels", {}).get(INSTANCE_LABEL) == release
                and s.get("spec", {}).get("clusterIP") != "None"]
    if not services:
        raise DeployError(f"release {release}: no Service labelled {INSTANCE_LABEL}={release} in {namespace}")
    service = services[0]
    ingress = (service.get("status", {}).get("loadBalancer", {}).get("ingress") or [{}])[0]
    host = ingress.get("hostname") or ingress.get("ip") or (
        f"{service['metadata']['name']}.{namespace}.svc.cluster.local")
    ports = spec.serving.service
    return Endpoints(f"{host}:{ports.http_port}", f"{host}:{ports.grpc_port}")


# --- smoke request -------------------------------------------------------------------------------

# Python type of a contract value -> (Triton datatype, numpy dtype); bool before int (a bool is an int).
SMOKE_TYPES = ((bool, "BOOL", "bool"), (int, "INT32", "int32"), (str, "BYTES", "object"))


def smoke_tensor(name: str, value: Any, shape: list[int]):
    """One request field as a tritonclient input, typed as the contracts declare it."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    datatype, np_dtype = next((d, n) for kind, d, n in SMOKE_TYPES if isinstance(value, kind))
    data = value.encode() if isinstance(value, str) else value
    item = grpcclient.InferInput(name, shape, datatype)
    item.set_data_from_numpy(np.array([data], dtype=np_dtype).reshape(shape))
    return item


def smoke_request(grpc_endpoint: str, timeout_s: float = 60.0, contract: Contract = ENSEMBLE) -> int:
    """Stream one short generation through tritonclient (gRPC) in the backend's contract; return
    the responses that carried text, or raise."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_endpoint)
    responses: queue.Queue = queue.Queue()
    model = contract.model
    try:
        batched = client.get_model_config(model, as_json=True)["config"].get("max_batch_size", 0) > 0
        shape = [1, 1] if batched else [1]
        inputs = [smoke_tensor(name, value, shape)
                  for name, value in contract.request(SMOKE_PROMPT, SMOKE_TOKENS, stream=True).items()]
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        tokens = 0
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result, error = responses.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise DeployError(
                    f"smoke request to {grpc_endpoint}: no response within {timeout_s:.0f} s") from None
            if error is not None:
                raise DeployError(f"smoke request to {grpc_endpoint} failed: {error}")
            response = result.get_response()
            if response.parameters.get("triton_final_response", None) and \
                    response.parameters["triton_final_response"].bool_param:
                break
            if result.as_numpy(contract.output) is not None:
                tokens += 1
    finally:
        client.stop_stream()
        client.close()
    if tokens == 0:
        raise DeployError(f"smoke request to {grpc_endpoint} returned no tokens")
    return tokens


# --- local mode ----------------------------------------------------------------------------------

def start_local(spec: Spec, release: str, repository: Path, run_dir: Path, timeout_s: float) -> Endpoints:
    """Start the local group (steps.localgroup) and wait until its leader serves."""
    from steps.localgroup import LocalGroupError, start_group

    # Checked against publish's manifest (whatever models the backend has), not a model name.
    damage = repository_problem(repository)
    if damage is not None:
        raise DeployError(f"{repository} is not a complete published model repository ({damage}); run "
                          "publish again, or pass --repository (the publish step's output)")
    try:
        group = start_group(spec, repository, run_dir, release, timeout_s=timeout_s)
    except LocalGroupError as exc:
        raise DeployError(str(exc)) from None
    return Endpoints(group.endpoint, group.grpc_endpoint, group.isolation)


def stop_local(run_dir: Path, release: str) -> bool:
    """Stop the local group (leader drains first); True if something was running."""
    from steps.localgroup import stop_group

    return stop_group(run_dir, release)


# --- CLI -----------------------------------------------------------------------------------------

def write_outputs(outputs: Path, endpoints: Endpoints) -> None:
    """One file per output parameter, no trailing newline (contracts.md)."""
    outputs.mkdir(parents=True, exist_ok=True)
    values = {"endpoint": endpoints.http, "grpc_endpoint": endpoints.grpc, "isolation": endpoints.isolation}
    for name, value in values.items():
        if value is None:
            continue
        tmp = outputs / f".{name}.tmp"
        tmp.write_text(value)
        tmp.replace(outputs / name)


def deploy_cluster(spec: Spec, release: str, values: Path, timeout_s: float, api_client) -> Endpoints:
    """helm upgrade --install, wait for Ready groups, smoke-test; return the endpoints."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    watcher = KubeWatcher(api_client, spec.cluster.namespace)  # API clients ready before helm runs
    log.info("helm: upgrade --install %s (namespace %s)", release, spec.cluster.namespace)
    run_helm(helm_install_command(release, spec.cluster.namespace, values))
    wait_ready(spec, release, watcher, core, timeout_s)
    endpoints = service_endpoints(core, spec, release)
    tokens = smoke_request(endpoints.grpc, contract=contract_for(spec.backend))
    log.info("smoke: %d tokens streamed from %s", tokens, endpoints.grpc)
    return endpoints


def teardown_cluster(spec: Spec, release: str, timeout_s: float, api_client) -> None:
    """helm uninstall, then wait (watching) until no pod of the release is left."""
    log.info("helm: uninstall %s", release)
    run_helm(helm_uninstall_command(release, spec.cluster.namespace))
    watcher = KubeWatcher(api_client, spec.cluster.namespace)
    watcher.start(["pods"])
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            # every pod of the chart carries the release's instance label (selector labels)
            left = [p["metadata"]["name"] for p in watcher.snapshot("pods")
                    if p["metadata"].get("labels", {}).get(INSTANCE_LABEL) == release]
            if watcher.wait_synced(0) and not left:
                log.info("teardown: no pods of %s left", release)
                return
            if time.monotonic() >= deadline:
                raise DeployError(f"release {release}: pods still present after {timeout_s:.0f} s: "
                                  f"{', '.join(sorted(left))}")
            time.sleep(POLL_S)
    finally:
        watcher.stop()


def default_run_dir() -> Path:
    """The local run folder from the executor's environment, else the current directory."""
    return Path(next((os.environ[var] for var in RUN_DIR_VARS if os.environ.get(var)), "."))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steps.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--values", type=Path, help="chart values (megapod render's chart-values.yaml)")
    parser.add_argument("--release", help="Helm release name (default: the spec's name)")
    parser.add_argument("--timeout", type=float, help="seconds (default: serving.startup_timeout_s)")
    parser.add_argument("--outputs", type=Path, default=Path("/tmp/outputs"))
    parser.add_argument("--teardown", action="store_true", help="uninstall and wait until the pods are gone")
    parser.add_argument("--local", action="store_true", help="run the group on this machine (cpu-python)")
    parser.add_argument("--run-dir", type=Path, default=default_run_dir(),
                        help="local mode: where the group's state goes "
                        f"(default: ${' or $'.join(RUN_DIR_VARS)} or .)")
    parser.add_argument("--repository", type=Path,
                        help="local mode: model repository (default: model.repository in --values)")
    parser.add_argument("--kubeconfig", help="default: in-cluster config, else $KUBECONFIG / ~/.kube/config")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 ok, 1 deploy/teardown failed, 2 bad input."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s deploy %(message)s")
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        values = _check_values(args)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    release = args.release or spec.name
    timeout = args.timeout or float(spec.serving.startup_timeout_s)
    local = args.local or spec.backend == Backend.CPU_PYTHON
    try:
        if local:
            if args.teardown:
                stopped = stop_local(args.run_dir, release)
                log.info("teardown: %s", "stopped the local group" if stopped else "nothing was running")
                return 0
            from steps.localgroup.group import pod_volume_path

            # the pods' view of the model volume, as the chart mounts it, is a run-folder directory
            repository = pod_volume_path(values, args.repository or Path(values["model"]["repository"]),
                                         args.run_dir)
            write_outputs(args.outputs, start_local(spec, release, repository, args.run_dir, timeout))
            return 0
        from steps.autoscale.__main__ import kube_client

        api_client = kube_client("on", args.kubeconfig)
        if args.teardown:
            teardown_cluster(spec, release, timeout, api_client)
            return 0
        write_outputs(args.outputs, deploy_cluster(spec, release, args.values, timeout, api_client))
        return 0
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _check_values(args: argparse.Namespace) -> dict:
    if args.teardown:
        return {}
    if args.values is None:
        raise ValueError("--values FILE is required to deploy (megapod render writes chart-values.yaml)")
    try:
        values = yaml.safe_load(args.values.read_text())
    except FileNotFoundError:
        raise ValueError(f"{args.values}: no such values file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{args.values}: not valid YAML ({exc})") from None
    if not isinstance(values, dict) or "model" not in values:
        raise ValueError(f"{args.values}: not triton-lws chart values (no 'model' key); "
                         "use megapod render's chart-values.yaml")
    return values


if __name__ == "__main__":
    sys.exit(main())
