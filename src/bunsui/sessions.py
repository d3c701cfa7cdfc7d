"""``bunsui session ...`` and ``bunsui run``: start, watch and steer sessions.

A session runs in the process that *drives* it: the foreground command
(with a live view), or a driver started in the background (``--detach``).
Every other command reads the shared state (``$BUNSUI_HOME``) or leaves a
request for the driver, so status, logs, cancel and pause work from any
terminal while a session runs.

On AWS (``bunsui config set backend aws``) the stack drives every session:
these commands ask its API, and the foreground ones follow the session to
its end by reading it.

Exit codes of the commands that run a session to its end (``session start``,
``run``, ``session retry``, ``session resume``): 0 when it SUCCEEDED, 1 when
it FAILED or was CANCELLED, 2 for bad input, 130 when interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bunsui.arguments import parse_pairs, read_parameters_file
from bunsui.backends import is_remote, local_only, open_backend
from bunsui.drawing import draw_dot, draw_mermaid
from bunsui.driving import (
    REMOTE_POLL_SECONDS,
    RetryOrder,
    as_json,
    drive,
    exit_code,
    finish,
    read_retry_parameters,
    read_snapshot,
)
from bunsui.output import Format, console, emit
from bunsui.pipelines import FormatOption, ParametersFileOption, ParametersOption, stored_pipeline
from bunsui.progress import (
    human_duration,
    local_time,
    print_summary,
    seconds_between,
    state_dot,
    state_mermaid,
    state_text,
    styled,
)
from engine.errors import BunsuiError, Conflict, PipelineNotFound
from engine.local.timers import now_iso
from engine.parameters import resolve_parameters
from engine.state import Session, SessionStatus

if TYPE_CHECKING:
    from bunsui.backends import Backend

session_app = typer.Typer(
    help="Start, watch and steer sessions (runs of stored pipelines).", no_args_is_help=True
)

SessionIdOption = Annotated[
    str, typer.Option("--session-id", "-s", help="The session's id.", show_default=False)
]
DetachOption = Annotated[
    bool,
    typer.Option(
        "--detach", "-d", help="Run in the background: print the session id and return at once."
    ),
]
TemplateOption = Annotated[
    Path | None,
    typer.Option(
        "--template",
        help="SAM template that maps Lambda function names to local code "
        "(default: template.yaml beside the pipeline).",
    ),
]
LocalMapOption = Annotated[
    Path | None,
    typer.Option(
        "--local-map",
        help="Mapping of job targets to local code and commands "
        "(default: bunsui.local.yaml beside the pipeline).",
    ),
]

REQUEST_WAIT_SECONDS = 30.0
"""How long cancel, pause and resume wait for the driver to apply them."""


class GraphFormat(StrEnum):
    TEXT = "text"
    MERMAID = "mermaid"
    DOT = "dot"


class FileMissing(BunsuiError):
    """A file named by an option does not exist."""


class RetryNotApplied(BunsuiError):
    """The stack accepted a retry but did not apply it in time (on AWS)."""


def _check_files(**paths: Path | None) -> None:
    """Files named by options exist (checked before anything is stored or started)."""
    for option, path in paths.items():
        if path is not None and not path.is_file():
            raise FileMissing(f"--{option.replace('_', '-')} {path}: file not found.")


# ---------------------------------------------------------------------- start / run


def _start(
    backend: Backend,
    name: str,
    parameters: list[str] | None,
    parameters_file: Path | None,
    template: Path | None,
    local_map: Path | None,
) -> Session:
    if is_remote(backend):
        # One request: the API checks the pipeline and the parameters itself.
        values, pairs = read_parameters_file(parameters_file), parse_pairs(parameters or [])
        try:
            return backend.create_session(name, values, pairs)
        except PipelineNotFound:
            stored_pipeline(backend, name)  # raises, with the names that come close
            raise
    stored_pipeline(backend, name)
    values = read_parameters_file(parameters_file)
    pairs = parse_pairs(parameters or [])
    return backend.create_session(name, values, pairs, template=template, mapping=local_map)


@session_app.command("start")
def start(
    pipeline: Annotated[
        str, typer.Option("--pipeline", help="The stored pipeline's name.", show_default=False)
    ],
    parameters: ParametersOption = None,
    parameters_file: ParametersFileOption = None,
    template: TemplateOption = None,
    local_map: LocalMapOption = None,
    detach: DetachOption = False,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Start a session of a stored pipeline (its latest version) and follow it live.

    Exit code 0 when the session succeeded, 1 when it failed or was cancelled.
    """
    backend = open_backend()
    local_only(backend, template=template, local_map=local_map)
    _check_files(parameters_file=parameters_file, template=template, local_map=local_map)
    session = _start(backend, pipeline, parameters, parameters_file, template, local_map)
    finish(backend, session.id, detach, fmt)


