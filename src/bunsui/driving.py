"""Driving a session from the CLI: here with a live view, or in a background process.

One process at a time drives a session (LocalBackend.drive). The foreground
commands drive it themselves and redraw its progress as it changes;
``--detach`` starts ``python -m bunsui.cli session drive`` in a new process
session, with its output in ``$BUNSUI_HOME/drivers/<id>.log``.

On AWS the stack drives every session: the foreground commands *follow* it,
reading it through the API every REMOTE_POLL_SECONDS, with the same views.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from bunsui.backends import is_remote
from bunsui.output import Format, console, emit, error_console
from bunsui.progress import (
    LiveView,
    PlainProgress,
    Snapshot,
    hints,
    print_summary,
    session_json,
    take_snapshot,
)
from engine.errors import BunsuiError
from engine.local.backend import LocalBackend
from engine.state import Session, SessionStatus

if TYPE_CHECKING:
    from bunsui.backends import Backend

REFRESH_SECONDS = 0.2
"""The live view reads the session at most this often (it redraws 4 times a second)."""
DRIVER_START_SECONDS = 15.0
"""How long --detach waits for the background driver to take the session."""
REMOTE_POLL_SECONDS = 1.0
"""How often a session on AWS is read while the CLI follows it (two API requests a time)."""
REMOTE_READ_TRIES = 5
"""Failed reads in a row after which following a session on AWS gives up."""


class DriverFailed(BunsuiError):
    """The background driver stopped before it took the session."""


@dataclass(frozen=True)
class RetryOrder:
    """Retry the session before driving it, with these parameter values (None: unchanged)."""

    values: Mapping[str, Any] | None = None


def exit_code(session: Session) -> int:
    """0 for SUCCEEDED, 1 for FAILED or CANCELLED (or not ended)."""
    return 0 if session.status is SessionStatus.SUCCEEDED else 1


def read_snapshot(backend: Backend, session_id: str) -> Snapshot:
    """The session and its runs now (SessionNotFound for an unknown id)."""
    session = backend.store.get_session(session_id)
    pipeline = backend.pipeline(session.pipeline, session.version)[0]
    return take_snapshot(backend.store, pipeline, session_id)


def as_json(backend: Backend, snap: Snapshot) -> dict[str, Any]:
    """The session JSON, with the pid of its driver while it runs."""
    driven = None if snap.session.status.terminal else backend.driver_pid(snap.session.id)
    return session_json(snap, driven)


def _live_console(fmt: Format) -> Console | None:
    """Where the live view goes: a terminal, and never stdout when stdout holds JSON."""
    out = Console(highlight=False)
    if fmt is Format.TABLE and out.is_terminal:
        return out
    err = Console(stderr=True, highlight=False)
    return err if err.is_terminal else None


def drive(
    backend: LocalBackend,
    session_id: str,
    fmt: Format,
    *,
    resume: bool = False,
    retry: RetryOrder | None = None,
) -> Snapshot:
    """Drive a session to its end in this process, showing its progress.

    On a terminal: a live view (on stderr when stdout holds JSON). Otherwise, for
    the table format, a line each time a job's status changes.

    Args:
        resume: Lift a pause once this process drives the session.
        retry: Retry the (failed or cancelled) session first.
    """
    live_console = _live_console(fmt)
    view = LiveView(read_snapshot(backend, session_id)) if live_console else None
    lines = PlainProgress(console()) if fmt is Format.TABLE and not live_console else None
    changed = threading.Event()
    done = threading.Event()
    first = True

    def on_event() -> None:  # in the driving thread, after each event
        nonlocal first
        if first:
            first = False
        changed.set()

    def refresh() -> None:
        # Its own thread, so a change shows even when no event follows it for a while.
        while not done.wait(REFRESH_SECONDS):
            if changed.is_set():
                changed.clear()
                try:
                    snap = read_snapshot(backend, session_id)
                except Exception:  # only the display is late: the next tick tries again
                    changed.set()
                    continue
                show(snap)

    def show(snap: Snapshot) -> None:
        if view is not None:
            view.snap = snap
        if lines is not None:
            lines.update(snap)

    refresher = threading.Thread(target=refresh, name="bunsui-progress", daemon=True)
    refresher.start()
    try:
        options: dict[str, Any] = {
            "resume": resume,
            "retry": retry is not None,
            "parameters": retry.values if retry is not None else None,
        }
        if view is None:
            backend.drive(session_id, on_event, **options)
        else:
            with Live(view, console=live_console, refresh_per_second=4, transient=True):
                backend.drive(session_id, on_event, **options)
    except KeyboardInterrupt:
        error_console().print(
            f"interrupted: session {session_id} is left as it is. Continue it with "
            f"'bunsui session resume --session-id {session_id}', or stop it with "
            f"'bunsui session cancel --session-id {session_id}'."
        )
        raise typer.Exit(130) from None
    finally:
        done.set()
        refresher.join()
    snap = read_snapshot(backend, session_id)
    show(snap)
    return snap


def spawn_driver(
    backend: LocalBackend,
    session_id: str,
    *flags: str,
    ready: Callable[[], bool] | None = None,
) -> int:
    """Start ``bunsui session drive`` in the background, detached from this terminal.

    Args:
        ready: What else to wait for once the driver has taken the session.

    Returns:
        The driver's pid, once it has taken the session (or has already ended it).

    Raises:
        DriverFailed: it stopped with an error first (the last line of its log says why).
    """
    log = backend.home / "drivers" / f"{session_id}.log"
    command = [sys.executable, "-m", "bunsui.cli", "session", "drive", "--session-id", session_id]
    env = {**os.environ, "BUNSUI_HOME": str(backend.home)}
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [*command, *flags],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    deadline = time.monotonic() + DRIVER_START_SECONDS
    while time.monotonic() < deadline:
        if backend.driver_pid(session_id) == process.pid and (ready is None or ready()):
            return process.pid
        code = process.poll()
        if code is not None:
            if code in (0, 1):  # it drove the session to its end already
                return process.pid
            lines = [line for line in log.read_text(errors="replace").splitlines() if line]
            reason = lines[-1] if lines else f"exit code {code}"
            raise DriverFailed(f"the background driver of session {session_id} stopped: {reason}")
        time.sleep(0.05)
    return process.pid


def driver_flags(
    backend: LocalBackend, session_id: str, resume: bool, retry: RetryOrder | None
) -> list[str]:
    """The hidden options of ``session drive`` that carry ``resume`` and ``retry``.

    Changed parameter values go through a file only this user can read, not the
    command line, which every user of the machine can see (and values may be secret).
    """
    flags = ["--resume"] if resume else []
    if retry is not None:
        flags.append("--retry")
        if retry.values is not None:
            path = backend.home / "drivers" / f"{session_id}.retry.json"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(dict(retry.values), file)
            flags += ["--retry-parameters", str(path)]
    return flags


def read_retry_parameters(path: Path) -> dict[str, Any]:
    """The values :func:`driver_flags` wrote (the file is removed)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def follow(backend: Backend, session_id: str, fmt: Format) -> Snapshot:
    """Follow a session that the stack drives until it ends, showing its progress as
    :func:`drive` does (a live view on a terminal, else a line per change)."""
    live_console = _live_console(fmt)
    snap = read_snapshot(backend, session_id)
    view = LiveView(snap) if live_console else None
    lines = PlainProgress(console()) if fmt is Format.TABLE and not live_console else None

    def show(snap: Snapshot) -> None:
        if view is not None:
            view.snap = snap
        if lines is not None:
            lines.update(snap)

    shown = (
        Live(view, console=live_console, refresh_per_second=4, transient=True)
        if view is not None
        else contextlib.nullcontext()
    )
    try:
        with shown:
            show(snap)
            failed = 0
            while not snap.session.status.terminal:
                time.sleep(REMOTE_POLL_SECONDS)
                try:
                    snap = take_snapshot(backend.store, snap.pipeline, session_id)
                    failed = 0
                except BunsuiError:
                    failed += 1  # a throttled or lost read: the next one may pass
                    if failed >= REMOTE_READ_TRIES:
                        raise
                    continue
                show(snap)
    except KeyboardInterrupt:
        error_console().print(
            f"stopped following: session {session_id} goes on on AWS. Follow it again with "
            f"'bunsui logs tail --session-id {session_id} --follow', or stop it with "
            f"'bunsui session cancel --session-id {session_id}'."
        )
        raise typer.Exit(130) from None
    return snap


