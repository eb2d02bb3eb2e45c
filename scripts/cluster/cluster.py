"""A real Kubernetes control plane on this machine, every port on 127.0.0.1 (`make cluster`).

  python scripts/cluster/cluster.py up        build (scripts/cluster/build.sh), start, wait ready
  python scripts/cluster/cluster.py down      stop every process by pid, remove the cluster folder
  python scripts/cluster/cluster.py status    exit 0 when every process of a started cluster runs
  python scripts/cluster/cluster.py adapter CONFIG PROMETHEUS_URL   restart prometheus-adapter

Real: etcd, kube-apiserver (RBAC), kube-controller-manager, kube-scheduler, the LWS controller
with its webhooks, prometheus-adapter behind the aggregation layer, Argo's workflow-controller
and argo-server. Faked by kwok: the nodes (one per pod of the example specs at their maximum
replicas, labelled and sized from the specs) and the pods' lifecycle (Running/Ready). Each
component runs as the identity its upstream install gives it: core components with kubeadm's
client certificates, the others as their ServiceAccounts bound by their upstream RBAC manifests
(read from the module cache at the pinned versions, as are the CRDs).

The started cluster is described in <folder>/cluster.json (kubeconfig, addresses, pids), which
tests/support/cluster.py reads. Folder: $MEGAPOD_CLUSTER_DIR or .tools/cluster/run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pki import Pair, Pki, b64, create_pki, write_kubeconfig
from relay import start_time, write_pidfile

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUN = Path(os.environ.get("MEGAPOD_CLUSTER_DIR", ROOT / ".tools" / "cluster" / "run"))
STATE = RUN / "cluster.json"

# Every port listening on the host's 127.0.0.1 (the argo-* ones are relays into Argo's namespace).
PORTS = {
    "etcd": 32379,
    "etcd-peer": 32380,
    "apiserver": 36443,
    "controller-manager": 30257,
    "scheduler": 30259,
    "lws-webhook": 39443,
    "lws-health": 38081,
    "kwok": 30247,
    "adapter": 36445,
    "argo-server": 32746,
    "argo-controller-health": 36060,
}
# Inside Argo's namespace: argo-server's default port; the controller's health port is hard-coded
# (cmd/workflow-controller/main.go).
ARGO_NETNS_PORTS = {"argo-server": 2746, "argo-controller-health": 6060}
# ClusterIPs and pod IPs are allocated but nothing routes them (no kube-proxy, CNI or DNS): they
# come from the documentation ranges TEST-NET-2 and TEST-NET-1 (RFC 5737), never a real network.
SERVICE_CIDR, SERVICE_IP = "198.51.100.0/24", "198.51.100.1"
POD_CIDR = "192.0.2.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
TOKEN_DURATION = "8760h"
ADAPTER = {"namespace": "monitoring", "name": "prometheus-adapter"}
ADAPTER_HOST = f"{ADAPTER['name']}.{ADAPTER['namespace']}.svc"
PROMETHEUS_URL = os.environ.get("MEGAPOD_CLUSTER_PROMETHEUS_URL", "http://127.0.0.1:39090")
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
EXAMPLES = ROOT / "workflows" / "examples"
CHART, ADAPTER_RULES = ROOT / "charts" / "triton-lws", "templates/adapter-rules.yaml"
HELM = ROOT / ".tools" / "bin" / "helm"  # scripts/bootstrap.sh installs it
READY_TIMEOUT_S = float(os.environ.get("MEGAPOD_CLUSTER_TIMEOUT_S", "120"))


_STARTED = time.monotonic()


class ClusterError(RuntimeError):
    """A component did not come up: the message names it and its log."""


# --- binaries and module folders ------------------------------------------------------------------


def build() -> dict[str, Path]:
    """Run build.sh (builds only what is missing); returns group -> folder of its binaries."""
    result = subprocess.run([str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(result.returncode)  # build.sh printed the one line
    return {group: Path(folder) for group, folder in (line.split() for line in result.stdout.splitlines())}


def module_dir(wrapper: str, module: str) -> Path:
    """The module cache folder of `module` at the version the wrapper `go/<wrapper>` pins."""
    out = subprocess.run(
        ["go", "-C", str(HERE / "go" / wrapper), "list", "-mod=readonly", "-m", "-f", "{{.Dir}}", module],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


# --- processes ------------------------------------------------------------------------------------


def _pidfile(name: str) -> Path:
    return RUN / "pids" / f"{name}.pid"


def log_path(name: str) -> Path:
    """Where a component's stdout and stderr go."""
    return RUN / "logs" / f"{name}.log"


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start a component in its own session (it outlives this command), pid recorded by name."""
    with log_path(name).open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    write_pidfile(_pidfile(name), process.pid)
    order = RUN / "pids" / "order"
    if name not in (order.read_text().split() if order.exists() else []):  # a restart keeps its place
        with order.open("a") as file:
            file.write(name + "\n")


def _recorded(name: str) -> int | None:
    """The pid recorded for `name` if that very process still runs (same start time)."""
    try:
        pid, started = _pidfile(name).read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid) if start_time(int(pid)) == started else None


def _names() -> list[str]:
    """Recorded components, last started first, then any pid file not in the start order (the
    Argo processes, which their namespace's supervisor stops first)."""
    order = RUN / "pids" / "order"
    names = order.read_text().split()[::-1] if order.exists() else []
    extra = sorted(p.stem for p in (RUN / "pids").glob("*.pid") if p.stem not in names)
    return names + extra


def _signal(name: str, signum: int) -> None:
    if (pid := _recorded(name)) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _stop(name: str, timeout_s: float = 15.0) -> None:
    """SIGTERM, a bounded wait for the process to drain, then SIGKILL."""
    _signal(name, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _recorded(name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal(name, signal.SIGKILL)


def wait_for(
    name: str, check: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S, processes: tuple[str, ...] = ()
) -> None:
    """Poll `check` until it holds; fail naming the component and its log, at once if one of its
    `processes` (default: itself) has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                print(f"[cluster] {name} ready at {time.monotonic() - _STARTED:.1f}s", file=sys.stderr)
                return
        except (OSError, subprocess.CalledProcessError, ssl.SSLError, ValueError):
            pass
        for process in processes or (name,):
            if _pidfile(process).exists() and _recorded(process) is None:
                what = name if process == name else f"{name} ({process} exited)"
                raise ClusterError(f"{what} did not come up; log: {log_path(process)}")
        time.sleep(0.5)
    raise ClusterError(f"{name} did not become ready within {timeout_s:.0f}s; log: {log_path(name)}")


def https_ok(url: str, ca: Path, client: Pair | None = None, token: str | None = None) -> bool:
    """GET `url` verifying the server against `ca`; True on HTTP 200."""
    context = ssl.create_default_context(cafile=str(ca))
    if client:
        context.load_cert_chain(str(client.cert), str(client.key))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), context=context, timeout=5
    ) as r:
        return r.status == 200


def http_ok(url: str) -> bool:
    """GET a plain-HTTP loopback `url`; True on HTTP 200."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# --- kubectl --------------------------------------------------------------------------------------


@dataclass
class Kubectl:
    """kubectl (the pinned build) as the cluster admin."""

    binary: Path
    kubeconfig: Path

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
        return result.stdout

    def apply(self, objects: list[dict]) -> None:
        """Server-side apply (CRDs exceed the client-side last-applied annotation's size limit)."""
        documents = {"apiVersion": "v1", "kind": "List", "items": objects}
        self(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=megapod-cluster",
            "-f",
            "-",
            stdin=json.dumps(documents),
        )

    def kustomize(self, name: str, source: Path, files: list[str], kustomization: dict) -> list[dict]:
        """Build upstream files with kustomize (kubectl's) after copying them to a folder of ours:
        the module cache is outside any kustomization root we could write."""
        folder = RUN / "manifests" / name
        folder.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy(source / file, folder / Path(file).name)
        resources = [Path(f).name for f in files if Path(f).name not in _KUSTOMIZE_SUPPORT]
        (folder / "kustomization.yaml").write_text(yaml.safe_dump({"resources": resources, **kustomization}))
        return [doc for doc in yaml.safe_load_all(self("kustomize", str(folder))) if doc]

    def token(self, namespace: str, service_account: str) -> str:
        """A bound token of a ServiceAccount (TokenRequest), as a pod would mount."""
        return self(
            "create", "token", service_account, "-n", namespace, f"--duration={TOKEN_DURATION}"
        ).strip()


# Files kustomize reads that are not resources (patch targets, name-reference configuration).
_KUSTOMIZE_SUPPORT = {"mutating-patch.yaml", "validating-patch.yaml", "kustomizeconfig.yaml"}


def load_yaml(path: Path) -> list[dict]:
    """Every document of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- the cluster ----------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Paths and handles of one cluster folder."""

    bins: dict[str, Path]
    pki: Pki = field(init=False)
    kubectl: Kubectl = field(init=False)

    def __post_init__(self) -> None:
        self.pki = Pki.paths(RUN / "pki")
        self.kubectl = Kubectl(self.bin("kubernetes", "kubectl"), RUN / "kubeconfig")

    def bin(self, group: str, name: str) -> Path:
        return self.bins[group] / name

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{PORTS['apiserver']}"

    def kubeconfig(self, name: str, *, client: Pair | None = None, sa: tuple[str, str] | None = None) -> Path:
        """A kubeconfig for a component: a client certificate, or a ServiceAccount's token."""
        path = RUN / "kubeconfigs" / f"{name}.kubeconfig"
        if sa:
            token = self.kubectl.token(*sa)
            return write_kubeconfig(path, self.server, self.pki.ca.cert, name, token=token, namespace=sa[0])
        return write_kubeconfig(path, self.server, self.pki.ca.cert, name, client=client)


def start_etcd(c: Cluster) -> None:
    client, peer = (f"http://127.0.0.1:{PORTS[p]}" for p in ("etcd", "etcd-peer"))
    spawn(
        "etcd",
        [
            str(c.bin("etcd", "server")),
            "--name=megapod",
            f"--data-dir={RUN / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=megapod={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    wait_for(
        "etcd",
        lambda: json.loads(urllib.request.urlopen(f"{client}/health", timeout=5).read())["health"] == "true",
    )


def start_apiserver(c: Cluster) -> None:
    p = c.pki
    spawn(
        "kube-apiserver",
        [
            str(c.bin("kubernetes", "kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{PORTS['etcd']}",
            "--bind-address=127.0.0.1",
            f"--secure-port={PORTS['apiserver']}",
            # Nothing runs in a pod that would dial the `kubernetes` Service, and Endpoints refuse a
            # loopback address: no reconciler for it.
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p.apiserver.cert}",
            f"--tls-private-key-file={p.apiserver.key}",
            f"--client-ca-file={p.ca.cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={p.service_account_pub}",
            f"--service-account-signing-key-file={p.service_account_key}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Aggregation layer (prometheus-adapter): the front-proxy pair, as kubeadm sets it.
            f"--requestheader-client-ca-file={p.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_client.cert}",
            f"--proxy-client-key-file={p.front_proxy_client.key}",
            "--allow-privileged=true",
            "--profiling=false",
        ],
    )
    write_kubeconfig(c.kubectl.kubeconfig, c.server, p.ca.cert, "admin", client=p.admin)
    wait_for("kube-apiserver", lambda: https_ok(f"{c.server}/readyz", p.ca.cert, p.admin))


def _crds(lws: Path, argo: Path, monitoring: Path) -> list[dict]:
    crd_files = [lws / "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"]
    crd_files += sorted((argo / "manifests/base/crds/minimal").glob("argoproj.io_*.yaml"))
    crd_files += [
        monitoring / f"example/prometheus-operator-crd/monitoring.coreos.com_{kind}.yaml"
        for kind in ("podmonitors", "prometheusrules")
    ]
    return [doc for path in crd_files for doc in load_yaml(path)]


def _lws_webhooks(c: Cluster, lws: Path) -> list[dict]:
    """LWS's webhook configurations (its kustomize patches keep the pod webhooks to LWS pods),
    pointed at the local controller by URL with our CA, as envtest does."""
    upstream = yaml.safe_load((lws / "config/webhook/kustomization.yaml").read_text())
    files = ["manifests.yaml", "mutating-patch.yaml", "validating-patch.yaml", "kustomizeconfig.yaml"]
    built = c.kubectl.kustomize(
        "lws-webhooks",
        lws / "config/webhook",
        files,
        {"namePrefix": "lws-", "patches": upstream["patches"], "configurations": upstream["configurations"]},
    )
    for config in built:
        for webhook in config["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{PORTS['lws-webhook']}{path}",
                "caBundle": b64(c.pki.ca.cert),
            }
    return built


def _adapter_api(c: Cluster) -> list[dict]:
    """The custom metrics APIService, reaching the local adapter through an ExternalName Service
    (the aggregator resolves it to `localhost:<port>`; Endpoints may not hold a loopback address)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(ADAPTER),
        "spec": {
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [{"port": PORTS["adapter"], "name": "https"}],
        },
    }
    api_services = [
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": f"{version}.custom.metrics.k8s.io"},
            "spec": {
                "group": "custom.metrics.k8s.io",
                "version": version,
                "groupPriorityMinimum": 100,
                "versionPriority": priority,
                "caBundle": b64(c.pki.ca.cert),
                "service": {**ADAPTER, "port": PORTS["adapter"]},
            },
        }
        for version, priority in (("v1beta1", 100), ("v1beta2", 200))
    ]
    return [service, *api_services]


def bootstrap(c: Cluster) -> dict[str, Path]:
    """Namespaces, CRDs, upstream RBAC, webhook configurations, APIServices; returns module folders."""
    mods = {
        "lws": module_dir("kubernetes", "sigs.k8s.io/lws"),
        "argo": module_dir("argo-workflows", "github.com/argoproj/argo-workflows/v4"),
        "kwok": module_dir("kwok", "sigs.k8s.io/kwok"),
        "adapter": module_dir("prometheus-adapter", "sigs.k8s.io/prometheus-adapter"),
        "monitoring": module_dir("manifests", "github.com/prometheus-operator/prometheus-operator"),
    }
    namespaces = ["lws-system", "argo", ADAPTER["namespace"]]
    c.kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in namespaces])
    crds = _crds(mods["lws"], mods["argo"], mods["monitoring"])
    c.kubectl.apply(crds)
    c.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[f"crd/{crd['metadata']['name']}" for crd in crds],
    )
    rbac = c.kubectl.kustomize(
        "lws-rbac",
        mods["lws"] / "config/rbac",
        ["role.yaml", "role_binding.yaml", "service_account.yaml"],
        {"namespace": "lws-system", "namePrefix": "lws-"},
    )
    rbac += c.kubectl.kustomize(
        "kwok-rbac",
        mods["kwok"] / "kustomize/rbac",
        ["service_account.yaml", "role.yaml", "role_binding.yaml", "flow_schema.yaml"],
        {},
    )
    rbac += c.kubectl.kustomize(
        "adapter-rbac",
        mods["adapter"] / "deploy/manifests",
        [
            "service-account.yaml",
            "cluster-role.yaml",
            "cluster-role-binding.yaml",
            "cluster-role-binding-delegator.yaml",
            "role-binding-auth-reader.yaml",
        ],
        {},
    )
    argo_files = [
        f"cluster-install-no-crds/workflow-controller-rbac/{f}"
        for f in (
            "workflow-aggregate-roles.yaml",
            "workflow-controller-clusterrole.yaml",
            "workflow-controller-clusterrolebinding.yaml",
            "workflow-controller-role.yaml",
            "workflow-controller-rolebinding.yaml",
        )
    ]
    argo_files += [
        f"cluster-install-no-crds/argo-server-rbac/{f}"
        for f in ("argo-server-clusterole.yaml", "argo-server-clusterolebinding.yaml")
    ]
    argo_files += [
        "base/workflow-controller/workflow-controller-sa.yaml",
        "base/workflow-controller/workflow-controller-configmap.yaml",
        "base/argo-server/argo-server-sa.yaml",
    ]
    rbac += c.kubectl.kustomize("argo-rbac", mods["argo"] / "manifests", argo_files, {"namespace": "argo"})
    tls = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "argo-server-tls", "namespace": "argo"},
        "data": {"tls.crt": b64(c.pki.serving.cert), "tls.key": b64(c.pki.serving.key)},
    }
    c.kubectl.apply([*rbac, *_lws_webhooks(c, mods["lws"]), *_adapter_api(c), tls])
    return mods


def start_lws(c: Cluster) -> None:
    certs = RUN / "lws-certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(c.pki.serving.cert, certs / "tls.crt")
    shutil.copy(c.pki.serving.key, certs / "tls.key")
    config = {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        # Our CA signed the webhook certificate; LWS's own rotator would need an in-cluster Service.
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": PORTS["lws-webhook"], "certDir": str(certs)},
        "metrics": {"bindAddress": "0"},  # controller-runtime: "0" serves no metrics
        "health": {"healthProbeBindAddress": f"127.0.0.1:{PORTS['lws-health']}"},
    }
    (RUN / "lws-config.yaml").write_text(json.dumps(config))
    kubeconfig = c.kubeconfig("lws", sa=("lws-system", "lws-controller-manager"))
    spawn(
        "lws",
        [str(c.bin("kubernetes", "cmd")), f"--config={RUN / 'lws-config.yaml'}"],
        env={"KUBECONFIG": str(kubeconfig)},
    )


def _component_serving(c: Cluster, name: str, kubeconfig: Path) -> list[str]:
    """Flags of a core component's secure port (health), on 127.0.0.1 with our serving pair."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={PORTS[name]}",
        f"--tls-cert-file={c.pki.serving.cert}",
        f"--tls-private-key-file={c.pki.serving.key}",
        "--leader-elect=false",
    ]


def start_controller_manager(c: Cluster) -> None:
    kubeconfig = c.kubeconfig("controller-manager", client=c.pki.controller_manager)
    spawn(
        "kube-controller-manager",
        [
            str(c.bin("kubernetes", "kube-controller-manager")),
            *_component_serving(c, "controller-manager", kubeconfig),
            "--use-service-account-credentials=true",  # each controller as its own SA: real RBAC
            f"--service-account-private-key-file={c.pki.service_account_key}",
            f"--root-ca-file={c.pki.ca.cert}",
            "--horizontal-pod-autoscaler-sync-period=5s",
        ],
    )


def start_scheduler(c: Cluster) -> None:
    kubeconfig = c.kubeconfig("scheduler", client=c.pki.scheduler)
    spawn(
        "kube-scheduler",
        [str(c.bin("kubernetes", "kube-scheduler")), *_component_serving(c, "scheduler", kubeconfig)],
    )


def start_kwok(c: Cluster, kwok: Path) -> None:
    # kwokctl's default stages (kustomize/stage/fast): nodes Ready with lease heartbeats, pods
    # Running/Ready at once, completed, deleted.
    stages = [
        "node/fast/node-initialize.yaml",
        "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
        "pod/fast/pod-ready.yaml",
        "pod/fast/pod-complete.yaml",
        "pod/fast/pod-delete.yaml",
    ]
    config = RUN / "kwok-stages.yaml"
    config.write_text("\n---\n".join((kwok / "kustomize/stage" / s).read_text() for s in stages))
    kubeconfig = c.kubeconfig("kwok", sa=("kube-system", "kwok-controller"))
    key, value = KWOK_NODE_ANNOTATION
    spawn(
        "kwok",
        [
            str(c.bin("kwok", "kwok")),
            f"--kubeconfig={kubeconfig}",
            f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            # The fake kubelet's address is ours: `kubectl logs` would reach kwok, nothing else.
            "--node-ip=127.0.0.1",
            # Not kwok's default pod range 10.0.0.0/24, which may be a real network here.
            f"--cidr={POD_CIDR}",
            f"--node-port={PORTS['kwok']}",
            f"--server-address=127.0.0.1:{PORTS['kwok']}",
            "--node-lease-duration-seconds=40",
        ],
    )


def adapter_argv(c: Cluster, config: Path, prometheus_url: str) -> list[str]:
    """prometheus-adapter's command line (serving the custom metrics API on 127.0.0.1)."""
    kubeconfig = RUN / "kubeconfigs" / "prometheus-adapter.kubeconfig"
    return [
        str(c.bin("prometheus-adapter", "adapter")),
        "--bind-address=127.0.0.1",
        f"--secure-port={PORTS['adapter']}",
        f"--tls-cert-file={c.pki.serving.cert}",
        f"--tls-private-key-file={c.pki.serving.key}",
        f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--prometheus-url={prometheus_url}",
        f"--config={config}",
        "--metrics-relist-interval=10s",
    ]


def chart_adapter_rules() -> list[dict]:
    """The custom-metrics rules charts/triton-lws renders (its adapter-rules ConfigMap, `helm
    template` with each example spec's values), in the adapter's own --config format."""
    sys.path.insert(0, str(ROOT))
    from workflows.chart_values import chart_values
    from workflows.spec import load_spec

    rules: list[dict] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        values = RUN / "manifests" / f"values-{path.stem}.json"
        values.parent.mkdir(parents=True, exist_ok=True)
        values.write_text(json.dumps(chart_values(load_spec(path))))
        argv = [str(HELM), "template", "megapod", str(CHART), "-f", str(values), "--show-only", ADAPTER_RULES]
        rendered = subprocess.run(argv, capture_output=True, text=True)
        if rendered.returncode != 0:
            raise ClusterError(f"helm template {CHART.name} for {path.name}: {rendered.stderr.strip()}")
        config_map = yaml.safe_load(rendered.stdout)
        chart_values_file = yaml.safe_load(config_map["data"]["prometheus-adapter-values.yaml"])
        rules += [rule for rule in chart_values_file["rules"]["custom"] if rule not in rules]
    return rules


def start_adapter(c: Cluster) -> None:
    c.kubeconfig("prometheus-adapter", sa=(ADAPTER["namespace"], ADAPTER["name"]))
    config = RUN / "adapter-config.yaml"
    # Without any rule the adapter serves no custom metrics API at all (cmd/adapter/adapter.go).
    config.write_text(yaml.safe_dump({"rules": chart_adapter_rules()}))
    spawn("prometheus-adapter", adapter_argv(c, config, PROMETHEUS_URL))


def restart_adapter(config: Path, prometheus_url: str) -> None:
    """Restart prometheus-adapter of the running cluster with other rules (its --config file,
    read at start only) and Prometheus; returns once the custom metrics API is available again."""
    if not running():
        raise ClusterError("no cluster is running (make cluster)")
    c = Cluster({group: Path(path) for group, path in json.loads(STATE.read_text())["bins"].items()})
    shutil.copy(config, RUN / "adapter-config.yaml")
    _stop("prometheus-adapter")
    spawn("prometheus-adapter", adapter_argv(c, RUN / "adapter-config.yaml", prometheus_url))
    wait_for("prometheus-adapter", lambda: _api_available(c, "v1beta1.custom.metrics.k8s.io"))


def start_argo(c: Cluster) -> None:
    """workflow-controller and argo-server in a namespace of ours (relay.py says why)."""
    sockets = RUN / "sock"
    sockets.mkdir(exist_ok=True)
    controller = c.kubeconfig("argo-controller", sa=("argo", "argo"))
    server = c.kubeconfig("argo-server", sa=("argo", "argo-server"))
    inbound = [
        {"host": PORTS[name], "netns": port, "socket": str(sockets / f"{name}.sock")}
        for name, port in ARGO_NETNS_PORTS.items()
    ]
    outbound = [
        {"host": PORTS["apiserver"], "netns": PORTS["apiserver"], "socket": str(sockets / "api.sock")}
    ]
    processes = [
        {
            "argv": [str(c.bin("argo-workflows", "workflow-controller")), f"--kubeconfig={controller}"],
            "env": {"LEADER_ELECTION_DISABLE": "true", "KUBECONFIG": str(controller)},
            "log": str(log_path("argo-controller")),
            "pidfile": str(_pidfile("argo-controller")),
        },
        {
            "argv": [
                str(c.bin("argo-workflows", "argo")),
                "server",
                f"--kubeconfig={server}",
                f"--port={ARGO_NETNS_PORTS['argo-server']}",
                "--auth-mode=client",
                "--tls-certificate-secret-name=argo-server-tls",
            ],
            # Client auth mode builds each caller's client from the default loading rules
            # (util/kubeconfig GetBearerRestConfig), i.e. $KUBECONFIG, not --kubeconfig.
            "env": {"KUBECONFIG": str(server)},
            "log": str(log_path("argo-server")),
            "pidfile": str(_pidfile("argo-server")),
        },
    ]
    spec = RUN / "argo-relay.json"
    spec.write_text(json.dumps({"inbound": inbound, "outbound": outbound, "processes": processes}))
    relay = [sys.executable, str(HERE / "relay.py")]
    spawn("argo-relay", [*relay, "host", str(spec)])
    wait_for("argo-relay", lambda: Path(outbound[0]["socket"]).exists())
    spawn("argo-netns", ["unshare", "--net", "--user", "--map-root-user", *relay, "netns", str(spec)])


def fake_nodes() -> list[dict]:
    """kwok nodes for every example spec: one per pod of its groups at the maximum replicas,
    labelled with the spec's node selector (and a placement domain per group), sized as one pod's
    node share, tainted as the spec's tolerations expect."""
    sys.path.insert(0, str(ROOT))
    from workflows.chart_values import chart_values
    from workflows.spec import load_spec

    nodes = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        spec = load_spec(path)
        values, cluster = chart_values(spec), spec.cluster
        capacity = {
            "cpu": cluster.cpu,
            "memory": cluster.memory,
            "pods": "110",
            "nvidia.com/gpu": str(cluster.gpus_per_node),
        }
        if cluster.efa_per_node:
            capacity["vpc.amazonaws.com/efa"] = str(cluster.efa_per_node)
        if cluster.hugepages_2mi:
            capacity["hugepages-2Mi"] = cluster.hugepages_2mi
        taints = [
            {"key": t["key"], "value": t.get("value", "present"), "effect": t["effect"]}
            for t in values["tolerations"]
            if t.get("key") and t.get("effect")
        ]
        topology_key = values["group"]["topology"]["key"]
        for group in range(spec.serving.replicas.max):
            for member in range(spec.group_size):
                name = f"{spec.name}-g{group}-{member}"
                labels = {**values["nodeSelector"], "kubernetes.io/hostname": name, "type": "kwok"}
                if topology_key:
                    labels[topology_key] = f"{spec.name}-domain-{group}"
                nodes.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {
                            "name": name,
                            "labels": labels,
                            "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                        },
                        "spec": {"taints": taints},
                        "status": {"capacity": capacity, "allocatable": capacity},
                    }
                )
    return nodes


def _nodes_ready(c: Cluster, names: list[str]) -> bool:
    items = json.loads(c.kubectl("get", "nodes", "-o", "json"))["items"]
    ready = {
        n["metadata"]["name"]
        for n in items
        if any(x["type"] == "Ready" and x["status"] == "True" for x in n["status"].get("conditions", []))
    }
    return set(names) <= ready


def _webhook_answers(c: Cluster) -> bool:
    """A server-side dry run of an LWS passes LWS's mutating and validating webhooks."""
    probe = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "webhook-probe", "namespace": "default"},
        "spec": {
            "leaderWorkerTemplate": {
                "size": 1,
                "workerTemplate": {"spec": {"containers": [{"name": "c", "image": "probe"}]}},
            }
        },
    }
    c.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe))
    return True


