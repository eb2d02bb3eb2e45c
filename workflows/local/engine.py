"""Execute a rendered Argo Workflow's DAG on this machine.

Semantics follow Argo where our workflows rely on them:
- a task starts when every task its `depends`/`dependencies` names is done; if the expression
  is false it is Omitted, if its `when` is false it is Skipped;
- independent tasks run at the same time (one thread each, bounded by `parallelism`);
- a DAG fails when a task fails that nobody handles (no `continueOn`, no sibling depending on
  its `.Failed`/`.Errored`); after such a failure no new task of that DAG starts (failFast);
- `retryStrategy` (limit, retryPolicy, backoff) and `activeDeadlineSeconds` apply per node;
- the exit hook (`onExit`) always runs, with `{{workflow.status}}` set, even after a failure
  or Ctrl-C; the workflow fails if the hook fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from workflows.local.documents import Documents, check_features, mutex_names
from workflows.local.errors import LocalRunError
from workflows.local.expressions import (
    ERROR,
    FAILED,
    OMITTED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    depends_of,
    evaluate_when,
    substitute,
    substitute_tree,
)
from workflows.local.nodes import Node, iso, write_json_atomically
from workflows.local.paths import PathMap, under_root
from workflows.local.process import parse_duration, run_attempt

EXIT_KEY = "onExit"
EXECUTED_KEYS = frozenset(
    {"name", "container", "inputs", "outputs", "volumes", "retryStrategy", "activeDeadlineSeconds", "timeout"}
)
PYTHON_NAMES = frozenset({"python", "python3", f"python3.{__import__('sys').version_info.minor}"})
RETRY_ON = {
    "Always": {FAILED, ERROR},
    "OnFailure": {FAILED},
    "OnError": {ERROR},
    "OnTransientError": {ERROR},
}
DEFAULT_RETRY_POLICY = "OnFailure"


@dataclass
class LocalEnvironment:
    """What stands in for the cluster: images -> interpreters, tools, secrets, extra env."""

    images: dict[str, Path]  # container image -> python interpreter of the environment standing in
    path_dirs: list[Path] = field(default_factory=list)  # put before PATH for every task
    env: dict[str, str] = field(default_factory=dict)  # added to every task's environment
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # Secret name -> key -> value
    secrets_hint: str = "pass them to the executor"  # where a missing secret should be provided
    namespace: str = "local"


class NodeFailure(Exception):
    """A node ended Failed or Error (raised inside a task's thread, turned into its phase)."""

    def __init__(self, phase: str, message: str):
        super().__init__(message)
        self.phase = phase


@dataclass
class Scope:
    """Variables visible while a template runs ({{workflow.*}} plus the template's inputs)."""

    values: dict[str, str]
    artifacts: dict[str, Path] = field(default_factory=dict)  # input artifact -> local file from a task
    raw: dict[str, str] = field(default_factory=dict)  # input artifact -> raw text given by the caller

    def child(self, extra: dict[str, str]) -> Scope:
        return Scope({**self.values, **extra})


class Executor:
    """Runs one Workflow (with its exit hook) to completion; see the module docstring."""

    def __init__(
        self,
        documents: Documents,
        run_dir: Path,
        environment: LocalEnvironment,
        *,
        parameters: dict[str, str] | None = None,
        resume: dict[str, dict[str, Any]] | None = None,
        on_change: Callable[[Node], None] | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.documents = documents
        self.run_dir = run_dir
        self.environment = environment
        self.resume = resume or {}
        self.undone = undone_by_exit_hook(self.resume)
        self.on_change = on_change or (lambda node: None)
        self.run_id = run_id or run_dir.name
        self.metadata = metadata or {}
        self.nodes: dict[str, Node] = {}
        self.notes: list[str] = []
        self.stop = threading.Event()
        self.phase = RUNNING
        self.started = time.time()
        self.finished: float | None = None
        self._lock = threading.RLock()
        self._mutexes: dict[str, threading.Lock] = {}
        spec = documents.spec
        limit = spec.get("parallelism")
        self._slots = threading.BoundedSemaphore(int(limit)) if limit else None
        self.deadline_s = float(spec["activeDeadlineSeconds"]) if "activeDeadlineSeconds" in spec else None
        self.parameters = self._workflow_parameters(parameters or {})
        self.globals = self._workflow_scope()

    # --- set-up ------------------------------------------------------------------------------

    def _workflow_parameters(self, overrides: dict[str, str]) -> dict[str, str]:
        declared = self.documents.spec.get("arguments", {}).get("parameters", [])
        values: dict[str, str] = {}
        for parameter in declared:
            name = parameter["name"]
            if name in overrides:
                values[name] = overrides[name]
            elif "value" in parameter:
                values[name] = str(parameter["value"])
            elif "default" in parameter:
                values[name] = str(parameter["default"])
            else:
                raise LocalRunError(f"workflow parameter {name!r} has no value; pass one")
            allowed = parameter.get("enum")
            if allowed and values[name] not in [str(v) for v in allowed]:
                raise LocalRunError(f"workflow parameter {name}={values[name]!r} must be one of {allowed}")
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise LocalRunError(
                f"unknown workflow parameters {unknown}; the workflow declares {sorted(values)}"
            )
        return values

    def _workflow_scope(self) -> dict[str, str]:
        meta = self.documents.workflow.get("metadata", {})
        scope = {
            "workflow.name": self.run_id,
            "workflow.namespace": str(meta.get("namespace", self.environment.namespace)),
            "workflow.uid": str(uuid.uuid5(uuid.NAMESPACE_URL, str(self.run_dir.resolve()))),
            "workflow.serviceAccountName": str(self.documents.spec.get("serviceAccountName", "default")),
            "workflow.creationTimestamp": iso(self.started) or "",
            "workflow.mainEntrypoint": str(self.documents.spec.get("entrypoint")),
            "workflow.parameters.json": json.dumps(
                [{"name": k, "value": v} for k, v in self.parameters.items()]
            ),
        }
        scope.update({f"workflow.parameters.{k}": v for k, v in self.parameters.items()})
        return scope

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> str:
        """Run entrypoint then exit hook; return the workflow phase (Succeeded, Failed or Error)."""
        check = check_features(self.documents)
        self.unknown_images(check.images)
        if summary := check.ignored_summary():
            self.notes.append(summary)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_status()
        spec = self.documents.spec
        watchdog = self._start_deadline_watchdog()
        try:
            with ExitStack() as stack:
                for name in mutex_names(spec):
                    stack.enter_context(self._mutex(name))
                root = self.documents.local_template(spec["entrypoint"], "workflow spec")
                phase = self._run_root(root, "", Scope(dict(self.globals)))
        except KeyboardInterrupt:
            self.stop.set()
            phase = FAILED
            self.notes.append("interrupted (Ctrl-C): running tasks were stopped")
        finally:
            if watchdog:
                watchdog.cancel()
        self.phase = phase
        if spec.get("onExit"):
            phase = self._run_exit_hook(spec["onExit"], phase)
        self.phase = phase
        self.finished = time.time()
        self._write_status()
        return phase

    def _start_deadline_watchdog(self) -> threading.Timer | None:
        if self.deadline_s is None:
            return None

        def expire() -> None:
            self.notes.append(f"workflow activeDeadlineSeconds ({self.deadline_s:g}s) exceeded: stopped")
            self.stop.set()

        timer = threading.Timer(self.deadline_s, expire)
        timer.daemon = True
        timer.start()
        return timer

    def _run_root(self, template: dict[str, Any], key: str, scope: Scope) -> str:
        """The entrypoint: a DAG runs its tasks as nodes; a lone container becomes one node."""
        if "dag" in template:
            return self._run_dag(template, key, scope)
        node = self._node(key or str(template["name"]), str(template["name"]))
        return self._run_node(node, template, scope)

    def _run_exit_hook(self, name: str, phase: str) -> str:
        # A fresh stop flag: the hook runs even after Ctrl-C or the workflow deadline.
        self.stop = threading.Event()
        failures = [
            {"displayName": n.key, "message": n.message, "templateName": n.template, "phase": n.phase,
             "finishedAt": iso(n.finished)}
            for n in self.nodes.values() if n.phase in (FAILED, ERROR)
        ]  # fmt: skip
        scope = Scope(
            {
                **self.globals,
                "workflow.status": phase,
                "workflow.failures": json.dumps(failures),
                "workflow.duration": f"{time.time() - self.started:.3f}",
            }
        )
        template = self.documents.local_template(name, "workflow spec onExit")
        try:
            hook = self._run_root(template, EXIT_KEY, scope)
        except KeyboardInterrupt:
            self.stop.set()
            hook = FAILED
        if hook != SUCCEEDED and phase == SUCCEEDED:
            return FAILED
        return phase

    # --- DAG ---------------------------------------------------------------------------------

    def _run_dag(self, template: dict[str, Any], prefix: str, scope: Scope) -> str:
        """Schedule a DAG's tasks; return the DAG's phase."""
        dag = _DagRun(self, template, prefix, scope)
        for name, task in dag.tasks.items():
            self._node(dag.keys[name], self._template_label(task))
        try:
            dag.schedule()
        finally:
            if any(t.is_alive() for t in dag.threads):
                self.stop.set()  # interrupted: stop what runs, then wait for it to be stopped
            for thread in dag.threads:
                thread.join()
        return FAILED if any(dag.unhandled_failure(name) for name in dag.tasks) else SUCCEEDED

    @staticmethod
    def _failure_refs(dep: Any) -> list[str]:
        """Tasks whose failure a `depends` handles (it names their .Failed or .Errored)."""
        return [t.text.split(".")[0] for t in dep.tokens if t.text.endswith((".Failed", ".Errored"))]

    def _template_label(self, task: dict[str, Any]) -> str:
        ref = task.get("templateRef")
        return f"{ref['name']}/{ref['template']}" if ref else str(task.get("template"))

    def _task_outputs_scope(self, tasks: dict[str, Any], keys: dict[str, str]) -> dict[str, str]:
        """`tasks.<t>.*` variables of the sibling tasks finished so far."""
        values: dict[str, str] = {}
        with self._lock:
            for name in tasks:
                node = self.nodes[keys[name]]
                if not node.done:
                    continue
                values[f"tasks.{name}.status"] = node.phase
                for param, value in node.parameters.items():
                    values[f"tasks.{name}.outputs.parameters.{param}"] = value
                for artifact, path in node.artifacts.items():
                    values[f"tasks.{name}.outputs.artifacts.{artifact}"] = f"{ARTIFACT_MARK}{path}"
        return values

    # --- one task ----------------------------------------------------------------------------

    def _run_task(self, task: dict[str, Any], key: str, scope: Scope) -> None:
        """Bind a task's arguments, evaluate `when`, and run its template as the node `key`."""
        node = self.nodes[key]
        where = f"task {key}"
        try:
            arguments = substitute_tree(task.get("arguments", {}), scope.values, where)
            if "when" in task:
                condition = substitute(str(task["when"]), scope.values, f"{where}: when")
                if not evaluate_when(condition, where):
                    self._finish(node, SKIPPED, f"when `{condition}` is false")
                    return
            template = self.documents.task_template(task, where)
            inputs = self._bind_inputs(template, arguments, scope, where)
        except LocalRunError as exc:
            self._finish(node, ERROR, str(exc))
            return
        if "dag" in template:
            self._start(node)
            phase = self._run_dag(template, key, inputs)
            self._finish(node, phase, "" if phase == SUCCEEDED else "a task of this DAG failed")
            return
        self._run_node(node, template, inputs)

    def _bind_inputs(self, template: dict[str, Any], arguments: Any, caller: Scope, where: str) -> Scope:
        """The scope a template runs in: workflow variables plus its input parameters and artifacts."""
        given = {str(p["name"]): str(p.get("value", "")) for p in arguments.get("parameters", [])}
        # workflow.* from the caller: the exit hook adds workflow.status and workflow.failures.
        values = {**{k: v for k, v in caller.values.items() if k.startswith("workflow.")}, **self.globals}
        inputs = template.get("inputs", {})
        for parameter in inputs.get("parameters", []):
            name = str(parameter["name"])
            if name in given:
                value = given[name]
            elif "value" in parameter or "default" in parameter:
                # Defaults may name workflow variables, e.g. a results dir under {{workflow.name}}.
                fallback = str(parameter.get("value", parameter.get("default")))
                value = substitute(fallback, values, f"{where}: default of input {name}")
            else:
                raise LocalRunError(
                    f"{where}: input parameter {name!r} of template {template['name']} not supplied"
                )
            allowed = parameter.get("enum")
            if allowed and value not in [str(v) for v in allowed]:
                raise LocalRunError(f"{where}: input parameter {name}={value!r} must be one of {allowed}")
            values[f"inputs.parameters.{name}"] = value
        scope = Scope(values)
        passed = {str(a["name"]): a for a in arguments.get("artifacts", [])}
        for artifact in inputs.get("artifacts", []):
            name = str(artifact["name"])
            values[f"inputs.artifacts.{name}.path"] = str(artifact.get("path", ""))
            source = passed.get(name, {})
            if "from" in source:
                text = str(source["from"])
                if not text.startswith(ARTIFACT_MARK):
                    raise LocalRunError(
                        f"{where}: artifact {name}: `from: {text}` is not a task's output artifact"
                    )
                scope.artifacts[name] = self.run_dir / text.removeprefix(ARTIFACT_MARK)
            elif "raw" in source:
                scope.raw[name] = str(source["raw"].get("data", ""))
            elif "raw" not in artifact and not artifact.get("optional"):
                raise LocalRunError(
                    f"{where}: input artifact {name!r} of template {template['name']} not supplied"
                )
        return scope

    # --- one container node ------------------------------------------------------------------

    def _run_node(self, node: Node, template: dict[str, Any], scope: Scope) -> str:
        """Run a container template as `node` (honouring resume, mutexes and retries)."""
        previous = self.resume.get(node.key)
        if previous and node.key in self.undone:
            self.notes.append(
                f"{node.key}: runs again; the earlier run's exit hook undid it ({self.undone[node.key]})"
            )
        elif previous and previous.get("phase") == SUCCEEDED and not node.key.startswith(EXIT_KEY):
            restored = Node.from_json(previous)
            node.parameters, node.artifacts, node.log = restored.parameters, restored.artifacts, restored.log
            node.attempts, node.exit_code, node.resumed = restored.attempts, restored.exit_code, True
            node.started, node.finished = time.time(), time.time()
            self._finish(node, SUCCEEDED, "resumed: succeeded in the earlier run")
            return SUCCEEDED
        self._start(node)
        try:
            with ExitStack() as stack:
                for name in mutex_names(template):
                    node.message = f"waiting for mutex {name}"
                    self._changed(node)
                    stack.enter_context(self._mutex(name))
                if self._slots is not None:
                    stack.enter_context(self._slots)
                node.message = ""
                self._attempts(node, template, scope, self.stop)
        except NodeFailure as exc:
            self._finish(node, exc.phase, str(exc))
        except LocalRunError as exc:
            self._finish(node, ERROR, str(exc))
        else:
            self._finish(node, SUCCEEDED, "")
        return node.phase

    def _attempts(self, node: Node, template: dict[str, Any], scope: Scope, stop: threading.Event) -> None:
        """Run attempts until one succeeds or the retry strategy gives up (raising NodeFailure)."""
        where = f"task {node.key}"
        retry = substitute_tree(template.get("retryStrategy", {}), scope.values, where)
        limit = int(retry.get("limit", 0)) if retry else 0
        policy = str(retry.get("retryPolicy", DEFAULT_RETRY_POLICY))
        if policy not in RETRY_ON:
            raise LocalRunError(f"{where}: retryPolicy {policy!r} is not one of {sorted(RETRY_ON)}")
        backoff = retry.get("backoff", {})
        first = time.monotonic()
        for attempt in range(limit + 1):
            try:
                self._attempt(node, template, scope, attempt, stop)
                return
            except NodeFailure as failure:
                last_attempt = attempt == limit or stop.is_set()
                if last_attempt or failure.phase not in RETRY_ON[policy]:
                    raise
                delay = self._backoff_delay(backoff, attempt, where)
                if "maxDuration" in backoff:
                    max_s = parse_duration(backoff["maxDuration"], f"{where}: backoff.maxDuration")
                    if time.monotonic() - first + delay > max_s:
                        raise NodeFailure(failure.phase, f"{failure}; backoff.maxDuration reached") from None
                node.message = (
                    f"attempt {attempt + 1} {failure.phase.lower()}: {failure}; retrying in {delay:g}s"
                )
                self._changed(node)
                if stop.wait(delay):
                    raise

    @staticmethod
    def _backoff_delay(backoff: dict[str, Any], retries: int, where: str) -> float:
        if "duration" not in backoff:
            return 0.0
        base = parse_duration(backoff["duration"], f"{where}: backoff.duration")
        delay = base * float(backoff.get("factor", 1)) ** retries
        if "cap" in backoff:
            delay = min(delay, parse_duration(backoff["cap"], f"{where}: backoff.cap"))
        return delay

    def _attempt(
        self, node: Node, template: dict[str, Any], scope: Scope, attempt: int, stop: threading.Event
    ) -> None:
        """One run of the container; raises NodeFailure when it fails or its outputs are missing."""
        where = f"task {node.key}"
        task_dir = self.run_dir / "tasks" / node.key
        values = {**scope.values, "retries": str(attempt), "pod.name": self._pod_name(node.key, attempt)}
        # Only what runs is substituted: ignored keys (memoize...) may hold expressions we do not run.
        body = substitute_tree({k: v for k, v in template.items() if k in EXECUTED_KEYS}, values, where)
        paths = self._path_map(body, task_dir, where)
        container = paths.rewrite_tree(body["container"])
        self._write_input_artifacts(body, scope, paths, where)
        env = self._env(container, values, where)
        argv = self._argv(container, body, env, where)
        cwd = paths.local(container["workingDir"]) if "workingDir" in container else task_dir / "work"
        if cwd is None:
            raise LocalRunError(f"{where}: workingDir {container['workingDir']} is not a mounted path")
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = task_dir / "log.txt"
        node.log = str(log_path.relative_to(self.run_dir))
        node.attempts = attempt + 1
        self._changed(node)
        with log_path.open("a") as log:
            log.write(f"--- attempt {attempt + 1} {iso(time.time())}: {' '.join(argv)}\n")
        timeout = float(body["activeDeadlineSeconds"]) if "activeDeadlineSeconds" in body else None
        if "timeout" in body:
            timeout = min(timeout or float("inf"), parse_duration(body["timeout"], f"{where}: timeout"))
        outcome = run_attempt(argv, env=env, cwd=cwd, log_path=log_path, timeout_s=timeout, stop=stop)
        node.exit_code = outcome.exit_code
        self._collect_outputs(node, body, paths, required=outcome.exit_code == 0)
        if outcome.killed_because:
            raise NodeFailure(FAILED, outcome.killed_because)
        if outcome.exit_code != 0:
            raise NodeFailure(FAILED, f"exit code {outcome.exit_code}")

    def _pod_name(self, key: str, attempt: int) -> str:
        return f"{self.run_id}-{key.replace('.', '-')}-{attempt}"

    # --- paths, artifacts, outputs -----------------------------------------------------------

    def _path_map(self, body: dict[str, Any], task_dir: Path, where: str) -> PathMap:
        """Volume mounts -> run folder volumes; pod-private files -> the task's root directory."""
        volumes = {str(v["name"]): v for v in self.documents.spec.get("volumes", [])}
        volumes.update({str(v["name"]): v for v in body.get("volumes", [])})
        claims = {str(c["metadata"]["name"]) for c in self.documents.spec.get("volumeClaimTemplates", [])}
        paths = PathMap()
        for mount in body["container"].get("volumeMounts", []):
            name = str(mount["name"])
            if name in volumes and "emptyDir" in volumes[name]:
                local = task_dir / "volumes" / name
            elif name in volumes and "persistentVolumeClaim" in volumes[name]:
                local = self.run_dir / "volumes" / str(volumes[name]["persistentVolumeClaim"]["claimName"])
            elif name in claims:
                local = self.run_dir / "volumes" / name
            else:
                raise LocalRunError(
                    f"{where}: volumeMount {name!r} names no volume of the workflow or template"
                )
            local = local / str(mount.get("subPath", ""))
            local.mkdir(parents=True, exist_ok=True)
            paths.add(str(mount["mountPath"]), local)
        root = task_dir / "root"
        private: list[str] = [
            str(a["path"]) for a in body.get("inputs", {}).get("artifacts", []) if "path" in a
        ]
        outputs = body.get("outputs", {})
        private += [str(PurePosixPath(p["valueFrom"]["path"]).parent) for p in outputs.get("parameters", [])]
        private += [str(a["path"]) for a in outputs.get("artifacts", [])]
        for container_path in private:
            if paths.local(container_path) is None:
                paths.add(container_path, under_root(root, container_path))
        for parameter in outputs.get("parameters", []):
            paths.local(str(PurePosixPath(parameter["valueFrom"]["path"]).parent)).mkdir(
                parents=True, exist_ok=True
            )
        for artifact in outputs.get("artifacts", []):
            paths.local(str(artifact["path"])).parent.mkdir(parents=True, exist_ok=True)
        return paths

    def _write_input_artifacts(self, body: dict[str, Any], scope: Scope, paths: PathMap, where: str) -> None:
        for artifact in body.get("inputs", {}).get("artifacts", []):
            name = str(artifact["name"])
            target = paths.local(str(artifact["path"]))
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in scope.artifacts:
                _copy(scope.artifacts[name], target)
            elif name in scope.raw or "raw" in artifact:
                data = scope.raw.get(name, artifact.get("raw", {}).get("data", ""))
                # Paths inside raw text (a spec, chart values) name container paths too.
                target.write_text(paths.rewrite(str(data)))
            if "mode" in artifact and target.exists():
                target.chmod(int(artifact["mode"]))

    def _collect_outputs(self, node: Node, body: dict[str, Any], paths: PathMap, *, required: bool) -> None:
        """Read output parameters and copy output artifacts into the run folder."""
        outputs = body.get("outputs", {})
        missing = []
        for parameter in outputs.get("parameters", []):
            name, source = str(parameter["name"]), parameter["valueFrom"]
            local = paths.local(str(source["path"]))
            if local is not None and local.is_file():
                # As Argo would see it: the step only knew local paths, the workflow speaks container paths.
                node.parameters[name] = paths.restore(local.read_text().rstrip("\n"))
            elif "default" in source:
                node.parameters[name] = str(source["default"])
            else:
                missing.append(f"output parameter {name}: {source['path']} was not written (local: {local})")
            if "globalName" in parameter and name in node.parameters:
                self.globals[f"workflow.outputs.parameters.{parameter['globalName']}"] = node.parameters[name]
        for artifact in outputs.get("artifacts", []):
            name = str(artifact["name"])
            local = paths.local(str(artifact["path"]))
            if local is None or not local.exists():
                if not artifact.get("optional"):
                    missing.append(
                        f"output artifact {name}: {artifact['path']} was not written (local: {local})"
                    )
                continue
            kept = self.run_dir / "artifacts" / node.key / name
            if local.is_file():  # as Argo keys it: <key>/<base name>, which keeps the extension
                kept /= PurePosixPath(str(artifact["path"])).name
            _copy(local, kept)
            node.artifacts[name] = str(kept.relative_to(self.run_dir))
        if missing and required:
            raise NodeFailure(ERROR, "; ".join(missing))

    # --- process environment -----------------------------------------------------------------

    def _env(self, container: dict[str, Any], values: dict[str, str], where: str) -> dict[str, str]:
        env = dict(os.environ)
        image = str(container.get("image"))
        python = self._interpreter(image, where)
        dirs = [str(python.parent), *map(str, self.environment.path_dirs), env.get("PATH", "")]
        env["PATH"] = os.pathsep.join(d for d in dirs if d)
        env.update(self.environment.env)
        for source in container.get("envFrom", []):
            secret = str(source["secretRef"]["name"])
            for key, value in self._secret(
                secret, None, where, bool(source["secretRef"].get("optional"))
            ).items():
                env[str(source.get("prefix", "")) + key] = value
        for item in container.get("env", []):
            name = str(item["name"])
            if "valueFrom" not in item:
                env[name] = str(item.get("value", ""))
            elif "secretKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["secretKeyRef"]
                found = self._secret(str(ref["name"]), str(ref["key"]), where, bool(ref.get("optional")))
                if found:
                    env[name] = found[str(ref["key"])]
            else:
                env[name] = self._field(str(item["valueFrom"]["fieldRef"]["fieldPath"]), values)
        return env

    def _field(self, path: str, values: dict[str, str]) -> str:
        return {
            "metadata.name": values["pod.name"],
            "metadata.namespace": values["workflow.namespace"],
            "status.podIP": "127.0.0.1",
            "spec.nodeName": socket.gethostname(),
        }[path]

    def _secret(self, name: str, key: str | None, where: str, optional: bool) -> dict[str, str]:
        secret = self.environment.secrets.get(name)
        if secret is not None and (key is None or key in secret):
            return dict(secret) if key is None else {key: secret[key]}
        if optional:
            return {}
        what = f"key {key!r} of Secret {name!r}" if key else f"Secret {name!r}"
        raise LocalRunError(
            f"{where}: needs {what}, which the local run does not have; {self.environment.secrets_hint}"
        )

    def _interpreter(self, image: str, where: str) -> Path:
        try:
            return self.environment.images[image]
        except KeyError:
            known = ", ".join(sorted(self.environment.images)) or "none"
            raise LocalRunError(f"{where}: image {image!r} has no local stand-in (known: {known})") from None

    def unknown_images(self, images: set[str]) -> None:
        """Refuse, before anything runs, literal images that have no local stand-in."""
        unknown = sorted(i for i in images if "{{" not in i and i not in self.environment.images)
        if unknown:
            known = ", ".join(sorted(self.environment.images)) or "none"
            raise LocalRunError(f"image(s) {', '.join(unknown)} have no local stand-in (known: {known})")

    def _argv(
        self, container: dict[str, Any], body: dict[str, Any], env: dict[str, str], where: str
    ) -> list[str]:
        argv = [str(a) for a in [*container.get("command", []), *container.get("args", [])]]
        if argv[0] in PYTHON_NAMES:
            argv[0] = str(self._interpreter(str(container.get("image")), where))
        else:
            found = shutil.which(argv[0], path=env["PATH"])
            if found is None:
                raise LocalRunError(
                    f"{where}: command {argv[0]!r} is not installed on this machine (PATH searched)"
                )
            argv[0] = found
        return argv

    # --- nodes, status -----------------------------------------------------------------------

    def _node(self, key: str, template: str) -> Node:
        with self._lock:
            node = self.nodes.setdefault(key, Node(key=key, template=template))
        self._changed(node)
        return node

    def _start(self, node: Node) -> None:
        node.phase, node.started = RUNNING, time.time()
        self._changed(node)

    def _finish(self, node: Node, phase: str, message: str) -> None:
        node.phase, node.message = phase, message
        node.finished = time.time()
        if node.started is None:
            node.started = node.finished
        self._changed(node)

    def _changed(self, node: Node) -> None:
        with self._lock:
            self._write_status()
        self.on_change(node)

    def _mutex(self, name: str) -> threading.Lock:
        with self._lock:
            return self._mutexes.setdefault(name, threading.Lock())

    def status(self) -> dict[str, Any]:
        """The run as status.json holds it."""
        return {
            "run_id": self.run_id,
            "workflow": self.documents.name,
            "phase": self.phase,
            "started_at": iso(self.started),
            "finished_at": iso(self.finished),
            "duration_s": round((self.finished or time.time()) - self.started, 3),
            "metadata": self.metadata,
            "parameters": self.parameters,
            "notes": self.notes,
            "nodes": {key: node.to_json() for key, node in self.nodes.items()},
        }

    def _write_status(self) -> None:
        with self._lock:
            if self.run_dir.exists():
                write_json_atomically(self.run_dir / "status.json", self.status())


ARTIFACT_MARK = "artifact://"


class _DagRun:
    """The scheduling state of one DAG template being run."""

    def __init__(self, executor: Executor, template: dict[str, Any], prefix: str, scope: Scope):
        self.executor, self.scope = executor, scope
        self.where = f"template {template['name']}"
        self.tasks = {str(t["name"]): t for t in template["dag"]["tasks"]}
        self.keys = {name: f"{prefix}.{name}" if prefix else name for name in self.tasks}
        self.depends = {n: depends_of(t, f"{self.where}: task {n}") for n, t in self.tasks.items()}
        for name, dep in self.depends.items():
            missing = [t for t in dep.tasks if t not in self.tasks]
            if missing:
                raise LocalRunError(f"{self.where}: task {name} depends on unknown task(s) {missing}")
        self.handled = {ref for dep in self.depends.values() for ref in Executor._failure_refs(dep)}
        self.fail_fast = bool(template["dag"].get("failFast", template.get("failFast", True)))
        self.limit = int(template["parallelism"]) if "parallelism" in template else None
        self.pending = list(self.tasks)
        self.running: set[str] = set()
        self.threads: list[threading.Thread] = []
        self.changed = threading.Condition()

    def phase_of(self, name: str) -> str:
        return self.executor.nodes[self.keys[name]].phase

    def continues(self, name: str, phase: str) -> bool:
        """Whether the task's `continueOn` lets this failure count as done."""
        cont = self.tasks[name].get("continueOn", {})
        return (phase == FAILED and bool(cont.get("failed"))) or (phase == ERROR and bool(cont.get("error")))

    def unhandled_failure(self, name: str) -> bool:
        """A failure that fails the DAG: no continueOn, no sibling depending on it failing."""
        phase = self.phase_of(name)
        return phase in (FAILED, ERROR) and name not in self.handled and not self.continues(name, phase)

    def schedule(self) -> None:
        """Start tasks as their dependencies finish, until every task is done."""
        with self.changed:
            while self.pending or self.running:
                progressed = any([self.consider(name) for name in list(self.pending)])
                if not progressed and self.running:
                    self.changed.wait(timeout=0.5)
                elif not progressed and self.pending:
                    raise LocalRunError(
                        f"{self.where}: tasks {self.pending} can never start (a dependency cycle?)"
                    )

    def consider(self, name: str) -> bool:
        """Decide one pending task if its dependencies are done; True when it was decided."""
        executor = self.executor
        if not all(executor.nodes[self.keys[d]].done for d in self.depends[name].tasks):
            return False
        if self.limit is not None and len(self.running) >= self.limit:
            return False
        self.pending.remove(name)
        node = executor.nodes[self.keys[name]]
        depends = self.depends[name]
        failed = [t for t in self.tasks if self.unhandled_failure(t)]
        if depends.tasks and not depends.evaluate(self.phase_of, self.continues):
            executor._finish(node, OMITTED, f"depends `{depends.expression}` is false")
        elif executor.stop.is_set():
            executor._finish(node, OMITTED, "not started: the workflow was stopped")
        elif self.fail_fast and failed:
            executor._finish(node, OMITTED, f"not started: {', '.join(failed)} failed (failFast)")
        else:
            task_scope = self.scope.child(executor._task_outputs_scope(self.tasks, self.keys))
            self.running.add(name)
            thread = threading.Thread(target=self.run, args=(name, task_scope), daemon=True)
            self.threads.append(thread)
            thread.start()
        return True

    def run(self, name: str, scope: Scope) -> None:
        try:
            self.executor._run_task(self.tasks[name], self.keys[name], scope)
        finally:
            with self.changed:
                self.running.discard(name)
                self.changed.notify_all()


def _workflow_template(label: str) -> str | None:
    """The WorkflowTemplate of a node's template label ("x-deploy/teardown" -> "x-deploy")."""
    return label.split("/", 1)[0] if "/" in label else None


def undone_by_exit_hook(previous: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Earlier nodes whose effects that run's exit hook undid: node key -> the hook node that did.

    A stage's WorkflowTemplate holds both its action and its undoing (deploy and teardown); when the
    exit hook ran a template of a WorkflowTemplate, the main-DAG nodes of that WorkflowTemplate no
    longer stand (the deployment is gone), so --resume must run them again rather than restore
    outputs that point at nothing."""
    hooks = {
        owner: key
        for key, node in previous.items()
        if key.startswith(EXIT_KEY)
        and node.get("phase") == SUCCEEDED
        and (owner := _workflow_template(str(node.get("template", ""))))
    }
    return {
        key: hooks[owner]
        for key, node in previous.items()
        if not key.startswith(EXIT_KEY)
        and (owner := _workflow_template(str(node.get("template", "")))) in hooks
    }


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)