def _finish_remote(backend: Backend, session_id: str, detach: bool, fmt: Format) -> None:
    if detach:
        snap = read_snapshot(backend, session_id)
        if fmt is not Format.TABLE:
            emit(as_json(backend, snap), fmt)
            return
        out = console()
        out.print(f"session {session_id} runs on AWS ({escape(getattr(backend, 'where', ''))}).")
        for line in hints(snap.session):
            out.print(f"  {escape(line)}", style="dim")
        return
    snap = follow(backend, session_id, fmt)
    if fmt is not Format.TABLE:
        emit(as_json(backend, snap), fmt)
    else:
        print_summary(console(), snap)
    raise typer.Exit(exit_code(snap.session))


def finish(
    backend: Backend,
    session_id: str,
    detach: bool,
    fmt: Format,
    *,
    resume: bool = False,
    retry: RetryOrder | None = None,
) -> None:
    """Drive a session here (live view, then the summary or JSON, and the exit code), or
    start a background driver and print the session id.

    On AWS: follow the session the stack drives (its resume or retry was asked of the
    API already), or print its id at once with ``detach``.
    """
    if is_remote(backend):
        _finish_remote(backend, session_id, detach, fmt)
        return
    if detach:
        ended = backend.store.get_session(session_id).ended_at

        def retried() -> bool:  # until then, the session still shows its old end
            return backend.store.get_session(session_id).ended_at != ended

        ready = retried if retry is not None else None
        flags = driver_flags(backend, session_id, resume, retry)
        pid = spawn_driver(backend, session_id, *flags, ready=ready)
        snap = read_snapshot(backend, session_id)
        if fmt is not Format.TABLE:
            emit(as_json(backend, snap), fmt)
            return
        out = console()
        out.print(f"session {session_id} runs in the background (driver pid {pid}).")
        for line in hints(snap.session):
            out.print(f"  {escape(line)}", style="dim")
        return
    snap = drive(backend, session_id, fmt, resume=resume, retry=retry)
    if fmt is not Format.TABLE:
        emit(as_json(backend, snap), fmt)
    else:
        print_summary(console(), snap)
    raise typer.Exit(exit_code(snap.session))