def _api_available(c: Cluster, name: str) -> bool:
    status = json.loads(c.kubectl("get", "apiservice", name, "-o", "json"))["status"]
    return any(x["type"] == "Available" and x["status"] == "True" for x in status.get("conditions", []))


def wait_ready(c: Cluster, nodes: list[str]) -> None:
    """Every component answers (bounded waits; the first that does not is named with its log)."""
    ca, health = c.pki.ca.cert, "https://127.0.0.1:{}/healthz"
    wait_for("lws", lambda: http_ok(f"http://127.0.0.1:{PORTS['lws-health']}/readyz") and _webhook_answers(c))
    wait_for("kube-controller-manager", lambda: https_ok(health.format(PORTS["controller-manager"]), ca))
    wait_for("kube-scheduler", lambda: https_ok(health.format(PORTS["scheduler"]), ca))
    wait_for("kwok", lambda: http_ok(f"http://127.0.0.1:{PORTS['kwok']}/healthz") and _nodes_ready(c, nodes))
    wait_for("prometheus-adapter", lambda: _api_available(c, "v1beta1.custom.metrics.k8s.io"))
    argo = ("argo-relay", "argo-netns")
    wait_for(
        "argo-controller",
        lambda: http_ok(f"http://127.0.0.1:{PORTS['argo-controller-health']}/healthz"),
        processes=(*argo, "argo-controller"),
    )
    wait_for(
        "argo-server",
        lambda: https_ok(f"https://127.0.0.1:{PORTS['argo-server']}/", ca),
        processes=(*argo, "argo-server"),
    )


