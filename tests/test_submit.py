"""megapod submit / templates apply against a recording Argo Server stand-in on 127.0.0.1.

The stand-in speaks the Argo Server's REST paths (/api/v1/version, workflow-templates,
cron-workflows, workflows) and records what Hera sends; each test picks how it answers (create,
409, 401) and which version it reports (argo-workflows version.go GetVersion at v4.1.2: a
release reports its tag, other builds `<version>+<commit>`).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workflows.spec import load_spec
from workflows.submit import SubmitError, apply_templates, submit_pipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "workflows" / "examples" / "llama-3.1-8b-1node.yaml"
STAGES = 7  # WorkflowTemplates per spec; plus the pipeline and the CronWorkflow
VERSION_FIELDS = {
    "buildDate": "2026-10-01T00:00:00Z",
    "compiler": "gc",
    "gitCommit": "0" * 40,
    "gitTag": "",
    "gitTreeState": "clean",
    "goVersion": "go1.25.1",
    "platform": "linux/amd64",
}
BODY_KEYS = {"workflow-templates": "template", "cron-workflows": "cronWorkflow", "workflows": "workflow"}


@dataclass
class Recorder:
    """What the stand-in was asked, and how it should answer."""

    mode: str = "create"  # create | exists | unauthorized
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    phases: list[str] = field(default_factory=lambda: ["Running", "Succeeded"])
    version: str = "v4.1.2"


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            recorder.requests.append((method, self.path, body))
            if recorder.mode == "unauthorized":
                return self._reply(401, {"code": 16, "message": "token not valid"})
            parts = self.path.split("?")[0].strip("/").split("/")  # api v1 <kind> <ns> [<name>]
            kind = parts[2]
            if kind == "version":
                return self._reply(200, {**VERSION_FIELDS, "version": recorder.version})
            if method == "POST" and kind == "workflows":
                workflow = body["workflow"]
                workflow["metadata"]["name"] = workflow["metadata"]["generateName"] + "x7k2p"
                return self._reply(200, workflow)
            if method == "POST" and recorder.mode == "exists":
                return self._reply(409, {"code": 6, "message": "already exists"})
            if method in ("POST", "PUT"):
                return self._reply(200, body[BODY_KEYS[kind]])
            if kind == "workflows":  # GET of the submitted workflow while watching
                phase = recorder.phases.pop(0) if len(recorder.phases) > 1 else recorder.phases[0]
                return self._reply(
                    200, {"metadata": {"name": parts[4]}, "spec": {}, "status": {"phase": phase}}
                )
            stored = {"metadata": {"name": parts[4], "resourceVersion": "4242"}, "spec": {}}
            if kind == "cron-workflows":
                stored["spec"] = {"schedules": ["0 3 * * *"], "workflowSpec": {}}
            return self._reply(200, stored)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

    return Handler


@pytest.fixture
def argo_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A recording Argo Server stand-in on a free 127.0.0.1 port, ARGO_* pointing at it."""
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ARGO_SERVER", f"127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("ARGO_SECURE", "false")
    monkeypatch.setenv("ARGO_TOKEN", "test-token")
    monkeypatch.delenv("ARGO_NAMESPACE", raising=False)
    monkeypatch.delenv("ARGO_BASE_HREF", raising=False)
    yield recorder
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def spec():
    return load_spec(EXAMPLE)


def test_apply_creates_every_template_then_the_cron(argo_server: Recorder, spec) -> None:
    apply_templates(spec)
    posts = [(path, body) for method, path, body in argo_server.requests if method == "POST"]
    assert argo_server.requests[0][:2] == ("GET", "/api/v1/version")  # checked before any write
    assert [p for p, _ in posts] == [f"/api/v1/workflow-templates/{spec.cluster.namespace}"] * (
        STAGES + 1
    ) + [f"/api/v1/cron-workflows/{spec.cluster.namespace}"]
    names = [body.get("template", body.get("cronWorkflow"))["metadata"]["name"] for _, body in posts]
    assert names[0] == f"{spec.name}-download" and names[-2:] == [
        f"{spec.name}-pipeline",
        f"{spec.name}-benchmark-nightly",
    ]


def test_apply_updates_on_409_with_the_current_resource_version(argo_server: Recorder, spec) -> None:
    argo_server.mode = "exists"
    apply_templates(spec)
    puts = [(path, body) for method, path, body in argo_server.requests if method == "PUT"]
    assert len(puts) == STAGES + 2
    path, body = puts[0]
    assert path == f"/api/v1/workflow-templates/{spec.cluster.namespace}/{spec.name}-download"
    assert body["template"]["metadata"]["resourceVersion"] == "4242"
    assert puts[-1][1]["cronWorkflow"]["metadata"]["resourceVersion"] == "4242"


