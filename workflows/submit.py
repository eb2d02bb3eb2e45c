"""`megapod submit` and `megapod templates apply`: talk to the Argo Server through Hera.

Configured like the argo CLI: ARGO_SERVER (host:port, or a URL), ARGO_SECURE (default true:
https), ARGO_INSECURE_SKIP_VERIFY, ARGO_BASE_HREF, ARGO_TOKEN, ARGO_NAMESPACE (default: the
spec's cluster.namespace). ARGO_HTTP1 needs no handling: Hera always speaks HTTP/1 REST.
Every failure becomes a SubmitError whose message is one line: what went wrong, what to do.

Before writing anything, the server's version (GET /api/v1/version) is checked against
ARGO_MINIMUM: older controllers silently drop fields the rendered templates rely on (the load
mutex among them), so the two load stages would measure each other without any error.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from workflows.spec import Spec

REQUEST_TIMEOUT_S = 30.0
POLL_S = 10.0
DONE_PHASES = ("Succeeded", "Failed", "Error")
TRUE = ("1", "true", "yes")

# Fields megapod renders and the Argo release that first reads them (pkg/apis/workflow/v1alpha1 at
# each tag); a controller older than the newest of these drops them without an error.
ARGO_FIELDS_SINCE = {
    "CronWorkflow spec.schedules": (3, 6),
    "synchronization.mutexes": (3, 6),
    "retryStrategy.backoff.cap": (3, 7),
}
ARGO_MINIMUM = max(ARGO_FIELDS_SINCE.values())
RELEASE_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)")

T = TypeVar("T")


class SubmitError(RuntimeError):
    """The Argo Server could not be used; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class ArgoServer:
    """Where the Argo Server is and how to authenticate, from the argo CLI's environment."""

    url: str  # scheme://host:port/base-href/ (trailing slash: Hera joins API paths onto it)
    namespace: str
    token: str | None
    verify_ssl: bool

    @classmethod
    def from_env(cls, namespace: str, env: dict[str, str] | None = None) -> ArgoServer:
        """Read ARGO_* variables (`namespace` unless ARGO_NAMESPACE); SubmitError without ARGO_SERVER."""
        env = dict(os.environ if env is None else env)
        server = env.get("ARGO_SERVER", "").strip()
        if not server:
            raise SubmitError(
                "ARGO_SERVER is not set: export ARGO_SERVER=host:port of the Argo Server (e.g. "
                "`kubectl -n argo port-forward svc/argo-server 2746:2746` and ARGO_SERVER=localhost:2746)"
            )
        if "://" not in server:
            secure = env.get("ARGO_SECURE", "true").lower() in TRUE
            server = f"{'https' if secure else 'http'}://{server}"
        base_href = env.get("ARGO_BASE_HREF", "").strip("/")
        url = server.rstrip("/") + (f"/{base_href}" if base_href else "") + "/"
        return cls(
            url=url,
            namespace=env.get("ARGO_NAMESPACE") or namespace,
            token=env.get("ARGO_TOKEN") or None,
            verify_ssl=env.get("ARGO_INSECURE_SKIP_VERIFY", "false").lower() not in TRUE,
        )

    def workflow_link(self, name: str) -> str:
        """The Argo UI page of a workflow."""
        return f"{self.url}workflows/{self.namespace}/{name}"


class _BoundedSession(requests.Session):
    """A session whose requests time out: an unresponsive server must not hang the CLI."""

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
        return super().request(method, url, **kwargs)


def _service(server: ArgoServer):  # -> WorkflowsService; hera stays a lazy import
    from hera.workflows import WorkflowsService

    return WorkflowsService(
        host=server.url,
        token=server.token,
        namespace=server.namespace,
        verify_ssl=server.verify_ssl,
        session=_BoundedSession(),
    )


