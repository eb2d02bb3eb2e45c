"""A small Kubernetes API stand-in for tests (no kube-apiserver can be installed here).

Why not kmock's emulator: it ignores label selectors and has no resourceVersions, so a client
cannot resume a watch after a dropped connection, which is what the samplers must survive.
This server keeps objects in memory and speaks the real API's wire format for what the official
client uses: list (with `metadata.resourceVersion`, equality label selectors), get, watch
(`?watch=1&resourceVersion=N`: replays newer events, ERROR 410 when N was compacted away, then
streams live events as JSON lines), and counts every request for the overhead benchmark.
No controllers run: a test script moves objects over time as a cluster would (see `Scenario`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

# plural -> (API path prefix, namespaced)
RESOURCES = {
    "pods": ("/api/v1", True),
    "nodes": ("/api/v1", False),
    "events": ("/api/v1", True),
    "services": ("/api/v1", True),
    "horizontalpodautoscalers": ("/apis/autoscaling/v2", True),
    "leaderworkersets": ("/apis/leaderworkerset.x-k8s.io/v1", True),
}
KINDS = {"pods": "Pod", "nodes": "Node", "events": "Event", "services": "Service",
         "horizontalpodautoscalers": "HorizontalPodAutoscaler", "leaderworkersets": "LeaderWorkerSet"}


@dataclass
class _Watch:
    plural: str
    namespace: str | None
    selector: dict[str, str]
    queue: asyncio.Queue
    response: web.StreamResponse


@dataclass
class FakeKubeAPI:
    """The server; start() runs it on 127.0.0.1 in a background thread."""

    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    history: list[tuple[int, str, dict]] = field(default_factory=list)  # (rv, event type, object)
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (time, method, path?query)
    version: int = 100
    compacted: int = 0
    forbidden: set[str] = field(default_factory=set)  # plurals answered with 403 (missing RBAC)

    def start(self) -> FakeKubeAPI:
        self._watches: list[_Watch] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="fake-kube")
        self._thread.start()
        ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this server (plain HTTP, no credentials)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake",
                          "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))
        return path

    def stop(self) -> None:
        self.drop_watches()  # open watches would otherwise hold the shutdown
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- state changes (thread-safe) -------------------------------------------------------------

    def put(self, plural: str, obj: dict) -> dict:
        """Create or replace an object (ADDED / MODIFIED event)."""
        return self._call(self._put, plural, obj)

    def patch(self, plural: str, namespace: str, name: str, change: Callable[[dict], None]) -> dict:
        """Apply `change` to a copy of the stored object and store it (MODIFIED)."""
        obj = copy.deepcopy(self.objects[(plural, namespace, name)])
        change(obj)
        return self.put(plural, obj)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        """Remove an object (DELETED event)."""
        self._call(self._delete, plural, namespace, name)

    def drop_watches(self) -> int:
        """Cut every open watch connection (as a load balancer or apiserver restart would)."""
        return self._call(self._drop)

    def compact(self) -> None:
        """Forget history up to now: watches resuming from an older version get 410 Gone."""
        self._call(self._compact)

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        return self.objects.get((plural, namespace, name))

    def request_count(self, since: float = 0.0) -> int:
        return sum(1 for t, _, _ in self.requests if t >= since)

    def api_calls(self) -> list[ApiCall]:
        """Every request so far as the authorizer would see it (verb, group, resource, namespace)."""
        return [request_attributes(method, path) for _, method, path in self.requests]

    def _call(self, fn, *args):
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _put(self, plural: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (plural, meta.get("namespace", "") if RESOURCES[plural][1] else "", meta["name"])
        event = "MODIFIED" if key in self.objects else "ADDED"
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        previous = self.objects.get(key, {}).get("metadata", {})
        meta.setdefault("creationTimestamp", previous.get("creationTimestamp") or _now())
        obj.setdefault("kind", KINDS[plural])
        self.objects[key] = obj
        self._publish(plural, event, obj)
        return obj

    def _delete(self, plural: str, namespace: str, name: str) -> None:
        obj = self.objects.pop((plural, namespace, name), None)
        if obj is None:
            return
        self.version += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        self._publish(plural, "DELETED", obj)

    def _publish(self, plural: str, event: str, obj: dict) -> None:
        self.history.append((self.version, event, {"plural": plural, "object": obj}))
        for w in self._watches:
            if w.plural == plural and _matches(obj, w.namespace, w.selector):
                w.queue.put_nowait({"type": event, "object": obj})

    def _drop(self) -> int:
        dropped = len(self._watches)
        for w in self._watches:
            w.queue.put_nowait(None)
        return dropped

    def _compact(self) -> None:
        self.compacted = self.version
        self.history.clear()

    # --- HTTP ------------------------------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(runner.cleanup())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((time.time(), request.method, request.path_qs))
        route = _route(request.path)
        if route is None:
            return _status(404, "NotFound", f"no such path {request.path}")
        plural, namespace, name = route
        if plural in self.forbidden:
            return _status(403, "Forbidden", f"cannot list resource {plural!r}")
        if name:
            obj = self.objects.get((plural, namespace or "", name))
            return web.json_response(obj) if obj else _status(404, "NotFound", f"{plural} {name} not found")
        selector = _selector(request.query.get("labelSelector", ""))
        if request.query.get("watch") in ("1", "true"):
            return await self._watch(request, plural, namespace, selector)
        items = [o for (p, _, _), o in self.objects.items()
                 if p == plural and _matches(o, namespace, selector)]
        return web.json_response({"kind": f"{KINDS[plural]}List", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items})

    async def _watch(self, request: web.Request, plural: str, namespace: str | None,
                     selector: dict[str, str]) -> web.StreamResponse:
        transport = request.transport  # kept: the request lets go of it once streaming starts
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        since = int(request.query.get("resourceVersion") or self.version)
        if since < self.compacted:
            gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                "code": 410, "reason": "Expired",
                                                "message": f"too old resource version: {since}"}}
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        watch = _Watch(plural, namespace, selector, asyncio.Queue(), response)
        for version, event, data in self.history:
            if version > since and data["plural"] == plural and _matches(data["object"], namespace, selector):
                watch.queue.put_nowait({"type": event, "object": data["object"]})
        self._watches.append(watch)
        timeout = float(request.query.get("timeoutSeconds") or 3600)
        try:
            end = time.monotonic() + timeout
            while (remaining := end - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:  # dropped: close the connection without a clean end
                    if transport is not None:
                        transport.abort()
                    return response
                await response.write(json.dumps(event).encode() + b"\n")
        finally:
            self._watches.remove(watch)
        return response


@dataclass(frozen=True)
class ApiCall:
    """The attributes kube-apiserver's RBAC authorizer decides on (RequestInfo), for one request.

    `resource` includes a subresource ("pods/exec"); `namespace` is None for cluster-scoped calls;
    a path that is not a resource (/version, /openapi/v2) has group None and the path as resource."""

    verb: str
    group: str | None
    resource: str
    namespace: str | None = None
    name: str | None = None


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_attributes(method: str, path_qs: str) -> ApiCall:
    """Map an HTTP request to its RBAC attributes the way kube-apiserver does (any path, not
    only the ones this stand-in serves, so an unexpected call is still checked)."""
    path, _, query = path_qs.partition("?")
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return ApiCall(method.lower(), None, path)
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    if method == "GET":
        verb = "get" if name else ("watch" if params.get("watch") in ("1", "true") else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return ApiCall(verb, group, resource, namespace, name)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _route(path: str) -> tuple[str, str | None, str | None] | None:
    for plural, (prefix, namespaced) in RESOURCES.items():
        if not path.startswith(prefix + "/"):
            continue
        parts = path[len(prefix) + 1:].strip("/").split("/")
        if namespaced and len(parts) >= 3 and parts[0] == "namespaces" and parts[2] == plural:
            return plural, parts[1], parts[3] if len(parts) > 3 else None
        if parts[0] == plural:
            return plural, None, parts[1] if len(parts) > 1 else None
    return None


def _selector(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.replace("==", "=").split(",") if "=" in p]
    return {k.strip(): v.strip() for k, v in pairs}


def _matches(obj: dict, namespace: str | None, selector: dict[str, str]) -> bool:
    meta = obj.get("metadata", {})
    if namespace and meta.get("namespace") != namespace:
        return False
    labels = meta.get("labels", {})
    return all(labels.get(k) == v for k, v in selector.items())


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                              "reason": reason, "message": message}, status=code)


# --- objects as a cluster would have them ---------------------------------------------------------

LWS_LABELS = "leaderworkerset.sigs.k8s.io"


def node(name: str, *, ready: bool, instance_type: str = "cpu.local", created: str | None = None) -> dict:
    meta = {"name": name, "labels": {"node.kubernetes.io/instance-type": instance_type}}
    if created:
        meta["creationTimestamp"] = created
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def group_pod(lws: str, group: int, worker: int, *, namespace: str = "default", phase: str = "Pending",
              ready: bool = False, node_name: str | None = None, unschedulable: str | None = None,
              waiting: str | None = None, release: str | None = None) -> dict:
    """A pod of an LWS group with the labels and status fields the LWS controller and kubelet set."""
    name = f"{lws}-{group}" if worker == 0 else f"{lws}-{group}-{worker}"
    conditions = [{"type": "PodScheduled", "status": "False" if unschedulable else "True",
                   **({"reason": "Unschedulable", "message": unschedulable} if unschedulable else {})},
                  {"type": "Ready", "status": str(ready)}]
    state = {"waiting": {"reason": waiting}} if waiting else ({"running": {}} if phase == "Running" else {})
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": {
            f"{LWS_LABELS}/name": lws, f"{LWS_LABELS}/group-index": str(group),
            f"{LWS_LABELS}/worker-index": str(worker),
            **({"app.kubernetes.io/instance": release} if release else {})}},
        "spec": {"nodeName": node_name} if node_name else {},
        "status": {"phase": phase, "conditions": conditions,
                   "containerStatuses": [{"name": "leader" if worker == 0 else "worker", "ready": ready,
                                          "state": state}] if not unschedulable else []},
    }


def lws(name: str, release: str, *, replicas: int, ready: int, namespace: str = "default") -> dict:
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/instance": release}},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": ready}}


def hpa(name: str, lws_name: str, *, desired: int, current: int, metric: str, target: str,
        namespace: str = "default", series: str = "megapod_batch_slots_occupancy") -> dict:
    return {"apiVersion": "autoscaling/v2",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"scaleTargetRef": {"kind": "LeaderWorkerSet", "name": lws_name},
                     "metrics": [{"type": "Pods", "pods": {"metric": {"name": series},
                                                           "target": {"type": "AverageValue",
                                                                      "averageValue": target}}}]},
            "status": {"desiredReplicas": desired, "currentReplicas": current,
                       "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": series},
                                                                    "current": {"averageValue": metric}}}]}}


def service(name: str, release: str, *, ip: str, namespace: str = "default") -> dict:
    """The chart's leader Service with a load balancer address (as the LB controller sets it)."""
    labels = {"app.kubernetes.io/instance": release}
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.10"},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}


def event(pod_name: str, reason: str, message: str, *, namespace: str = "default", at: str = "") -> dict:
    return {"metadata": {"name": f"{pod_name}.{reason.lower()}", "namespace": namespace},
            "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": namespace},
            "reason": reason, "message": message, "type": "Warning", "lastTimestamp": at or _now()}


@dataclass
class Scenario:
    """Timed changes applied to the server from a thread: [(seconds after start, action)]."""

    api: FakeKubeAPI
    steps: list[tuple[float, Callable[[FakeKubeAPI], object]]]

    def start(self) -> threading.Thread:
        t0 = time.monotonic()

        def run() -> None:
            for at, action in sorted(self.steps, key=lambda s: s[0]):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                action(self.api)

        thread = threading.Thread(target=run, daemon=True, name="scenario")
        thread.start()
        return thread
