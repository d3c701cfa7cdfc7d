"""The ``bunsui`` command.

Every error a user can cause ends in exit code 2 and one line per problem on
stderr, never a traceback. Machine-readable output (``--format json|yaml``)
goes to stdout alone.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from bunsui import __version__
from bunsui.arguments import expand_parameters, parse_pairs, read_parameters_file
from bunsui.config import config_app
from bunsui.drawing import draw_dot, draw_mermaid, draw_text
from bunsui.logs import logs_app
from bunsui.output import Format, console, emit, error_console
from bunsui.pipelines import FileOption, FormatOption, ParametersFileOption, ParametersOption
from bunsui.pipelines import register as register_pipeline_commands
from bunsui.schedules import schedule_app
from bunsui.sessions import run_file, session_app
from engine.errors import BunsuiError, PipelineInvalid
from engine.loader import read_pipeline
from engine.parameters import resolve_parameters
from engine.pipeline import Pipeline, pipeline_schema
from engine.plan import JobPlan, Outlook, Plan, make_plan

app = typer.Typer(
    name="bunsui",
    help="Bunsui runs pipelines of AWS jobs described in YAML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
pipeline_app = typer.Typer(
    help="Validate, plan and draw pipeline files; store them as versions.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")
register_pipeline_commands(pipeline_app)
app.add_typer(session_app, name="session")
app.add_typer(logs_app, name="logs")
app.add_typer(schedule_app, name="schedule")
app.add_typer(config_app, name="config")
app.command("run")(run_file)


class GraphFormat(StrEnum):
    TEXT = "text"
    MERMAID = "mermaid"
    DOT = "dot"


class SchemaFormat(StrEnum):
    JSON = "json"
    YAML = "yaml"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bunsui {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Bunsui runs pipelines of AWS jobs described in YAML."""


@pipeline_app.command("validate")
def validate(file: FileOption, fmt: FormatOption = Format.TABLE) -> None:
    """Check a pipeline file; every problem is reported with its line and a fix."""
    try:
        pipeline = read_pipeline(file)
    except PipelineInvalid as exc:
        if fmt is not Format.TABLE:
            emit(
                {
                    "valid": False,
                    "file": str(file),
                    "problems": [p.to_dict() for p in exc.problems],
                },
                fmt,
            )
        raise
    summary = {
        "valid": True,
        "file": str(file),
        "pipeline": pipeline.name,
        "version": pipeline.version,
        "jobs": len(pipeline.jobs),
        "levels": len(pipeline.graph.levels()),
        "parameters": [p.name for p in pipeline.parameters],
    }
    if fmt is not Format.TABLE:
        emit(summary, fmt)
        return
    console().print(
        f"✓ {escape(str(file))}: pipeline '{escape(pipeline.name)}' is valid — "
        f"{summary['jobs']} jobs in {summary['levels']} levels, "
        f"{len(pipeline.parameters)} parameters."
    )


