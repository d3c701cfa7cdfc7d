"""``bunsui schedule create|list|delete``: sessions a stack starts on a schedule (AWS only).

A schedule is an EventBridge Scheduler schedule of the stack: at each time
its cron expression names, the stack starts a session of the pipeline's
latest version with the schedule's parameter values (``--parameters`` texts
are converted by their declared types then, as ``session start`` does).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bunsui.arguments import parse_pairs, read_parameters_file
from bunsui.backends import is_remote, open_backend
from bunsui.output import Format, console, emit
from bunsui.pipelines import FormatOption, ParametersFileOption, ParametersOption
from bunsui.progress import local_time
from engine.errors import BunsuiError

if TYPE_CHECKING:
    from bunsui.remote import AwsBackend

schedule_app = typer.Typer(
    help="Start sessions on a schedule (on AWS: EventBridge Scheduler).", no_args_is_help=True
)


class SchedulesNeedAws(BunsuiError):
    """Schedules are kept by a deployed stack; the local backend has none."""


def _aws() -> AwsBackend:
    backend = open_backend()
    if not is_remote(backend):
        raise SchedulesNeedAws(
            "schedules run on AWS: bunsui config set backend aws (and aws.stack_name)."
        )
    return backend  # type: ignore[return-value]


def default_name(pipeline: str, cron: str) -> str:
    """A schedule's name when none is given: the pipeline's, and a hash of the expression."""
    stem = re.sub(r"[^0-9A-Za-z_.-]+", "-", pipeline).strip("-")[:40] or "schedule"
    return f"{stem}-{hashlib.sha256(cron.encode()).hexdigest()[:8]}"


@schedule_app.command("create")
def create(
    pipeline: Annotated[
        str, typer.Option("--pipeline", help="The stored pipeline's name.", show_default=False)
    ],
    cron: Annotated[
        str,
        typer.Option(
            "--cron",
            help="When: six cron fields ('0 6 * * ? *'), cron(...) or rate(...), as "
            "EventBridge Scheduler reads them.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="The schedule's name (default: the pipeline's and a hash)."),
    ] = None,
    timezone: Annotated[
        str, typer.Option("--timezone", help="The time zone of the cron fields.")
    ] = "UTC",
    parameters: ParametersOption = None,
    parameters_file: ParametersFileOption = None,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Start a session of a pipeline at each time a cron expression names."""
    backend = _aws()
    body: dict[str, Any] = {
        "name": name or default_name(pipeline, cron),
        "pipeline": pipeline,
        "cron": cron,
        "timezone": timezone,
        "parameters": read_parameters_file(parameters_file) if parameters_file else {},
        "parameter_text": parse_pairs(parameters or []),
    }
    record = backend.create_schedule(body)
    if fmt is not Format.TABLE:
        emit(record, fmt)
        return
    console().print(
        f"✓ schedule '{escape(record['name'])}' starts '{escape(record['pipeline'])}' at "
        f"{escape(record['cron'])} ({escape(record['timezone'])})."
    )


@schedule_app.command("list")
def list_schedules(fmt: FormatOption = Format.TABLE) -> None:
    """List the stack's schedules."""
    found = _aws().list_schedules()
    if fmt is not Format.TABLE:
        emit(found, fmt)
        return
    out = console()
    if not found:
        out.print("No schedules. Create one with: bunsui schedule create --pipeline NAME --cron …")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "PIPELINE", "CRON", "TIMEZONE", "STATE", "PARAMETERS", "CREATED"):
        table.add_column(column)
    for item in found:
        given = {**item.get("parameters", {}), **item.get("parameter_text", {})}
        table.add_row(
            escape(item["name"]),
            escape(item["pipeline"]),
            escape(item["cron"]),
            escape(item["timezone"]),
            escape(item.get("state") or ""),
            escape(json.dumps(given, ensure_ascii=False) if given else ""),
            local_time(item.get("created_at"), with_date=True),
        )
    out.print(table)


@schedule_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="The schedule's name.", show_default=False)],
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Delete a schedule (sessions it started go on)."""
    _aws().delete_schedule(name)
    if fmt is not Format.TABLE:
        emit({"schedule": name, "deleted": True}, fmt)
        return
    console().print(f"✓ schedule '{escape(name)}' deleted.")