def describe(c: Cluster, mods: dict[str, Path]) -> dict:
    """What tests and users need to reach the cluster, and the pinned modules' folders (CRDs,
    Argo's JSON schema at api/jsonschema/schema.json)."""
    return {
        "modules": {name: str(path) for name, path in mods.items()},
        "argo_jsonschema": str(mods["argo"] / "api" / "jsonschema" / "schema.json"),
        "kubeconfig": str(c.kubectl.kubeconfig),
        "server": c.server,
        "ca": str(c.pki.ca.cert),
        "argo_server": f"https://127.0.0.1:{PORTS['argo-server']}",
        "kubectl": str(c.kubectl.binary),
        "argo": str(c.bin("argo-workflows", "argo")),
        "bins": {group: str(path) for group, path in c.bins.items()},
        "logs": str(RUN / "logs"),
    }


def running() -> bool:
    """A cluster was started (its description exists) and every process it recorded runs."""
    names = _names() if STATE.exists() else []
    return bool(names) and all(_recorded(name) is not None for name in names)


def up() -> dict:
    """Start the cluster, or report the running one (idempotent)."""
    if running():
        return json.loads(STATE.read_text())
    down()  # a folder left by a failed or half-stopped start
    bins = build()
    started = time.monotonic()
    taken = [f"{name} {port}" for name, port in PORTS.items() if not _port_free(port)]
    if taken:
        raise ClusterError(f"ports already in use on 127.0.0.1: {', '.join(taken)} (another cluster?)")
    for sub in ("pids", "logs", "kubeconfigs"):
        (RUN / sub).mkdir(parents=True, exist_ok=True)
    create_pki(RUN / "pki", SERVICE_IP, [ADAPTER_HOST])
    c = Cluster(bins)
    start_etcd(c)
    start_apiserver(c)
    mods = bootstrap(c)
    # Fail-closed webhooks first (they gate LWS pods), then the rest.
    start_lws(c)
    start_controller_manager(c)
    start_scheduler(c)
    start_kwok(c, mods["kwok"])
    start_adapter(c)
    start_argo(c)
    nodes = fake_nodes()
    c.kubectl.apply(nodes)
    wait_ready(c, [n["metadata"]["name"] for n in nodes])
    state = {**describe(c, mods), "started_in_s": round(time.monotonic() - started, 1)}
    STATE.write_text(json.dumps(state, indent=2))
    return state