def run_file(
    file: Annotated[Path, typer.Argument(help="The pipeline YAML file.", show_default=False)],
    parameters: ParametersOption = None,
    parameters_file: ParametersFileOption = None,
    template: TemplateOption = None,
    local_map: LocalMapOption = None,
    detach: DetachOption = False,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Store a pipeline file (a new version if it changed) and start a session of it.

    Takes the options of session start.
    Exit code 0 when the session succeeded, 1 when it failed or was cancelled.
    """
    backend = open_backend()
    local_only(backend, template=template, local_map=local_map)
    _check_files(parameters_file=parameters_file, template=template, local_map=local_map)
    pipeline, version = backend.save_pipeline(file)
    if fmt is Format.TABLE:
        console().print(f"pipeline '{escape(pipeline.name)}' version {version}", style="dim")
    session = _start(backend, pipeline.name, parameters, parameters_file, template, local_map)
    finish(backend, session.id, detach, fmt)


@session_app.command("drive", hidden=True)
def drive_command(
    session_id: SessionIdOption,
    resume: Annotated[bool, typer.Option("--resume", hidden=True)] = False,
    retry: Annotated[bool, typer.Option("--retry", hidden=True)] = False,
    retry_parameters: Annotated[
        Path | None, typer.Option("--retry-parameters", hidden=True)
    ] = None,
) -> None:
    """Drive a session in this process (what --detach starts in the background)."""
    backend = open_backend()
    if is_remote(backend):
        from bunsui.remote import LocalOnly

        raise LocalOnly("session drive: for the local backend only; on AWS the stack drives.")
    out = console()
    out.print(f"{now_iso()} driving session {session_id} (pid {os.getpid()})")
    order = None
    if retry:
        order = RetryOrder(read_retry_parameters(retry_parameters) if retry_parameters else None)
    snap = drive(backend, session_id, Format.TABLE, resume=resume, retry=order)
    print_summary(out, snap)
    raise typer.Exit(exit_code(snap.session))


# ---------------------------------------------------------------------- status / list


@session_app.command("status")
def status(session_id: SessionIdOption, fmt: FormatOption = Format.TABLE) -> None:
    """Show a session and its jobs (works while another process drives it)."""
    backend = open_backend()
    snap = read_snapshot(backend, session_id)
    if fmt is not Format.TABLE:
        emit(as_json(backend, snap), fmt)
        return
    out = console()
    print_summary(out, snap, started=True)
    if not snap.session.status.terminal and is_remote(backend):
        out.print(f"runs on AWS ({escape(getattr(backend, 'where', ''))}).", style="dim")
    elif not snap.session.status.terminal:
        pid = backend.driver_pid(session_id)
        if pid is None:
            out.print(
                "no process drives this session: continue it with "
                f"'bunsui session resume --session-id {session_id}'.",
                style="yellow",
            )
        else:
            out.print(f"driven by process {pid}.", style="dim")


@session_app.command("list")
def list_sessions(
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="Only sessions of this pipeline.")
    ] = None,
    status_filter: Annotated[
        list[SessionStatus] | None,
        typer.Option("--status", help="Only sessions in this status (may be repeated)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 20,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """List sessions, newest first."""
    backend = open_backend()
    sessions = backend.store.sessions(pipeline, set(status_filter or []) or None, limit)
    if pipeline is not None and not sessions:
        stored_pipeline(backend, pipeline)  # a misspelt name: say so, with close names
    rows = [_list_entry(backend, session) for session in sessions]
    if fmt is not Format.TABLE:
        emit(rows, fmt)
        return
    out = console()
    if not rows:
        out.print("No sessions.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("SESSION", "PIPELINE", "VERSION", "STATUS", "CREATED", "DURATION", "JOBS"):
        table.add_column(column, justify="right" if column in ("VERSION", "JOBS") else "left")
    for row in rows:
        state = styled(row["status"])
        if row["status"] in ("running", "paused") and not row["driven"]:
            state.append(" (no driver)", style="yellow")
        table.add_row(
            row["session_id"],
            escape(row["pipeline"]),
            str(row["pipeline_version"]),
            state,
            local_time(row["created_at"], with_date=True),
            human_duration(row["duration"]),
            f"{row['jobs_finished']}/{row['jobs_total']}",
        )
    out.print(table)


def _list_entry(backend: Backend, session: Session) -> dict[str, Any]:
    live = None if session.status.terminal else datetime.now(UTC)
    duration = seconds_between(session.created_at, session.ended_at, live)
    return {
        "session_id": session.id,
        "pipeline": session.pipeline,
        "pipeline_version": session.version,
        "status": session.status.value,
        "created_at": session.created_at,
        "ended_at": session.ended_at,
        "duration": None if duration is None else round(duration, 3),
        "jobs_total": session.total,
        "jobs_finished": session.finished,
        "jobs_failed": session.failed,
        # On AWS the stack drives every session that has not ended.
        "driven": not session.status.terminal
        and (is_remote(backend) or backend.driver_pid(session.id) is not None),
    }


# ---------------------------------------------------------------------- requests


def _wait_for(
    backend: Backend, session_id: str, done: Callable[[Session], bool], seconds: float
) -> Session:
    remote = is_remote(backend)
    deadline = time.monotonic() + seconds
    session = backend.store.get_session(session_id)
    while not done(session) and time.monotonic() < deadline:
        if not remote and backend.driver_pid(session_id) is None:
            break  # the driver ended (or died) before it applied the request
        time.sleep(REMOTE_POLL_SECONDS if remote else 0.1)
        session = backend.store.get_session(session_id)
    return session


@session_app.command("cancel")
def cancel(
    session_id: SessionIdOption,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in the history.")] = (
        "cancelled by user"
    ),
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the running jobs are stopped.")
    ] = True,
) -> None:
    """Cancel a session: stop its running jobs and skip the rest."""
    backend = open_backend()
    how = backend.request(session_id, "cancel", reason)
    session = backend.store.get_session(session_id)
    if how == "sent" and wait:
        session = _wait_for(backend, session_id, lambda s: s.status.terminal, REQUEST_WAIT_SECONDS)
    out = console()
    if session.status.terminal:
        out.print(f"session {session_id} is {session.status.value}.")
    elif is_remote(backend):
        out.print(f"cancel sent to session {session_id} on AWS; it is {session.status.value}.")
    else:
        out.print(f"cancel sent to the driver of session {session_id}.")


@session_app.command("pause")
def pause(session_id: SessionIdOption) -> None:
    """Pause a session: running jobs finish, no new job starts until resume."""
    backend = open_backend()
    how = backend.request(session_id, "pause")
    session = backend.store.get_session(session_id)
    if how == "sent":
        session = _wait_for(
            backend,
            session_id,
            lambda s: s.status is not SessionStatus.RUNNING,
            REQUEST_WAIT_SECONDS,
        )
    console().print(
        f"session {session_id} is {session.status.value}; continue it with "
        f"'bunsui session resume --session-id {session_id}'."
    )


@session_app.command("resume")
def resume(
    session_id: SessionIdOption,
    detach: DetachOption = False,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Resume a paused session, or drive one whose driver stopped.

    A job that was running when the driver stopped counts as a failed attempt
    (and runs again if it has retries left). Exit codes as for session start.
    """
    backend = open_backend()
    session = backend.store.get_session(session_id)
    if session.status.terminal:
        again = (
            f"; re-run its failed jobs with: bunsui session retry --session-id {session_id}"
            if session.status is not SessionStatus.SUCCEEDED
            else "."
        )
        raise Conflict(f"session '{session_id}' has ended ({session.status.value}){again}")
    if is_remote(backend):
        if session.status is SessionStatus.RUNNING:
            console().print(f"session {session_id} is running on AWS.")
            return
        backend.request(session_id, "resume")
        finish(backend, session_id, detach, fmt)
        return
    pid = backend.driver_pid(session_id)
    if pid is not None and session.status is SessionStatus.RUNNING:
        console().print(f"session {session_id} is running, driven by process {pid}.")
        return
    how = backend.request(session_id, "resume")
    if how == "drive":
        finish(backend, session_id, detach, fmt, resume=True)
        return
    if how == "sent":
        session = _wait_for(
            backend,
            session_id,
            lambda s: s.status is not SessionStatus.PAUSED,
            REQUEST_WAIT_SECONDS,
        )
    console().print(f"session {session_id} is {session.status.value}.")


# ---------------------------------------------------------------------- retry


@session_app.command("retry")
def retry(
    session_id: SessionIdOption,
    parameters: ParametersOption = None,
    parameters_file: ParametersFileOption = None,
    detach: DetachOption = False,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Re-run the failed and cancelled jobs of a session, and the jobs they skipped.

    The jobs that succeeded keep their outputs and do not run again. --parameters
    changes parameter values for the jobs that run again. Exit codes as for session start.
    """
    backend = open_backend()
    _check_files(parameters_file=parameters_file)
    session = backend.store.get_session(session_id)
    if session.status not in (SessionStatus.FAILED, SessionStatus.CANCELLED):
        raise Conflict(
            f"session '{session_id}' is {session.status.value}; only a failed or cancelled "
            "session can be retried."
        )
    if is_remote(backend):
        _retry_remote(backend, session, parameters, parameters_file)
        finish(backend, session_id, detach, fmt)
        return
    values: dict[str, Any] | None = None
    if parameters or parameters_file:
        pipeline = backend.pipeline(session.pipeline, session.version)[0]
        given = {**session.parameters, **read_parameters_file(parameters_file)}
        values = resolve_parameters(pipeline.parameters, given, parse_pairs(parameters or []))
    finish(backend, session_id, detach, fmt, retry=RetryOrder(values))


def _retry_remote(
    backend: Backend,
    session: Session,
    parameters: list[str] | None,
    parameters_file: Path | None,
) -> None:
    """Ask the stack to retry the session; return once it has (the session runs again),
    so following it does not stop at its old end."""
    values = read_parameters_file(parameters_file) if parameters_file else None
    backend.retry(session.id, values, parse_pairs(parameters or []))
    now = _wait_for(
        backend,
        session.id,
        lambda s: not s.status.terminal or s.ended_at != session.ended_at,
        REQUEST_WAIT_SECONDS,
    )
    if now.status.terminal and now.ended_at == session.ended_at:
        raise RetryNotApplied(
            f"the stack has not retried session '{session.id}' within "
            f"{REQUEST_WAIT_SECONDS:g}s: see its reducer's logs and dead-letter queue, and "
            f"bunsui session status --session-id {session.id}"
        )


# ---------------------------------------------------------------------- graph


@session_app.command("graph")
def graph(
    session_id: SessionIdOption,
    fmt: Annotated[
        GraphFormat, typer.Option("--format", help="Drawing format.")
    ] = GraphFormat.TEXT,
) -> None:
    """Draw the session's job graph, each job coloured by its status."""
    backend = open_backend()
    snap = read_snapshot(backend, session_id)
    if fmt is GraphFormat.TEXT:
        console().print(state_text(snap))
        return
    base = draw_mermaid(snap.pipeline) if fmt is GraphFormat.MERMAID else draw_dot(snap.pipeline)
    drawing = (state_mermaid if fmt is GraphFormat.MERMAID else state_dot)(base, snap)
    sys.stdout.write(drawing + "\n")