def test_submit_sends_the_spec_and_keep_and_prints_the_ui_link(argo_server: Recorder, spec, capsys) -> None:
    assert submit_pipeline(spec, watch=False, keep=True) == 0
    method, path, body = argo_server.requests[-1]
    assert (method, path) == ("POST", f"/api/v1/workflows/{spec.cluster.namespace}")
    workflow = body["workflow"]
    assert workflow["spec"]["workflowTemplateRef"] == {"name": f"{spec.name}-pipeline"}
    arguments = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert arguments["keep"] == "true" and f"name: {spec.name}" in arguments["spec"]
    link = f"/workflows/{spec.cluster.namespace}/{spec.name}-x7k2p"
    assert link in capsys.readouterr().out


def test_submit_watch_returns_by_phase(argo_server: Recorder, spec) -> None:
    argo_server.phases = ["Pending", "Running", "Succeeded"]
    assert submit_pipeline(spec, watch=True, keep=False, poll_s=0.01) == 0
    argo_server.phases = ["Running", "Failed"]
    assert submit_pipeline(spec, watch=True, keep=False, poll_s=0.01) == 1


def test_namespace_from_argo_namespace(argo_server: Recorder, spec, monkeypatch) -> None:
    monkeypatch.setenv("ARGO_NAMESPACE", "team-llm")
    apply_templates(spec)
    _method, path, body = argo_server.requests[1]
    assert path == "/api/v1/workflow-templates/team-llm"
    assert body["template"]["metadata"]["namespace"] == "team-llm"


def test_401_is_one_clear_line(argo_server: Recorder, spec) -> None:
    argo_server.mode = "unauthorized"
    with pytest.raises(SubmitError) as failure:
        apply_templates(spec)
    message = str(failure.value)
    assert "401" in message and "ARGO_TOKEN" in message and "\n" not in message
    assert len(argo_server.requests) == 1  # stops at the first refusal


def test_connection_refused_is_one_clear_line(monkeypatch, spec) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("ARGO_SERVER", f"127.0.0.1:{port}")
    monkeypatch.setenv("ARGO_SECURE", "false")
    with pytest.raises(SubmitError) as failure:
        submit_pipeline(spec, watch=False, keep=False)
    message = str(failure.value)
    assert "cannot reach the Argo Server" in message and "ARGO_SERVER" in message and "\n" not in message


def test_missing_argo_server_says_what_to_set(monkeypatch, spec) -> None:
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    with pytest.raises(SubmitError, match="ARGO_SERVER is not set"):
        apply_templates(spec)


def test_cli_submit_exits_1_with_the_error_line(monkeypatch) -> None:
    from typer.testing import CliRunner

    from workflows.cli import app

    monkeypatch.setenv("ARGO_SERVER", "127.0.0.1:9")  # discard port: refused on loopback
    monkeypatch.setenv("ARGO_SECURE", "false")
    result = CliRunner().invoke(app, ["submit", str(EXAMPLE)])
    assert result.exit_code == 1
    assert "error: cannot reach the Argo Server" in result.output


@pytest.mark.parametrize("version", ["v3.5.8", "v3.6.10"])
def test_an_older_server_is_refused_before_any_write(argo_server: Recorder, spec, version) -> None:
    """3.5 drops `schedules` and `synchronization.mutexes`, 3.6 drops `backoff.cap`
    (pkg/apis/workflow/v1alpha1/{workflow,cron_workflow}_types.go at v3.5.0, v3.6.0, v3.7.0)."""
    argo_server.version = version
    with pytest.raises(SubmitError) as failure:
        submit_pipeline(spec, watch=False, keep=False)
    message = str(failure.value)
    assert f"Argo {version} is older than v3.7" in message and "\n" not in message
    assert "retryStrategy.backoff.cap" in message
    assert ("synchronization.mutexes" in message) == version.startswith("v3.5")
    assert [method for method, *_ in argo_server.requests] == ["GET"]


@pytest.mark.parametrize("version", ["v3.7.0", "v4.0.0", "v0.0.0+unknown", "latest+1a2b3c4", "untagged"])
def test_new_or_unversioned_servers_are_accepted(argo_server: Recorder, spec, version) -> None:
    argo_server.version = version
    apply_templates(spec)
    assert any(method == "POST" for method, *_ in argo_server.requests)


def test_lint_server_reports_the_version_or_refuses(argo_server: Recorder, tmp_path) -> None:
    from typer.testing import CliRunner

    from workflows.cli import app
    from workflows.render import render_to_dir

    render_to_dir(load_spec(EXAMPLE), tmp_path)
    workflows = str(tmp_path / "workflows")
    result = CliRunner().invoke(app, ["lint", workflows, "--server"])
    assert result.exit_code == 0 and "(Argo Server v4.1.2)" in result.output
    argo_server.version = "v3.6.2"
    result = CliRunner().invoke(app, ["lint", workflows, "--server"])
    assert result.exit_code == 1 and "error: the Argo Server at" in result.output
    assert "upgrade Argo Workflows to v3.7 or newer" in result.output