def stop_all() -> None:
    """Stop every recorded process by pid, in reverse start order (LWS's webhooks go last)."""
    if (RUN / "pids").exists():
        for name in _names():
            _stop(name)


def down() -> None:
    """Stop every process, then remove the cluster folder (etcd data, certificates, logs)."""
    stop_all()
    if RUN.exists():
        shutil.rmtree(RUN)


def _up() -> int:
    try:
        state = up()
    except (ClusterError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        stop_all()
        print(f"cluster: {detail}", file=sys.stderr)
        print(f"cluster: stopped; logs kept in {RUN / 'logs'} until `make cluster-down`", file=sys.stderr)
        return 1
    print(f"kubeconfig: {state['kubeconfig']}\nargo server: {state['argo_server']} (CA {state['ca']})")
    return 0


def _adapter(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[0]).is_file():
        print(
            "usage: cluster.py adapter CONFIG.yaml PROMETHEUS_URL (CONFIG: the adapter's --config format)",
            file=sys.stderr,
        )
        return 2
    try:
        restart_adapter(Path(argv[0]), argv[1])
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """CLI: up | down | status | adapter CONFIG PROMETHEUS_URL."""
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "adapter":
        return _adapter(rest)
    if rest or command not in ("up", "down", "status"):
        print("usage: cluster.py up|down|status|adapter CONFIG PROMETHEUS_URL", file=sys.stderr)
        return 2
    if command == "down":
        down()
        return 0
    return _up() if command == "up" else (0 if running() else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
