"""Certificates (openssl) and kubeconfigs for the local control plane.

Layout follows kubeadm: one cluster CA signs the serving certificates and the client certificates
of the core components; a separate front-proxy CA signs the client certificate the aggregator
presents to extension API servers (prometheus-adapter); an RSA key pair signs service-account
tokens. Every serving certificate is for 127.0.0.1 (everything listens there) plus the DNS names
clients verify: the aggregator checks an APIService backend as `<service>.<namespace>.svc`.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3650"
# Names the apiserver is reached by (kubernetes.default.svc for in-cluster clients, none run yet).
APISERVER_NAMES = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
]


@dataclass(frozen=True)
class Pair:
    """A certificate and its key on disk."""

    cert: Path
    key: Path


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.decode().strip()}")
    return result.stdout


def _ca(directory: Path, name: str, subject: str) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        DAYS,
        "-subj",
        subject,
        "-keyout",
        str(pair.key),
        "-out",
        str(pair.cert),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    return pair


def _leaf(directory: Path, name: str, ca: Pair, subject: str, sans: list[str] | None = None) -> Pair:
    """A certificate signed by `ca`: a client certificate without `sans`, a serving one with them."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    usage = "serverAuth,clientAuth" if sans else "clientAuth"
    request = [
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        str(pair.key),
        "-addext",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        request += ["-addext", "subjectAltName=" + ",".join(sans)]
    csr = _openssl(*request)
    _openssl(
        "x509",
        "-req",
        "-days",
        DAYS,
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-copy_extensions",
        "copyall",
        "-out",
        str(pair.cert),
        stdin=csr,
    )
    return pair


@dataclass(frozen=True)
class Pki:
    """Every certificate and key the control plane uses."""

    ca: Pair
    front_proxy_ca: Pair
    front_proxy_client: Pair
    apiserver: Pair
    serving: Pair  # the other servers: webhooks, aggregated API, component health ports, argo-server
    admin: Pair
    controller_manager: Pair
    scheduler: Pair
    service_account_key: Path
    service_account_pub: Path

    @staticmethod
    def paths(directory: Path) -> Pki:
        """The layout under `directory` (whether or not it was created yet)."""

        def pair(name: str) -> Pair:
            return Pair(directory / f"{name}.crt", directory / f"{name}.key")

        return Pki(
            pair("ca"),
            pair("front-proxy-ca"),
            pair("front-proxy-client"),
            pair("apiserver"),
            pair("serving"),
            pair("admin"),
            pair("controller-manager"),
            pair("scheduler"),
            directory / "sa.key",
            directory / "sa.pub",
        )


def create_pki(directory: Path, service_ip: str, extra_serving_names: list[str]) -> Pki:
    """Write a fresh PKI into `directory` (a new cluster: etcd is new too)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca", "/CN=megapod-local-ca")
    front_proxy_ca = _ca(directory, "front-proxy-ca", "/CN=megapod-local-front-proxy-ca")
    loopback = ["IP:127.0.0.1", "DNS:localhost"]
    apiserver_sans = [f"DNS:{n}" for n in APISERVER_NAMES] + ["IP:127.0.0.1", f"IP:{service_ip}"]
    _leaf(directory, "apiserver", ca, "/CN=kube-apiserver", apiserver_sans)
    _leaf(
        directory,
        "serving",
        ca,
        "/CN=megapod-local-serving",
        loopback + [f"DNS:{n}" for n in extra_serving_names],
    )
    _leaf(directory, "front-proxy-client", front_proxy_ca, "/CN=front-proxy-client")
    # The names the apiserver's bootstrap RBAC policy grants to (as kubeadm issues them).
    _leaf(directory, "admin", ca, "/O=system:masters/CN=kubernetes-admin")
    _leaf(directory, "controller-manager", ca, "/CN=system:kube-controller-manager")
    _leaf(directory, "scheduler", ca, "/CN=system:kube-scheduler")
    pki = Pki.paths(directory)
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        str(pki.service_account_key),
    )
    _openssl("pkey", "-in", str(pki.service_account_key), "-pubout", "-out", str(pki.service_account_pub))
    return pki


def b64(path: Path) -> str:
    """A file's content as base64 (caBundle, kubeconfig *-data fields)."""
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    user: str,
    *,
    client: Pair | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> Path:
    """A kubeconfig (JSON is YAML) for one identity: a client certificate or a bearer token."""
    credentials: dict[str, str] = {"token": token} if token else {}
    if client:
        credentials = {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "megapod-local", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {"name": user, "context": {"cluster": "megapod-local", "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path