@pipeline_app.command("plan")
def plan(
    file: FileOption,
    parameters: ParametersOption = None,
    parameters_file: ParametersFileOption = None,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Show what a session would run: levels, resolved inputs, decided conditions."""
    pipeline = read_pipeline(file)
    values = read_parameters_file(parameters_file)
    resolved = resolve_parameters(pipeline.parameters, values, parse_pairs(parameters or []))
    result = make_plan(pipeline, resolved)
    if fmt is not Format.TABLE:
        emit(result.to_dict(), fmt)
        return
    _print_plan(pipeline, result)


_OUTLOOK_STYLE = {
    Outlook.RUNS: "green",
    Outlook.SKIPPED_CONDITION: "yellow",
    Outlook.SKIPPED_UPSTREAM: "yellow",
    Outlook.AT_RUN_TIME: "cyan",
    Outlook.IF_UPSTREAM_RUNS: "cyan",
    Outlook.ERROR: "red",
}


def _print_plan(pipeline: Pipeline, result: Plan) -> None:
    out = console()
    out.print(
        f"[bold]Plan[/bold] — {escape(pipeline.name)} (language {pipeline.version}): "
        f"{len(result.jobs)} jobs in {len(result.levels)} levels"
    )
    out.print("\n[bold]Parameters[/bold]")
    width = max((len(name) for name in result.parameters), default=0)
    for name, value in result.parameters.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.print(f"  {escape(name):<{width}}  {escape(text)}")
    for depth, level in enumerate(result.levels):
        parallel = f" — {len(level)} in parallel" if len(level) > 1 else ""
        out.print(f"\n[bold]Level {depth}[/bold]{parallel}")
        for job in level:
            _print_job(out, job)


def _print_job(out: Console, job: JobPlan) -> None:
    style = _OUTLOOK_STYLE[job.outlook]
    out.print(
        f"  [bold]{escape(job.id)}[/bold] — {escape(job.name)} [dim]({job.type})[/dim]  "
        f"[{style}]{escape(job.outlook.value)}[/{style}]"
    )
    notes = []
    if job.depends_on:
        notes.append(
            f"after: {', '.join(job.depends_on)}"
            + (f" ({job.trigger_rule})" if job.trigger_rule != "all_success" else "")
        )
    if job.condition is not None:
        decided = (
            "decided at run time"
            if job.condition_value is None
            else (f"→ {str(job.condition_value).lower()}")
        )
        notes.append(f"condition: {job.condition} {decided}")
    if job.fan_out:
        count = job.fan_out["count"]
        source = job.fan_out.get("source")
        if not isinstance(source, str):
            source = json.dumps(source, ensure_ascii=False)
        fan = (
            f"fan-out: {count} runs"
            if count is not None
            else f"fan-out: over {source} (known at run time)"
        )
        if job.fan_out.get("max_concurrency"):
            fan += f", {job.fan_out['max_concurrency']} at a time"
        notes.append(fan)
    if job.timeout or job.retries:
        limits = []
        if job.timeout:
            limits.append(f"timeout {job.timeout:g}s")
        if job.retries:
            limits.append(f"{job.retries} retries")
        notes.append(", ".join(limits))
    if job.from_upstream:
        notes.append(f"from upstream output: {', '.join(job.from_upstream)}")
    if job.error:
        notes.append(f"[red]error: {escape(job.error)}[/red]")
    for note in notes:
        out.print(f"      [dim]{note if note.startswith('[red]') else escape(note)}[/dim]")
    inputs = yaml.safe_dump(job.inputs, sort_keys=False, allow_unicode=True, width=1000)
    for line in inputs.rstrip().splitlines():
        out.print(f"      {escape(line)}")


@pipeline_app.command("graph")
def graph(
    file: FileOption,
    fmt: Annotated[
        GraphFormat, typer.Option("--format", help="Drawing format.")
    ] = GraphFormat.TEXT,
) -> None:
    """Draw the job graph as text, Mermaid or Graphviz DOT."""
    pipeline = read_pipeline(file)
    drawing = {
        GraphFormat.TEXT: draw_text,
        GraphFormat.MERMAID: draw_mermaid,
        GraphFormat.DOT: draw_dot,
    }[fmt](pipeline)
    sys.stdout.write(drawing + "\n")


@pipeline_app.command("schema")
def schema(
    fmt: Annotated[
        SchemaFormat, typer.Option("--format", help="Output format.")
    ] = SchemaFormat.JSON,
) -> None:
    """Print the JSON Schema of pipeline files (for editor completion and checks)."""
    emit(pipeline_schema(), Format(fmt.value))


def _report(exc: BunsuiError) -> None:
    err = error_console()
    lines = exc.lines() if isinstance(exc, PipelineInvalid) else str(exc).splitlines()
    for line in lines:
        err.print(f"[red]error:[/red] {escape(line)}")
    if isinstance(exc, PipelineInvalid) and len(exc.problems) > 1:
        err.print(f"{len(exc.problems)} problems.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as a script, exits with) the exit code."""
    args = expand_parameters(sys.argv[1:] if argv is None else argv)
    try:
        # Standalone mode: typer answers --help and usage errors itself (exit 2).
        app(args=args, prog_name="bunsui")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BunsuiError as exc:
        _report(exc)
        return 2
    except KeyboardInterrupt:
        error_console().print("interrupted.")
        return 130
    except Exception as exc:  # the last guard: a bug in Bunsui, not the user's input
        if os.environ.get("BUNSUI_DEBUG"):
            traceback.print_exc()
        error_console().print(
            f"[red]internal error:[/red] {escape(type(exc).__name__)}: {escape(str(exc))} "
            "(set BUNSUI_DEBUG=1 for the traceback, and please report it)"
        )
        return 1
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # `python -m bunsui.cli`: how --detach starts a background driver
    run()
