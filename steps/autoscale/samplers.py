"""Samplers: what every layer of the cluster is doing, as timeline rows.

Kubernetes state is followed with watches (list once, then watch from the list's resourceVersion;
on a dropped connection re-watch from the last seen resourceVersion; on 410 Gone list again), so
the API server sees a handful of long requests rather than polls. Every `sample_interval_s` the
current state is turned into rows. Prometheus is queried over its HTTP API at the same cadence.

Row = {"time_s", "series", "group", "value", "detail", "simulated"}: `group` is the LWS group index (or
the node name / leader instance for node and Prometheus series), `detail` carries text such as a
pending reason, `simulated` marks rows the HPA simulator produced instead of a cluster
(steps.autoscale.simulated; a local run has no Kubernetes API).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests

log = logging.getLogger("megapod.autoscale")

LWS_GROUP = "leaderworkerset.x-k8s.io"
LWS_VERSION = "v1"
LWS_PLURAL = "leaderworkersets"
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"

Row = dict[str, Any]


def row(time_s: float, series: str, value: float | None, group: str = "", detail: str = "",
        *, simulated: bool = False) -> Row:
    """One timeline row."""
    return {"time_s": time_s, "series": series, "group": group,
            "value": float("nan") if value is None else float(value), "detail": detail,
            "simulated": simulated}


# --- Kubernetes: watches ---------------------------------------------------------------------------

@dataclass
class WatchedKind:
    """One resource kind kept current by a watch: objects by name."""

    name: str
    list_fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, dict] = field(default_factory=dict)
    resource_version: str | None = None
    reconnects: int = 0


class KubeWatcher:
    """Keeps HPAs, LeaderWorkerSets, pods and nodes of one release current, one thread per kind."""

    def __init__(self, api_client: Any, namespace: str, *, watch_timeout_s: int = 300) -> None:
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        autoscaling = client.AutoscalingV2Api(api_client)
        self.kinds = {
            "hpa": WatchedKind("hpa", autoscaling.list_namespaced_horizontal_pod_autoscaler,
                               {"namespace": namespace}),
            "lws": WatchedKind("lws", custom.list_namespaced_custom_object,
                               {"group": LWS_GROUP, "version": LWS_VERSION, "namespace": namespace,
                                "plural": LWS_PLURAL}),
            "pods": WatchedKind("pods", core.list_namespaced_pod, {"namespace": namespace}),
            "nodes": WatchedKind("nodes", core.list_node),
        }
        self.watch_timeout_s = watch_timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started: list[str] = []
        self._synced = {name: threading.Event() for name in self.kinds}

    def start(self, kinds: Iterable[str] | None = None) -> None:
        """Start watching (all kinds by default); returns at once."""
        for name in kinds or self.kinds:
            thread = threading.Thread(target=self._run, args=(self.kinds[name],), daemon=True,
                                      name=f"watch-{name}")
            thread.start()
            self._started.append(name)

    def wait_synced(self, timeout_s: float) -> bool:
        """True once every started watch has listed its kind."""
        deadline = time.monotonic() + timeout_s
        return all(self._synced[name].wait(max(0.0, deadline - time.monotonic())) for name in self._started)

    def stop(self) -> None:
        """Stop the watch threads (they end at their next event or timeout)."""
        self._stop.set()

    def snapshot(self, kind: str) -> list[dict]:
        """A copy of the current objects of one kind."""
        with self._lock:
            return list(self.kinds[kind].objects.values())

    def _run(self, kind: WatchedKind) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        backoff = 0.5
        while not self._stop.is_set():
            try:
                if kind.resource_version is None:
                    self._list(kind)
                # "object": keep raw dicts; the typed models reject objects missing optional-in-practice
                # fields and cost CPU for nothing.
                stream = watch.Watch(return_type="object").stream(
                    kind.list_fn, resource_version=kind.resource_version, allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_timeout_s, **kind.kwargs)
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._apply(kind, event["type"], event["raw_object"])
                    backoff = 0.5
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list afresh
                    kind.resource_version = None
                    continue
                if exc.status in (401, 403, 404):  # no RBAC (e.g. nodes) or no such API: stop asking
                    log.warning("not sampling %s: %s %s", kind.name, exc.status, exc.reason)
                    self._synced[kind.name].set()
                    return
                log.warning("watch %s: %s; retrying", kind.name, exc.reason)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10)
            except Exception as exc:  # dropped connection, timeouts: resume from the last version
                kind.reconnects += 1
                log.info("watch %s dropped (%s); resuming at %s", kind.name, type(exc).__name__,
                         kind.resource_version)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10)

    def _list(self, kind: WatchedKind) -> None:
        listing = kind.list_fn(_preload_content=False, **kind.kwargs)
        import json

        data = json.loads(listing.data)
        with self._lock:
            kind.objects = {_key(o): o for o in data.get("items", [])}
            kind.resource_version = data.get("metadata", {}).get("resourceVersion")
        self._synced[kind.name].set()

    def _apply(self, kind: WatchedKind, event_type: str, obj: dict) -> None:
        if event_type == "ERROR":
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
        version = obj.get("metadata", {}).get("resourceVersion")
        with self._lock:
            if version:
                kind.resource_version = version
            if event_type == "BOOKMARK":
                return
            if event_type == "DELETED":
                kind.objects.pop(_key(obj), None)
            else:
                kind.objects[_key(obj)] = obj


def _key(obj: dict) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name')}"


# --- Kubernetes: state -> rows --------------------------------------------------------------------

def hpa_rows(time_s: float, hpas: list[dict], lws_name: str) -> list[Row]:
    """Desired/current replicas, metric and target of the HPA (or KEDA's HPA) scaling the LWS."""
    rows: list[Row] = []
    for hpa in hpas:
        spec, status = hpa.get("spec", {}), hpa.get("status", {})
        if spec.get("scaleTargetRef", {}).get("name") != lws_name:
            continue
        rows.append(row(time_s, "hpa.desired", status.get("desiredReplicas")))
        rows.append(row(time_s, "hpa.current", status.get("currentReplicas")))
        metric = (status.get("currentMetrics") or [{}])[0]
        target = (spec.get("metrics") or [{}])[0]
        rows.append(row(time_s, "hpa.metric", _quantity(_metric_value(metric, "current"))))
        rows.append(row(time_s, "hpa.target", _quantity(_metric_value(target, "target"))))
        # AbleToScale / ScalingActive / ScalingLimited: 1 = True, with the controller's reason
        rows += [row(time_s, "hpa.condition", c.get("status") == "True", c.get("type", ""),
                     f"{c.get('reason', '')}: {c.get('message', '')}".strip(": "))
                 for c in status.get("conditions", [])]
    return rows


def _metric_value(metric: dict, which: str) -> Any:
    for source in metric.values():
        if isinstance(source, dict) and which in source:
            values = source[which]
            return values.get("averageValue") or values.get("value") or values.get("averageUtilization")
    return None


def _quantity(value: Any) -> float | None:
    """Parse a Kubernetes quantity such as '1500m' or '2' (the HPA reports metrics this way)."""
    if value is None:
        return None
    text = str(value)
    suffixes = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    if text and text[-1] in suffixes:
        return float(text[:-1]) * suffixes[text[-1]]
    return float(text)


def release_lws_name(objects: list[dict], release: str) -> str | None:
    """Name of the LeaderWorkerSet Helm created for `release` (found by its instance label)."""
    for lws in objects:
        meta = lws.get("metadata", {})
        if meta.get("labels", {}).get(INSTANCE_LABEL) == release:
            return meta.get("name")
    return None


def lws_rows(time_s: float, objects: list[dict], lws_name: str) -> list[Row]:
    """Requested and ready groups of the LeaderWorkerSet."""
    for lws in objects:
        if lws.get("metadata", {}).get("name") == lws_name:
            status = lws.get("status", {})
            return [row(time_s, "lws.replicas", lws.get("spec", {}).get("replicas")),
                    row(time_s, "lws.ready", status.get("readyReplicas", 0))]
    return []


def pod_rows(time_s: float, pods: list[dict], lws_name: str) -> list[Row]:
    """Per group: pods, running, ready, and the first pending reason."""
    groups: dict[str, dict[str, Any]] = {}
    for pod in pods:
        labels = pod.get("metadata", {}).get("labels", {})
        if labels.get(LWS_NAME_LABEL) != lws_name:
            continue
        index = labels.get(GROUP_INDEX_LABEL, "?")
        g = groups.setdefault(index, {"pods": 0, "running": 0, "ready": 0, "reasons": []})
        g["pods"] += 1
        status = pod.get("status", {})
        if status.get("phase") == "Running":
            g["running"] += 1
        if _condition(status, "Ready") == "True":
            g["ready"] += 1
        reason = pending_reason(pod)
        if reason:
            g["reasons"].append(f"{pod['metadata']['name']}: {reason}")
    rows: list[Row] = []
    for index, g in sorted(groups.items()):
        rows += [row(time_s, "group.pods", g["pods"], index),
                 row(time_s, "group.running", g["running"], index),
                 row(time_s, "group.ready", g["ready"], index)]
        if g["reasons"]:
            rows.append(row(time_s, "group.pending", len(g["reasons"]), index, "; ".join(g["reasons"])))
    return rows


def _condition(status: dict, kind: str) -> str | None:
    return next((c.get("status") for c in status.get("conditions", []) if c.get("type") == kind), None)


def pending_reason(pod: dict) -> str:
    """Why a pod is not ready yet: unschedulable message, container waiting reason, or ''."""
    status = pod.get("status", {})
    for cond in status.get("conditions", []):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".strip(": ")
    for container in status.get("containerStatuses", []) or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            return f"{container.get('name')}: {waiting.get('reason', 'Waiting')}"
        if not container.get("ready") and "running" in (container.get("state") or {}):
            return f"{container.get('name')}: running, not ready"
    if status.get("phase") == "Pending":
        return "Pending"
    return ""


def node_rows(time_s: float, nodes: list[dict], selector: dict[str, str], load_start: float) -> list[Row]:
    """Nodes matching the serving node selector: count, ready, and each node's type and age."""
    from datetime import datetime

    matching = [n for n in nodes
                if all(n.get("metadata", {}).get("labels", {}).get(k) == v for k, v in selector.items())]
    rows = [row(time_s, "nodes.total", len(matching))]
    ready = 0
    for node in matching:
        meta = node.get("metadata", {})
        is_ready = _condition(node.get("status", {}), "Ready") == "True"
        ready += is_ready
        created = meta.get("creationTimestamp")
        created_s = (datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() - load_start
                     if created else None)
        rows.append(row(time_s, "node.ready", is_ready, meta.get("name", ""),
                        meta.get("labels", {}).get(INSTANCE_TYPE_LABEL, "")))
        rows.append(row(time_s, "node.created_s", created_s, meta.get("name", "")))
    rows.append(row(time_s, "nodes.ready", ready))
    return rows


# --- Prometheus -----------------------------------------------------------------------------------

class PrometheusSampler:
    """Instant queries over Prometheus' HTTP API: the scaling signal and per-leader request rates."""

    def __init__(self, url: str, signal_series: str, *, request_model: str,
                 group_label: str = "pod", timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.signal_series = signal_series
        self.request_query = (
            f"sum by (group_index, {group_label}) "
            f'(rate(nv_inference_request_success{{model="{request_model}"}}[1m]))')
        self.group_label = group_label
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.errors = 0

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) pairs of an instant query; [] on a transient error (counted)."""
        try:
            response = self.session.get(f"{self.url}/api/v1/query", params={"query": expr},
                                        timeout=self.timeout_s)
            response.raise_for_status()
            data = response.json()["data"]["result"]
        except (requests.RequestException, KeyError, ValueError) as exc:
            self.errors += 1
            log.info("prometheus query failed: %s", exc)
            return []
        return [(item["metric"], float(item["value"][1])) for item in data]

    def sample(self, time_s: float) -> list[Row]:
        """Signal per group and request rate per leader at `time_s`."""
        rows = [row(time_s, "signal", value, self._group(labels))
                for labels, value in self.query(self.signal_series)]
        rows += [row(time_s, "requests.rate", value, self._group(labels))
                 for labels, value in self.query(self.request_query)]
        return rows

    def _group(self, labels: dict[str, str]) -> str:
        # The chart's PodMonitor adds group_index; a plain scrape config only has the instance.
        return labels.get("group_index") or labels.get(self.group_label) or labels.get("instance", "")