def _call(server: ArgoServer, action: str, call: Callable[[], T], expected: tuple[type, ...] = ()) -> T:
    """Run one API call, turning failures (other than `expected` ones) into a one-line SubmitError."""
    from hera.exceptions import Forbidden, HeraException, Unauthorized

    try:
        return call()
    except expected:
        raise
    except requests.exceptions.SSLError as exc:
        raise SubmitError(
            f"TLS to the Argo Server at {server.url} failed while trying to {action} "
            f"({exc.__class__.__name__}); for a self-signed certificate set ARGO_INSECURE_SKIP_VERIFY=true, "
            "for plain http ARGO_SECURE=false"
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise SubmitError(
            f"cannot reach the Argo Server at {server.url} to {action} ({exc.__class__.__name__}); "
            "check ARGO_SERVER and that the server (or your port-forward) is running"
        ) from None
    except Unauthorized:
        raise SubmitError(
            f"the Argo Server at {server.url} refused to {action}: 401 unauthorized; set ARGO_TOKEN to a "
            'valid token (e.g. ARGO_TOKEN="Bearer $(kubectl create token <service-account>)")'
        ) from None
    except Forbidden:
        raise SubmitError(
            f"the Argo Server at {server.url} refused to {action}: 403 forbidden in namespace "
            f"{server.namespace}; grant the token's service account that permission or set ARGO_NAMESPACE"
        ) from None
    except HeraException as exc:
        raise SubmitError(f"the Argo Server at {server.url} failed to {action}: {exc}") from None


def version_problem(version: str) -> str | None:
    """Why a server reporting `version` cannot run megapod's templates, or None when it can.

    Release builds report their tag (`v3.7.2`); builds from a branch report `latest+<commit>` or
    `untagged`, and a `go build` without link flags `v0.0.0+unknown`: those cannot be judged and pass.
    """
    match = RELEASE_VERSION.match(version)
    if not match or match.groups() == ("0", "0", "0"):
        return None
    found = tuple(int(part) for part in match.groups())
    if found[:2] >= ARGO_MINIMUM:
        return None
    dropped = [name for name, since in ARGO_FIELDS_SINCE.items() if found[:2] < since]
    minimum = ".".join(map(str, ARGO_MINIMUM))
    return (
        f"Argo {version} is older than v{minimum}, the oldest that keeps {', '.join(dropped)} "
        f"(older controllers drop them silently); upgrade Argo Workflows to v{minimum} or newer"
    )


def check_server_version(server: ArgoServer, service: Any) -> str:
    """The server's version; SubmitError when it is too old for the rendered templates."""
    reported = _call(server, "read its version", service.get_version).version
    problem = version_problem(reported)
    if problem:
        raise SubmitError(f"the Argo Server at {server.url}: {problem}")
    return reported


def check_argo_server(namespace: str = "default") -> str:
    """Check the Argo Server of the ARGO_* environment (megapod lint --server); its version."""
    server = ArgoServer.from_env(namespace)
    return check_server_version(server, _service(server))


def _apply(server: ArgoServer, service: Any, document: Any) -> None:
    """Create one WorkflowTemplate or CronWorkflow; on 409 update it at its current resourceVersion."""
    from hera.exceptions import AlreadyExists
    from hera.workflows.models import (
        CreateCronWorkflowRequest,
        UpdateCronWorkflowRequest,
        WorkflowTemplateCreateRequest,
        WorkflowTemplateUpdateRequest,
    )

    document.namespace = server.namespace
    built = document.build()
    name, kind = document.name, document.kind
    if kind == "CronWorkflow":
        create = lambda: service.create_cron_workflow(CreateCronWorkflowRequest(cron_workflow=built))  # noqa: E731
        get, update_request = (
            service.get_cron_workflow,
            lambda: UpdateCronWorkflowRequest(cron_workflow=built),
        )
        update = service.update_cron_workflow
    else:
        create = lambda: service.create_workflow_template(WorkflowTemplateCreateRequest(template=built))  # noqa: E731
        get, update_request = (
            service.get_workflow_template,
            lambda: WorkflowTemplateUpdateRequest(template=built),
        )
        update = service.update_workflow_template
    try:
        _call(server, f"create {kind} {name}", create, expected=(AlreadyExists,))
        print(f"created {kind} {server.namespace}/{name}")
        return
    except AlreadyExists:
        pass
    current = _call(server, f"read {kind} {name}", lambda: get(name))
    built.metadata.resource_version = current.metadata.resource_version
    _call(server, f"update {kind} {name}", lambda: update(name, update_request()))
    print(f"updated {kind} {server.namespace}/{name}")


def _apply_all(spec: Spec, server: ArgoServer, service: Any) -> None:
    from workflows.argo import documents

    check_server_version(server, service)
    for document in documents(spec):  # stage templates first: the others reference them
        _apply(server, service, document)


def apply_templates(spec: Spec) -> None:
    """Create or update every WorkflowTemplate and the CronWorkflow of `spec` on the Argo Server."""
    server = ArgoServer.from_env(spec.cluster.namespace)
    _apply_all(spec, server, _service(server))


def _pipeline_workflow(spec: Spec, server: ArgoServer, keep: bool) -> Any:
    from hera.workflows import Workflow
    from hera.workflows.models import WorkflowTemplateRef

    from workflows.argo.common import PIPELINE, SPEC_PARAMETER, document_name, labels, spec_text
    from workflows.argo.pipeline import KEEP

    return Workflow(
        generate_name=f"{spec.name}-",
        namespace=server.namespace,
        labels=labels(spec, PIPELINE),
        workflow_template_ref=WorkflowTemplateRef(name=document_name(spec, PIPELINE)),
        arguments={SPEC_PARAMETER: spec_text(spec), KEEP: str(keep).lower()},
    )


def _watch(server: ArgoServer, service: Any, name: str, poll_s: float) -> int:
    """Poll until the workflow finishes; 0 when it succeeded, 1 otherwise."""
    last = None
    while True:
        workflow = _call(server, f"read workflow {name}", lambda: service.get_workflow(name))
        status = workflow.status
        phase = (status.phase if status else None) or "Pending"
        if phase != last:
            message = f": {status.message}" if status and status.message else ""
            print(f"{name}: {phase}{message}")
            last = phase
        if phase in DONE_PHASES:
            return 0 if phase == "Succeeded" else 1
        time.sleep(poll_s)


def submit_pipeline(spec: Spec, *, watch: bool, keep: bool, poll_s: float = POLL_S) -> int:
    """Apply the templates, submit the pipeline, print its UI link; with `watch`, wait for the result."""
    from hera.workflows.models import WorkflowCreateRequest

    server = ArgoServer.from_env(spec.cluster.namespace)
    service = _service(server)
    _apply_all(spec, server, service)
    request = WorkflowCreateRequest(workflow=_pipeline_workflow(spec, server, keep).build())
    created = _call(server, "submit the pipeline", lambda: service.create_workflow(request))
    name = created.metadata.name
    print(f"submitted {server.namespace}/{name}: {server.workflow_link(name)}")
    return _watch(server, service, name, poll_s) if watch else 0
