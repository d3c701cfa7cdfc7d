"""The local backend: the engine on one machine, wired from its parts.

State lives in ``$BUNSUI_HOME`` (default ``./.bunsui``): ``state.db`` (SQLite,
WAL), ``logs/`` (each attempt's output), ``sessions/`` (where a session's
local code is), ``drivers/`` (which process drives which session) and
``inbox/`` (requests from other processes: cancel, pause, resume) and
``secrets/`` (secret parameter values, readable by the user alone).

One process at a time *drives* a session: it owns the in-process event
queue, the timers and the running jobs. Any other process may read the
session or leave a request in its inbox. If the driver dies (even kill -9),
``resume`` makes a new one, which repairs the session: attempts that were
running count as failed (and retry if they may), nothing that succeeded runs
again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import BunsuiError, Conflict
from engine.events import (
    CancelRequested,
    Event,
    PauseRequested,
    ResumeRequested,
    SessionStarted,
    SessionTimedOut,
)
from engine.loader import load_pipeline, read_pipeline
from engine.local.resolve import LocalResolver
from engine.local.runners import LocalDispatcher, LogBook
from engine.local.secrets import FileSecrets
from engine.local.store import SqliteStore
from engine.local.timers import LocalTimers, now_iso
from engine.parameters import resolve_parameters
from engine.pipeline import Pipeline
from engine.reducer import Reducer, later
from engine.state import JobRun, JobStatus, Session, SessionStatus

LOST = "the local driver stopped while this attempt ran"
POLL_SECONDS = 0.2


def default_home() -> Path:
    return Path(os.environ.get("BUNSUI_HOME", ".bunsui"))


@dataclass(frozen=True)
class Origin:
    """Where a session's local code is: the pipeline's folder, template and mapping."""

    base_dir: str
    template: str | None = None
    mapping: str | None = None

    def resolver(self) -> LocalResolver:
        """What finds the session's local code."""
        return LocalResolver(
            Path(self.base_dir),
            Path(self.template) if self.template else None,
            Path(self.mapping) if self.mapping else None,
        )


class _NoTimers:
    """Timers of a process that does not drive: the driver schedules for itself."""

    def schedule(self, event: Event, at: str) -> None:
        pass


