"""The `megapod` command line. Heavy modules are imported inside commands so --help is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Multi-node LLM serving on Kubernetes as Argo Workflows: validate a spec, render and submit "
    "its workflows, run the whole pipeline locally, report benchmark results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
templates_app = typer.Typer(help="Manage the WorkflowTemplates on the Argo Server.", no_args_is_help=True)
autoscale_app = typer.Typer(help="Autoscaling tools.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
app.add_typer(autoscale_app, name="autoscale")

SpecArg = Annotated[Path, typer.Argument(help="deployment spec (YAML)", show_default=False)]
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

EXIT_SPEC_ERROR = 2


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear error line to stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load(spec_path: Path):  # -> Spec; the import stays lazy
    """Load a spec or exit 2 with one line per problem."""
    from workflows.spec import SpecError, load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        for problem in exc.problems:
            typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_SPEC_ERROR) from None


@app.command()
def validate(spec: SpecArg) -> None:
    """Validate a spec and print the derived plan (group size, world size, memory)."""
    plan = load(spec).summary()
    typer.echo(f"{spec}: valid")
    width = max(len(k) for k in plan)
    for key, value in plan.items():
        typer.echo(f"  {key:<{width}}  {value}")


@app.command()
def images(spec: SpecArg) -> None:
    """Print the docker build commands of the serving and pipeline images for a spec's release."""
    from workflows.images import docker_build_commands

    try:
        commands = docker_build_commands(load(spec))
    except ValueError as exc:
        raise fail(str(exc), EXIT_SPEC_ERROR) from None
    for command in commands:
        typer.echo(command)


@app.command()
def render(
    spec: SpecArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("out"),
) -> None:
    """Write every WorkflowTemplate, the pipeline, the CronWorkflow, chart-values.yaml and rbac.yaml."""
    from workflows.render import OutputError, render_to_dir

    try:
        written = render_to_dir(load(spec), out)
    except OutputError as exc:
        raise fail(str(exc), EXIT_SPEC_ERROR) from None
    for path in written:
        typer.echo(f"wrote {path}")


@app.command()
def lint(
    paths: Annotated[list[Path], typer.Argument(help="rendered YAML files or directories")],
    server: Annotated[
        bool, typer.Option("--server", help="also check the Argo Server (ARGO_SERVER) is new enough")
    ] = False,
) -> None:
    """Validate rendered workflow YAML offline: Argo schema plus references between templates."""
    from workflows.lint import lint_paths
    from workflows.submit import SubmitError, check_argo_server

    problems = lint_paths(paths)
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    checked = ""
    if server:
        try:
            checked = f" (Argo Server {check_argo_server()})"
        except SubmitError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"ok: {', '.join(map(str, paths))}{checked}")


@app.command()
def submit(
    spec: SpecArg,
    watch: Annotated[bool, typer.Option(help="follow the workflow until it finishes")] = False,
    keep: Annotated[bool, typer.Option(help="keep the deployment after the run")] = False,
) -> None:
    """Submit the end-to-end pipeline to the Argo Server (ARGO_SERVER, ARGO_TOKEN, ARGO_NAMESPACE)."""
    from workflows.submit import SubmitError, submit_pipeline

    try:
        code = submit_pipeline(load(spec), watch=watch, keep=keep)
    except SubmitError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)


@templates_app.command("apply")
def templates_apply(spec: SpecArg) -> None:
    """Create or update every WorkflowTemplate and the CronWorkflow on the Argo Server."""
    from workflows.submit import SubmitError, apply_templates

    loaded = load(spec)
    try:
        apply_templates(loaded)
    except SubmitError as exc:
        raise fail(str(exc)) from None
    # The Argo Server cannot create RBAC; say once what the templates expect to exist.
    typer.echo(
        f"note: the templates run as ServiceAccount {loaded.cluster.service_account} (and its -deployer); "
        f"create them once with `megapod render {spec} --out DIR && kubectl apply -f DIR/rbac.yaml`"
    )


@app.command()
def run(
    spec: SpecArg,
    local: Annotated[bool, typer.Option("--local", help="run the DAG on this machine")] = False,
    resume: Annotated[str | None, typer.Option(help="run id or folder to resume")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run folders go")] = Path("runs"),
) -> None:
    """Run the pipeline. Only --local exists: use `megapod submit` for a cluster."""
    if not local:
        raise fail("only `megapod run --local SPEC` runs here; use `megapod submit SPEC` for a cluster")
    from workflows.local import run_local

    raise typer.Exit(run_local(spec, resume=resume, runs_dir=runs_dir))


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def report(ctx: typer.Context) -> None:
    """Build results tables and the HTML report from benchmark exports (see --help)."""
    from reports.cli import main

    raise typer.Exit(main(ctx.args))


@autoscale_app.command("simulate", context_settings=PASS_THROUGH, add_help_option=False)
def autoscale_simulate(ctx: typer.Context) -> None:
    """Predict HPA decisions and serving groups for a demand series (see --help)."""
    from steps.autoscale.simulator import main

    raise typer.Exit(main(ctx.args))


def entrypoint() -> None:
    """Console-script entry point."""
    app(prog_name="megapod")


if __name__ == "__main__":
    sys.exit(entrypoint())
