"""`megapod lint`: offline checks of rendered Argo documents, one line per problem.

1. Schema: each document against the Argo Workflows v4 JSON schema of its kind, strictly (an
   unknown key is an error, as `kubectl apply --validate=strict` would say). The schema comes
   from MEGAPOD_ARGO_SCHEMA (a file such as Argo's api/jsonschema/schema.json of your release,
   or `hera`), else the JSON schema of Hera's generated Argo models, which every install has.
2. References the schema cannot see: entrypoint/onExit, duplicate template and task names,
   DAG dependencies, templateRefs (to documents linted together), arguments against the called
   template's inputs, and every `{{inputs.parameters.X}}`, `{{tasks.T.outputs.parameters.Y}}`
   and `{{workflow.parameters.Z}}`.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
SCHEMA_ENV = "MEGAPOD_ARGO_SCHEMA"
DEFINITION_PREFIX = "io.argoproj.workflow.v1alpha1."

TAG = re.compile(r"\{\{\s*(.*?)\s*\}\}")
INPUT_REF = re.compile(r"inputs\.parameters(?:\.([\w-]+)|\[['\"]([\w-]+)['\"]\])")
TASK_REF = re.compile(r"tasks\.([\w-]+)\.outputs\.parameters\.([\w-]+)")
WORKFLOW_REF = re.compile(r"workflow\.parameters\.([\w-]+)")
DEPENDS_OPERAND = re.compile(r"([A-Za-z0-9][-\w]*)(?:\.(\w+))?")
DEPENDS_RESULTS = {
    "Succeeded",
    "Failed",
    "Errored",
    "Skipped",
    "Omitted",
    "Daemoned",
    "AnySucceeded",
    "AllFailed",
}


# --- loading ---------------------------------------------------------------------------------------


@dataclass
class Document:
    """One YAML document of a linted file."""

    file: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        metadata = self.body.get("metadata") or {}
        return str(metadata.get("name") or metadata.get("generateName") or "?")

    @property
    def where(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"

    @property
    def workflow_spec(self) -> dict[str, Any]:
        """The WorkflowSpec (a CronWorkflow nests it under spec.workflowSpec)."""
        spec = self.body.get("spec") or {}
        return (spec.get("workflowSpec") or {}) if self.kind == "CronWorkflow" else spec


def _yaml_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            yield path


def load_documents(paths: list[Path], problems: list[str]) -> list[Document]:
    """Argo documents of every file (directories: their *.yaml); other kinds are skipped."""
    from workflows.spec import SpecError, read_yaml

    documents = []
    for path in _yaml_files(paths):
        try:
            bodies = read_yaml(path, "rendered", lambda text: list(yaml.safe_load_all(text)))
        except SpecError as exc:  # missing, not a regular file (a FIFO would block), not UTF-8, not YAML
            problems.extend(exc.problems)
            continue
        for body in bodies:
            if isinstance(body, dict) and body.get("kind") in KINDS:
                documents.append(Document(str(path), body))
    return documents


# --- schema ----------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Forbid keys the schema does not list, in every object that lists its properties."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def schema_source() -> str:
    """Which schema lint uses: a file path, or `hera`."""
    return os.environ.get(SCHEMA_ENV) or "hera"


@functools.cache
def _schema_for(source: str, kind: str) -> dict[str, Any]:
    if source == "hera":
        from hera.workflows import models

        schema = getattr(models, kind).model_json_schema(by_alias=True)
    else:
        definitions = json.loads(Path(source).read_text())["definitions"]
        schema = {"$ref": f"#/definitions/{DEFINITION_PREFIX}{kind}", "definitions": definitions}
    return _strict(copy.deepcopy(schema))


@functools.cache
def _validator(source: str, kind: str) -> Any:
    import jsonschema

    schema = _schema_for(source, kind)
    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)


MAX_MESSAGE = 160


def _leaves(error: Any) -> list[Any]:
    """For an anyOf/oneOf failure, the errors of the alternative that got furthest into the document."""
    if not error.context:
        return [error]
    branches: dict[Any, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    closest = max(
        branches.values(),
        key=lambda errors: max((len(e.absolute_path), e.validator != "type") for e in errors),
    )
    return [leaf for sub in closest for leaf in _leaves(sub)]


def _error_line(error: Any) -> str:
    path = "/".join(str(p) for p in error.absolute_path) or "(document)"
    message = error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + "..."
    return f"{path}: {message}"


def schema_problems(document: Document, source: str) -> list[str]:
    """Schema errors of one document, `file: Kind/name: path: message` each."""
    if source != "hera" and not Path(source).is_file():
        return [f"{document.where}: schema file {source} not found (set {SCHEMA_ENV} to a file or `hera`)"]
    validator = _validator(source, document.kind)
    errors = [leaf for error in validator.iter_errors(document.body) for leaf in _leaves(error)]
    errors.sort(key=lambda e: list(map(str, e.absolute_path)))
    return [f"{document.where}: {_error_line(e)}" for e in errors]


# --- references ------------------------------------------------------------------------------------


@dataclass
class Catalogue:
    """Templates by document name, so templateRefs resolve across the linted files."""

    templates: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, documents: list[Document]) -> Catalogue:
        catalogue = cls()
        for doc in documents:
            if doc.kind in ("WorkflowTemplate", "ClusterWorkflowTemplate"):
                templates = doc.workflow_spec.get("templates") or []
                catalogue.templates[doc.name] = {t.get("name"): t for t in templates if isinstance(t, dict)}
        return catalogue


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a tree with its path, e.g. ('container/args/3', '{{inputs.parameters.x}}')."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}/{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}/{index}")


def _names(items: list[dict[str, Any]] | None) -> set[str]:
    return {str(item.get("name")) for item in items or [] if isinstance(item, dict)}


def _input_names(template: dict[str, Any]) -> set[str]:
    return _names((template.get("inputs") or {}).get("parameters"))


def _required_inputs(template: dict[str, Any]) -> set[str]:
    parameters = (template.get("inputs") or {}).get("parameters") or []
    return {p["name"] for p in parameters if "default" not in p and "value" not in p and "valueFrom" not in p}


def _output_names(template: dict[str, Any]) -> set[str]:
    return _names((template.get("outputs") or {}).get("parameters"))


@dataclass
class ReferenceCheck:
    """Walks one document's templates; `problems` collects one line per broken reference."""

    document: Document
    catalogue: Catalogue
    problems: list[str] = field(default_factory=list)

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.document.where}: {where}: {what}")

    def run(self) -> list[str]:
        spec = self.document.workflow_spec
        templates = [t for t in spec.get("templates") or [] if isinstance(t, dict)]
        local = {}
        for template in templates:
            name = template.get("name")
            if name in local:
                self.problem(f"template {name}", "duplicate template name")
            local[name] = template
        self.local = local
        workflow_parameters = _names((spec.get("arguments") or {}).get("parameters"))
        for key in ("entrypoint", "onExit"):
            if key in spec and spec[key] not in local:
                self.problem(key, f"template {spec[key]!r} does not exist (have: {', '.join(sorted(local))})")
        runnable = self.document.kind in ("Workflow", "CronWorkflow")
        if runnable and "entrypoint" not in spec and "workflowTemplateRef" not in spec:
            self.problem("entrypoint", "missing (and no workflowTemplateRef)")
        for path, text in _strings(spec.get("arguments") or {}, "arguments"):
            self.check_workflow_refs(path, text, workflow_parameters)
        for template in templates:
            self.check_template(template, workflow_parameters)
        return self.problems

    def resolve(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """The template a task calls, or None after recording why it cannot be found."""
        where = f"task {task.get('name')}"
        if "templateRef" in task:
            ref = task["templateRef"] or {}
            document = self.catalogue.templates.get(ref.get("name"))
            if document is None:
                self.problem(where, f"templateRef {ref.get('name')!r} is not among the linted documents")
                return None
            if ref.get("template") not in document:
                self.problem(
                    where,
                    f"templateRef {ref.get('name')} has no template {ref.get('template')!r} "
                    f"(has: {', '.join(sorted(map(str, document)))})",
                )
                return None
            return document[ref["template"]]
        name = task.get("template")
        if name not in self.local:
            self.problem(where, f"template {name!r} does not exist")
            return None
        return self.local[name]

    def check_template(self, template: dict[str, Any], workflow_parameters: set[str]) -> None:
        where = f"template {template.get('name')}"
        inputs = _input_names(template)
        tasks = (template.get("dag") or {}).get("tasks") or []
        called = {}
        task_names: set[str] = set()
        for task in tasks:
            if task.get("name") in task_names:
                self.problem(f"{where}: task {task.get('name')}", "duplicate task name")
            task_names.add(task.get("name"))
            called[task.get("name")] = self.resolve(task)
        for task in tasks:
            self.check_task(where, task, task_names, called)
        for path, text in _strings(template):
            self.check_input_refs(f"{where}: {path}", text, inputs)
            self.check_workflow_refs(f"{where}: {path}", text, workflow_parameters)
            self.check_task_refs(f"{where}: {path}", text, called)

    def check_task(self, where: str, task: dict[str, Any], task_names: set[str], called: dict) -> None:
        at = f"{where}: task {task.get('name')}"
        for dependency in task.get("dependencies") or []:
            if dependency not in task_names:
                self.problem(at, f"dependency {dependency!r} is not a task of this DAG")
        depends = task.get("depends") or ""
        for name, result in DEPENDS_OPERAND.findall(re.sub(r"&&|\|\||[!()]", " ", depends)):
            if name not in task_names:
                self.problem(at, f"depends on {name!r}, which is not a task of this DAG")
            elif result and result not in DEPENDS_RESULTS:
                self.problem(
                    at, f"depends: unknown result .{result} (valid: {', '.join(sorted(DEPENDS_RESULTS))})"
                )
        target = called.get(task.get("name"))
        if target is None:
            return
        passed = _names((task.get("arguments") or {}).get("parameters"))
        declared = _input_names(target)
        for name in sorted(passed - declared):
            self.problem(
                at,
                f"passes parameter {name!r}, which the template does not declare "
                f"(inputs: {', '.join(sorted(declared)) or 'none'})",
            )
        for name in sorted(_required_inputs(target) - passed):
            self.problem(at, f"does not pass required parameter {name!r}")

    def check_input_refs(self, where: str, text: str, inputs: set[str]) -> None:
        for expression in TAG.findall(text):
            for match in INPUT_REF.finditer(expression):
                name = match.group(1) or match.group(2)
                if name not in inputs:
                    self.problem(where, f"{{{{{expression}}}}}: input parameter {name!r} is not declared")

    def check_workflow_refs(self, where: str, text: str, declared: set[str]) -> None:
        for expression in TAG.findall(text):
            for name in WORKFLOW_REF.findall(expression):
                if name not in declared:
                    self.problem(where, f"{{{{{expression}}}}}: workflow parameter {name!r} is not declared")

    def check_task_refs(self, where: str, text: str, called: dict) -> None:
        for expression in TAG.findall(text):
            for task, output in TASK_REF.findall(expression):
                if task not in called:
                    self.problem(where, f"{{{{{expression}}}}}: no task {task!r} in this DAG")
                elif called[task] is not None and output not in _output_names(called[task]):
                    self.problem(
                        where, f"{{{{{expression}}}}}: task {task} has no output parameter {output!r}"
                    )


# --- entry point -----------------------------------------------------------------------------------


def lint_documents(documents: list[Document]) -> list[str]:
    """Schema and reference problems of documents linted together."""
    source = schema_source()
    catalogue = Catalogue.of(documents)
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for document in documents:
        key = (document.kind, document.name)
        if key in seen:
            problems.append(f"{document.where}: also defined in {seen[key]}")
        seen[key] = document.file
        try:
            problems.extend(schema_problems(document, source))
            problems.extend(ReferenceCheck(document, catalogue).run())
        except RecursionError:  # jsonschema and the reference walk recurse per level of nesting
            problems.append(f"{document.where}: nested too deeply to check")
    return problems


def lint_paths(paths: list[Path]) -> list[str]:
    """Lint YAML files and directories; returns one line per problem ("file: where: what")."""
    problems: list[str] = []
    documents = load_documents(paths, problems)
    if not documents and not problems:
        problems.append(f"{', '.join(map(str, paths))}: no Argo Workflows documents found")
    return problems + lint_documents(documents)