class LocalBackend:
    """The engine on SQLite, threads and subprocesses.

    Args:
        home: The state folder (``$BUNSUI_HOME`` or ``./.bunsui``).
    """

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or default_home()).resolve()
        for folder in ("logs", "sessions", "drivers", "inbox"):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(self.home / "state.db")
        self.logs = LogBook(self.home / "logs")
        self.secrets = FileSecrets(self.home / "secrets")
        self._pipelines: dict[tuple[str, int], Pipeline] = {}

    # ------------------------------------------------------------------ pipelines

    def save_pipeline(self, path: Path) -> tuple[Pipeline, int]:
        """Validate a pipeline file and store it as a new version (the same text: the same
        version); remember its folder for the local runners."""
        pipeline = read_pipeline(path)
        text = path.read_text(encoding="utf-8")
        checksum = hashlib.sha256(text.encode()).hexdigest()
        version = self.store.put_pipeline_version(pipeline.name, text, checksum, now_iso())
        origins = self._origins()
        origins[pipeline.name] = str(path.resolve().parent)
        (self.home / "pipelines.json").write_text(json.dumps(origins, indent=2))
        return pipeline, version

    def pipeline(self, name: str, version: int | None = None) -> tuple[Pipeline, int]:
        """A stored pipeline version (the latest when None)."""
        number, text = self.store.get_pipeline_version(name, version)
        key = (name, number)
        if key not in self._pipelines:
            self._pipelines[key] = load_pipeline(text, f"{name} (version {number})")
        return self._pipelines[key], number

    def _pinned(self, name: str, version: int) -> Pipeline:
        return self.pipeline(name, version)[0]

    def _origins(self) -> dict[str, str]:
        path = self.home / "pipelines.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # ------------------------------------------------------------------ sessions

    def create_session(
        self,
        name: str,
        values: Mapping[str, Any] | None = None,
        text_values: Mapping[str, str] | None = None,
        *,
        template: Path | None = None,
        mapping: Path | None = None,
    ) -> Session:
        """Check the parameters and write a new session of the latest version; nothing
        runs until a driver takes it (:meth:`drive`)."""
        pipeline, version = self.pipeline(name)
        parameters = resolve_parameters(pipeline.parameters, values, text_values)
        session_id = f"{now_iso()[:10].replace('-', '')}-{uuid.uuid4().hex[:12]}"
        origin = Origin(
            self._origins().get(name, str(Path.cwd())),
            str(template.resolve()) if template else None,
            str(mapping.resolve()) if mapping else None,
        )
        # A broken template or mapping file is an error now, not when a job needs it.
        origin.resolver().load()
        self._origin_file(session_id).write_text(json.dumps(origin.__dict__))
        reducer = Reducer(self.store, _Inert(), _NoTimers(), self._pinned, self.secrets)
        return reducer.create(pipeline, version, parameters, session_id, now_iso())

    def _origin_file(self, session_id: str) -> Path:
        return self.home / "sessions" / f"{session_id}.json"

    def origin(self, session_id: str) -> Origin:
        path = self._origin_file(session_id)
        if not path.exists():
            return Origin(str(Path.cwd()))
        return Origin(**json.loads(path.read_text()))

    # ------------------------------------------------------------------ driving

    def driver_pid(self, session_id: str) -> int | None:
        """The pid of the live process driving the session, if any."""
        path = self.home / "drivers" / f"{session_id}.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return None if _zombie(pid) else pid

    def drive(
        self,
        session_id: str,
        on_event: Callable[[], None] | None = None,
        *,
        resume: bool = False,
        retry: bool = False,
        parameters: Mapping[str, Any] | None = None,
    ) -> Session:
        """Drive a session until it ends: the caller's thread runs the event loop.

        Starts a new session, or repairs one whose driver died. Returns the
        ended session.

        Args:
            session_id: The session.
            on_event: Called after each event is handled (to redraw progress).
            resume: Lift a pause once this process drives the session.
            retry: Retry the (failed or cancelled) session first.
            parameters: With ``retry``: new checked parameter values, if any.

        Raises:
            Conflict: another live process drives this session, or ``retry`` was
                asked of a session that did not fail.
        """
        lock = self.home / "drivers" / f"{session_id}.pid"
        self._take(lock, session_id)
        events: queue.Queue[Event] = queue.Queue()
        timers = LocalTimers(events.put)
        dispatcher = LocalDispatcher(
            events.put,
            self.origin(session_id).resolver(),
            self.logs,
            now_iso,
            child_sessions=self._child_session,
        )
        reducer = Reducer(self.store, dispatcher, timers, self._pinned, self.secrets)
        try:
            session = self.store.get_session(session_id)
            pipeline = self._pinned(session.pipeline, session.version)
            if pipeline.timeout and session.created_at:
                due = later(session.created_at, pipeline.timeout)
                timers.schedule(SessionTimedOut(session_id, due), due)
            if retry:
                reducer.retry(session_id, now_iso(), parameters)
            elif _started(self.store.runs(session_id)):
                reducer.repair(session_id, now_iso(), LOST)
            else:
                reducer.handle(SessionStarted(session_id, now_iso()))
            if resume:
                reducer.handle(ResumeRequested(session_id, now_iso()))
            if on_event:
                on_event()
            while not self.store.get_session(session_id).status.terminal:
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    for request in self._inbox(session_id):
                        events.put(request)
                    continue
                reducer.handle(event)
                if on_event:
                    on_event()
            return self.store.get_session(session_id)
        finally:
            # Work still running when the loop stops (an interrupt) must not outlive the
            # driver: a resume counts those attempts as failed and runs them again.
            dispatcher.close()
            timers.close()
            with contextlib.suppress(OSError):
                lock.unlink()

    def _take(self, lock: Path, session_id: str) -> None:
        pid = self.driver_pid(session_id)
        if pid is not None and pid != os.getpid():
            raise Conflict(
                f"session '{session_id}' is driven by process {pid}; use session status, "
                "cancel, pause or resume from here."
            )
        lock.write_text(str(os.getpid()))

    def _child_session(self, path: Path, values: dict[str, Any]) -> Any:
        """Run another pipeline file as a child session (a step_function mapped locally);
        its output is the merged outputs of its last jobs."""
        pipeline, _ = self.save_pipeline(path)
        session = self.create_session(pipeline.name, values)
        ended = self.drive(session.id)
        if ended.status is not SessionStatus.SUCCEEDED:
            raise BunsuiError(f"child session {ended.id} of '{pipeline.name}' {ended.status.value}")
        output: dict[str, Any] = {}
        for job_id in pipeline.graph.jobs:
            if not pipeline.graph.children(job_id):
                run = self.store.get_run(ended.id, job_id)
                if run is not None and isinstance(run.output, dict):
                    output.update(run.output)
        return output

    # ------------------------------------------------------------------ requests

    def request(self, session_id: str, kind: str, reason: str = "cancelled by user") -> str:
        """Cancel, pause or resume a session from any process.

        Returns:
            ``"sent"`` when a live driver will apply it, ``"applied"`` when it was
            applied here, ``"drive"`` when resuming needs a new driver (the caller
            should :meth:`drive` the session).
        """
        session = self.store.get_session(session_id)
        if session.status.terminal:
            raise Conflict(f"session '{session_id}' has ended ({session.status.value}).")
        if self.driver_pid(session_id) is not None:
            inbox = self.home / "inbox" / session_id
            inbox.mkdir(parents=True, exist_ok=True)
            name = f"{now_iso()}-{uuid.uuid4().hex[:8]}.json"
            (inbox / name).write_text(json.dumps({"kind": kind, "reason": reason}))
            return "sent"
        if kind == "resume":
            return "drive"
        reducer = Reducer(self.store, _Inert(), _NoTimers(), self._pinned, self.secrets)
        reducer.handle(_request_event(session_id, kind, reason))
        return "applied"

    def _inbox(self, session_id: str) -> list[Event]:
        inbox = self.home / "inbox" / session_id
        if not inbox.is_dir():
            return []
        found = []
        for path in sorted(inbox.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(path.read_text())
                found.append(_request_event(session_id, data["kind"], data.get("reason", "")))
            with contextlib.suppress(OSError):
                path.unlink()
        return found


def _started(runs: list[JobRun]) -> bool:
    """Whether a session's runs show it was driven before (a new one has its roots waiting)."""
    return any(run.attempt or run.status is not JobStatus.WAITING for run in runs)


def _zombie(pid: int) -> bool:
    """A driver killed with -9 stays a zombie until its parent reaps it: dead all the same."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _request_event(session_id: str, kind: str, reason: str) -> Event:
    now = now_iso()
    if kind == "cancel":
        return CancelRequested(session_id, now, reason or "cancelled by user")
    if kind == "pause":
        return PauseRequested(session_id, now)
    if kind == "resume":
        return ResumeRequested(session_id, now)
    raise ValueError(kind)


class _Inert:
    """The dispatcher of a process that does not drive: it can stop work, never start it."""

    def dispatch(self, order: Any) -> str | None:
        raise BunsuiError("this process does not drive the session")

    def stop(self, run: JobRun, job_type: str) -> None:
        from engine.local.runners import stop_handle

        stop_handle(run.handle)
