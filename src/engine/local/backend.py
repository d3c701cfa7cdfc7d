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

The driver handles the events queued at one moment as a batch (:class:`EventLoop`):
one SQLite transaction, one commit. What the batch's transitions cause (jobs
started or stopped, timers set) waits in an :class:`Outbox` until that commit,
so nothing outside the store ever sees a transition that is not durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import BunsuiError, Conflict, DispatchFailed
from engine.events import (
    AttemptFinished,
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
from engine.ports import Dispatch, Dispatcher, Secrets, Timers
from engine.reducer import PipelineSource, Reducer, later
from engine.state import JobRun, JobStatus, Session, SessionStatus

LOST = "the local driver stopped while this attempt ran"
POLL_SECONDS = 0.2
"""How often an idle driver looks at its inbox (cancel, pause, resume from other processes)."""
MAX_BATCH_EVENTS = 200
"""At most this many events in one batch (one transaction)."""
BATCH_SECONDS = 0.005
"""A batch takes no further event once it has run this long: the write lock is held briefly."""

_log = logging.getLogger(__name__)


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


class Outbox:
    """The dispatcher and timers a reducer sees inside a batch: what it asks for waits.

    Starts, stops and timers are kept in order and carried out by :meth:`release`
    once the batch has committed, so no work starts (and no timer fires) for a
    transition a crash could still undo. :meth:`dispatch` gives the reducer no
    handle: the loop records the handles it gets in a following write.

    Args:
        dispatcher: What starts and stops the work, after the commit.
        timers: What schedules the events, after the commit.
    """

    def __init__(self, dispatcher: Dispatcher, timers: Timers) -> None:
        self.dispatcher = dispatcher
        self.timers = timers
        self._actions: list[Dispatch | Callable[[], None]] = []

    def dispatch(self, order: Dispatch) -> str | None:
        self._actions.append(order)
        return None

    def stop(self, run: JobRun, job_type: str) -> None:
        self._actions.append(lambda: self._stop(run, job_type))

    def started(self, run: JobRun, job_type: str) -> bool | None:
        """A question, not an order: the dispatcher answers it now."""
        return self.dispatcher.started(run, job_type)

    def schedule(self, event: Event, at: str) -> None:
        self._actions.append(lambda: self.timers.schedule(event, at))

    def discard(self) -> None:
        """Forget what was asked: its batch rolled back, so none of it happened."""
        self._actions.clear()

    def release(self, clock: Callable[[], str]) -> tuple[list[tuple[Dispatch, str]], list[Event]]:
        """Carry out what was asked, in order.

        Returns:
            The orders started with the handle each got, and an AttemptFinished with
            the error for each order that could not start (handled as the reducer
            handles a DispatchFailed: a failed attempt, retried if it may be).
        """
        actions, self._actions = self._actions, []
        started: list[tuple[Dispatch, str]] = []
        failed: list[Event] = []
        for action in actions:
            if not isinstance(action, Dispatch):
                action()
                continue
            try:
                handle = self.dispatcher.dispatch(action)
            except DispatchFailed as exc:
                error = str(exc)
            except Exception as exc:  # its run is claimed: never leave it without an end
                _log.exception("dispatching %s failed", action.dispatch_id)
                error = f"job '{action.key}': cannot start it: {exc}"
            else:
                if handle is not None:
                    started.append((action, handle))
                continue
            failed.append(
                AttemptFinished(action.session_id, action.key, action.attempt, clock(), error=error)
            )
        return started, failed

    def _stop(self, run: JobRun, job_type: str) -> None:
        try:
            self.dispatcher.stop(run, job_type)
        except Exception:  # stopping is best effort (the port says so); go on with the rest
            _log.exception("stopping %s/%s failed", run.session_id, run.key)


class EventLoop:
    """Handles a driven session's events in batches: one SQLite transaction each.

    A batch is the event at hand and those queued behind it (at most
    :data:`MAX_BATCH_EVENTS`, taken while it has run less than
    :data:`BATCH_SECONDS`), handled in one :meth:`SqliteStore.batch`; after the
    commit the :class:`Outbox` starts what they dispatched. If a batch raises,
    it is rolled back (its dispatches dropped) and its events are handled again
    one per batch, so an event that fails takes no other down with it; the first
    error is raised after all were tried.

    Args:
        store: The store (the batches are its transactions).
        dispatcher: Starts and stops work; reports to ``events``.
        timers: Brings events back to ``events``.
        pipelines: The pinned pipeline of a session.
        events: Where the dispatcher and the timers put events.
        clock: The time of the event of a dispatch that failed.
        secrets: The secret parameter values.
    """

    def __init__(
        self,
        store: SqliteStore,
        dispatcher: Dispatcher,
        timers: Timers,
        pipelines: PipelineSource,
        events: queue.Queue[Event] | queue.SimpleQueue[Event],
        clock: Callable[[], str] = now_iso,
        secrets: Secrets | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.clock = clock
        self.outbox = Outbox(dispatcher, timers)
        self.reducer = Reducer(store, self.outbox, self.outbox, pipelines, secrets)
        self._handles: list[tuple[Dispatch, str]] = []
        """Work started whose handle is not yet written: the next batch writes it first."""
        self._watched: str | None = None
        self._status = SessionStatus.RUNNING
        """The watched session's status, read at the end of the last batch (in it)."""

    def step(self, action: Callable[[Reducer], object]) -> None:
        """Run one call of the reducer (start, repair, retry...) as a batch of its own."""
        self._batch(lambda: action(self.reducer))

    def run(
        self,
        session_id: str,
        requests: Callable[[], list[Event]] = list,
        on_event: Callable[[], None] | None = None,
    ) -> Session:
        """Handle events, batch after batch, until the session ends; the ended session.

        Args:
            requests: Events asked for from outside (the inbox): read when the
                loop is idle, and at least every :data:`POLL_SECONDS` when busy.
            on_event: Called after each batch (to redraw progress).
        """
        self._watched = session_id
        status = self.store.session_status(session_id)
        looked = time.monotonic()
        while not status.terminal:
            event = self.next_event(POLL_SECONDS)
            if event is None or time.monotonic() - looked >= POLL_SECONDS:
                for request in requests():
                    self.events.put(request)
                looked = time.monotonic()
            if event is None:
                status = self.store.session_status(session_id)
                continue
            self.handle(event)
            status = self._status
            if on_event:
                on_event()
        return self.store.get_session(session_id)

    def next_event(self, timeout: float) -> Event | None:
        """The next queued event, waiting up to ``timeout`` seconds; None if none came.

        Handles not yet written are written before waiting: an idle loop leaves
        nothing unrecorded.
        """
        try:
            return self.events.get_nowait()
        except queue.Empty:
            pass
        if self._handles:
            self._batch(lambda: None)
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def handle(self, first: Event) -> int:
        """Handle ``first`` and the events queued behind it as one batch.

        Returns:
            How many events were handled.
        """
        taken = [first]

        def work() -> None:
            began = time.monotonic()
            self.reducer.handle(first)
            while len(taken) < MAX_BATCH_EVENTS and time.monotonic() - began < BATCH_SECONDS:
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    return
                taken.append(event)
                self.reducer.handle(event)

        try:
            self._batch(work)
        except Exception:
            if len(taken) == 1:
                raise
            self._one_by_one(taken)
        return len(taken)

    def _one_by_one(self, events: list[Event]) -> None:
        """Handle events that failed as a batch each in a batch of its own; then raise the
        first error, if one still fails."""
        self._batch(lambda: None)  # the handles the failed batch did not write
        error: Exception | None = None
        for event in events:
            try:
                self._batch(lambda event=event: self.reducer.handle(event))
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def _batch(self, work: Callable[[], object]) -> None:
        """``work`` in one transaction, after writing the handles of work started since the
        last one; then, committed, start what it dispatched. On an exception nothing of it
        happened (rolled back, its orders dropped), and it propagates."""
        pending = len(self._handles)
        try:
            with self.store.batch():
                if self._handles:
                    self.store.write_handles(
                        [(o.session_id, o.key, o.attempt, handle) for o, handle in self._handles]
                    )
                work()
                if self._watched is not None:  # read here: no read transaction of its own
                    self._status = self.store.session_status(self._watched)
        except BaseException:
            self.outbox.discard()
            raise
        del self._handles[:pending]
        started, failed = self.outbox.release(self.clock)
        self._handles.extend(started)
        for event in failed:
            self.events.put(event)


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
        # Every event asks: a version once loaded is not read (nor parsed) again.
        known = self._pipelines.get((name, version))
        return known if known is not None else self.pipeline(name, version)[0]

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
        with self.store.batch():  # the session and its roots: all or nothing, one commit
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
        loop = EventLoop(self.store, dispatcher, timers, self._pinned, events, secrets=self.secrets)
        try:
            session = self.store.get_session(session_id)
            pipeline = self._pinned(session.pipeline, session.version)
            if pipeline.timeout and session.created_at:
                due = later(session.created_at, pipeline.timeout)
                timers.schedule(SessionTimedOut(session_id, due), due)
            if retry:
                loop.step(lambda reducer: reducer.retry(session_id, now_iso(), parameters))
            elif _started(self.store.runs(session_id)):
                loop.step(lambda reducer: reducer.repair(session_id, now_iso(), LOST))
            else:
                loop.step(lambda reducer: reducer.handle(SessionStarted(session_id, now_iso())))
            if resume:
                loop.step(lambda reducer: reducer.handle(ResumeRequested(session_id, now_iso())))
            if on_event:
                on_event()
            return loop.run(session_id, lambda: self._inbox(session_id), on_event)
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
        with self.store.batch():  # a cancel of many runs: one commit
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

    def started(self, run: JobRun, job_type: str) -> bool | None:
        return None  # the driver that started it (if it did) kept no trace here
