"""The local driver: one SQLite transaction for many events, nothing started, stopped or
scheduled before the transition that caused it is committed, and waits without polling.

The store's :meth:`SqliteStore.batch` is checked against a second store object on
the same file (its own connection: it sees only what was committed). The driver's
:class:`EventLoop` runs the real reducer with a dispatcher that looks at the
database, through that second connection, at the moment it is asked to start work.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.errors import DispatchFailed, SessionNotFound
from engine.events import AttemptFinished, CancelRequested, Event, HistoryEntry, SessionStarted
from engine.loader import load_pipeline
from engine.local import backend as local_backend
from engine.local.backend import EventLoop
from engine.local.runners import _ended_within
from engine.local.store import SqliteStore
from engine.ports import Dispatch
from engine.state import JobRun, JobStatus, Outcome, Session, SessionStatus

T0 = "2026-01-01T00:00:00+00:00"
SID = "s-1"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(path) as made:
        yield made


@pytest.fixture
def other(path: Path, store: SqliteStore) -> Iterator[SqliteStore]:
    """Another connection to the same file: it sees only what was committed."""
    with SqliteStore(path) as made:
        yield made


def new_session(store: SqliteStore, session_id: str = SID) -> Session:
    session = Session(session_id, "p", 1, {}, total=3)
    store.create_session(session)
    return session


# ---------------------------------------------------------------- the store's batch


def test_a_batch_is_seen_by_other_connections_only_once_it_commits(store, other):
    new_session(store)
    with store.batch():
        assert store.put_run(JobRun(SID, "a", "a"))
        store.count_finished(SID, failed=True)
        assert store.get_run(SID, "a") is not None  # its own writes, inside
        assert other.get_run(SID, "a") is None
        assert other.get_session(SID).finished == 0
    assert other.get_run(SID, "a") is not None
    assert other.get_session(SID).failed == 1


def test_an_exception_leaving_a_batch_undoes_every_write_of_it(store, other):
    new_session(store)
    with pytest.raises(RuntimeError), store.batch():
        store.put_run(JobRun(SID, "a", "a"))
        store.append_history(HistoryEntry(SID, T0, "job_dispatched", "a", 1, {}))
        raise RuntimeError("boom")
    assert other.get_run(SID, "a") is None
    assert other.history(SID) == []
    store.put_run(JobRun(SID, "b", "b"))  # the connection is usable again
    assert other.get_run(SID, "b") is not None


def test_a_write_that_fails_inside_a_batch_undoes_itself_alone(store, other):
    new_session(store)
    with store.batch():
        store.put_run(JobRun(SID, "a", "a"))
        # The run's row is inserted before its edges are: the bad outcome fails the second
        # statement, and the savepoint takes the first back with it.
        with pytest.raises(ValueError):
            store.put_run(JobRun(SID, "b", "b", parents_done={"a": "bogus"}))  # type: ignore[dict-item]
        assert store.get_run(SID, "b") is None
        assert store.put_run(JobRun(SID, "c", "c"))
    assert [run.key for run in other.runs(SID)] == ["a", "c"]


def test_a_batch_inside_a_batch_commits_with_the_outer_one(store, other):
    new_session(store)
    with store.batch():
        with store.batch():
            store.put_run(JobRun(SID, "a", "a"))
        assert other.get_run(SID, "a") is None
    assert other.get_run(SID, "a") is not None


def test_handles_are_written_only_to_the_attempt_still_running(store):
    new_session(store)
    for key, status, attempt in (("a", JobStatus.RUNNING, 2), ("b", JobStatus.SUCCEEDED, 1)):
        store.put_run(JobRun(SID, key, key, status=status, attempt=attempt))
    store.write_handles([(SID, "a", 2, "local:7"), (SID, "a", 1, "old"), (SID, "b", 1, "x")])
    assert store.get_run(SID, "a").handle == "local:7"
    assert store.get_run(SID, "b").handle is None


def test_runs_read_in_one_statement_keep_the_edges_of_every_run(store):
    # Rows come in job then item order, which is not key order: "t-x" sorts after the
    # items of "t" by job id but before them by key. Its edges are read with it.
    new_session(store)
    done = JobStatus.SUCCEEDED
    store.put_run(JobRun(SID, "t", "t", status=JobStatus.RUNNING))
    store.put_run(JobRun(SID, "t[0]", "t", index=0, status=done))
    store.put_run(JobRun(SID, "t-x", "t-x", status=done, parents_done={"t": Outcome.SUCCESS}))
    assert [(run.key, run.parents_done) for run in store.runs(SID, {done})] == [
        ("t[0]", {}),
        ("t-x", {"t": Outcome.SUCCESS}),
    ]


def test_session_status_reads_the_status_alone(store):
    new_session(store)
    store.set_session_status(SID, {SessionStatus.RUNNING}, SessionStatus.PAUSED)
    assert store.session_status(SID) is SessionStatus.PAUSED
    with pytest.raises(SessionNotFound):
        store.session_status("nope")


# ---------------------------------------------------------------- the driver's loop


@dataclass
class World:
    """Dispatcher and timers: each call notes what another connection sees at that moment."""

    observer: SqliteStore
    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    dispatched: list[tuple[str, int, JobStatus | None]] = field(default_factory=list)
    scheduled: list[tuple[Event, JobStatus | None]] = field(default_factory=list)
    stopped: list[tuple[str, JobStatus | None]] = field(default_factory=list)
    refuse: dict[str, Exception] = field(default_factory=dict)
    handles: bool = True
    asked: list[str] = field(default_factory=list)

    def seen(self, key: str) -> JobStatus | None:
        run = self.observer.get_run(SID, key)
        return None if run is None else run.status

    def dispatch(self, order: Dispatch) -> str | None:
        self.dispatched.append((order.key, order.attempt, self.seen(order.key)))
        if order.key in self.refuse:
            raise self.refuse[order.key]
        return f"local:{order.key}-{order.attempt}" if self.handles else None

    def started(self, run: JobRun, job_type: str) -> bool | None:
        self.asked.append(run.key)
        return False  # no trace of it: its start was lost

    def stop(self, run: JobRun, job_type: str) -> None:
        self.stopped.append((run.key, self.seen(run.key)))

    def schedule(self, event: Event, at: str) -> None:
        self.scheduled.append((event, self.seen(getattr(event, "key", ""))))

    def finish(self, key: str, attempt: int = 1, session_id: str = SID) -> None:
        self.events.put(AttemptFinished(session_id, key, attempt, T0, {"ok": True}))


def pipeline_text(*jobs: str) -> str:
    return "\n".join(['version: "1.1"', "name: p", "jobs:", *(f"  - {job}" for job in jobs)])


def custom(job_id: str, parents: str = "", extra: str = "") -> str:
    head = f"id: {job_id}, type: custom, depends_on: [{parents}],{extra}"
    return f"{{{head} parameters: {{command: x}}}}"


def start(store: SqliteStore, world: World, text: str) -> EventLoop:
    pipeline = load_pipeline(text)
    loop = EventLoop(store, world, world, lambda name, version: pipeline, world.events, lambda: T0)
    with store.batch():
        loop.reducer.create(pipeline, 1, {}, SID, T0)
    loop.step(lambda reducer: reducer.handle(SessionStarted(SID, T0)))
    return loop


def history_kinds(store: SqliteStore, key: str) -> list[str]:
    return [entry.kind for _, entry in store.history(SID) if entry.key == key]


def test_work_starts_and_timers_are_set_only_once_the_claim_is_committed(store, other):
    world = World(other)
    start(store, world, pipeline_text(custom("a", extra=" timeout: 60,"), custom("b")))
    # When the dispatcher was asked, another connection already saw both runs claimed.
    assert sorted(world.dispatched) == [("a", 1, JobStatus.RUNNING), ("b", 1, JobStatus.RUNNING)]
    assert [(type(e).__name__, seen) for e, seen in world.scheduled] == [
        ("AttemptTimedOut", JobStatus.RUNNING)
    ]


def test_handles_are_written_before_the_next_event_or_when_the_loop_is_idle(store):
    world = World(store)
    loop = start(store, world, pipeline_text(custom("a"), custom("b", "a")))
    assert store.get_run(SID, "a").handle is None  # started; its handle not yet written
    assert loop.next_event(0.01) is None  # idle: the handle is written before waiting
    assert store.get_run(SID, "a").handle == "local:a-1"
    world.finish("a")
    loop.handle(world.events.get())
    assert store.get_run(SID, "a").handle == "local:a-1"
    assert store.get_run(SID, "b").status is JobStatus.RUNNING
    world.finish("b")  # queued: b's handle goes into the batch that handles this event
    event = loop.next_event(0.01)
    assert store.get_run(SID, "b").handle is None
    loop.handle(event)
    b = store.get_run(SID, "b")
    assert b.status is JobStatus.SUCCEEDED and b.handle == "local:b-1"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (DispatchFailed("job 'a': cannot start it: no such command"), "no such command"),
        (RuntimeError("resolver broke"), "job 'a': cannot start it: resolver broke"),
    ],
)
def test_a_dispatch_that_fails_after_the_commit_fails_the_attempt(store, error, message):
    world = World(store, refuse={"a": error})
    loop = start(store, world, pipeline_text(custom("a"), custom("b", "a")))
    ended = loop.run(SID)
    assert ended.status is SessionStatus.FAILED
    a, b = store.get_run(SID, "a"), store.get_run(SID, "b")
    assert a.status is JobStatus.FAILED and message in a.error
    assert b.status is JobStatus.UPSTREAM_FAILED
    assert history_kinds(store, "a") == ["job_dispatched", "job_failed"]


def test_a_dispatch_that_fails_is_retried_when_the_job_may_retry(store):
    world = World(store, refuse={"a": DispatchFailed("busy")})
    loop = start(store, world, pipeline_text(custom("a", extra=" retries: 1, retry_delay: 0,")))
    event = loop.next_event(0.01)
    assert isinstance(event, AttemptFinished) and event.error == "busy"
    loop.handle(event)
    assert store.get_run(SID, "a").status is JobStatus.RETRYING
    # The retry's timer was set after the commit that made the run RETRYING.
    assert [(type(e).__name__, seen) for e, seen in world.scheduled] == [
        ("RetryDue", JobStatus.RETRYING)
    ]


def test_an_event_that_fails_takes_no_other_event_of_its_batch_down(store, other, monkeypatch):
    monkeypatch.setattr(local_backend, "BATCH_SECONDS", 60.0)  # however slow the machine
    world = World(other)
    loop = start(store, world, pipeline_text(custom("x"), custom("y"), custom("cx", "x")))
    world.finish("x")
    world.finish("x", session_id="no-such-session")  # the reducer raises SessionNotFound
    world.finish("y")
    with pytest.raises(SessionNotFound):
        loop.handle(world.events.get())  # takes x's event, then the one that raises
    assert store.get_run(SID, "x").status is JobStatus.SUCCEEDED
    assert store.get_run(SID, "y").status is JobStatus.RUNNING
    assert loop.handle(world.events.get()) == 1  # y's event waited in the queue
    assert store.get_run(SID, "y").status is JobStatus.SUCCEEDED
    # What the rolled-back batch did happened once, in the event's own batch: cx was
    # started once, after its claim was committed, and x's end is in the history once.
    assert [s for s in world.dispatched if s[0] == "cx"] == [("cx", 1, JobStatus.RUNNING)]
    assert history_kinds(store, "x") == ["job_dispatched", "job_succeeded"]
    world.finish("cx")
    assert loop.run(SID).status is SessionStatus.SUCCEEDED


def test_a_timeout_asks_the_dispatcher_itself_whether_the_start_was_lost(store, other):
    world = World(other, handles=False)  # a service that gives no handle to stop it by
    loop = start(store, world, pipeline_text(custom("a", extra=" timeout: 60,")))
    [(timed_out, _)] = world.scheduled
    loop.handle(timed_out)
    assert world.asked == ["a"]
    # Lost, so started again (the same attempt), once the batch that says so committed.
    assert world.dispatched == [("a", 1, JobStatus.RUNNING), ("a", 1, JobStatus.RUNNING)]
    assert history_kinds(store, "a") == ["job_dispatched", "job_dispatched"]


def test_a_cancel_stops_running_work_after_its_commit(store, other):
    world = World(other)
    loop = start(store, world, pipeline_text(custom("a"), custom("b", "a")))
    loop.handle(CancelRequested(SID, T0, "enough"))
    assert world.stopped == [("a", JobStatus.CANCELLED)]
    assert store.get_session(SID).status is SessionStatus.CANCELLED


def test_a_batch_takes_at_most_its_bound_of_events(store, monkeypatch):
    monkeypatch.setattr(local_backend, "MAX_BATCH_EVENTS", 2)
    monkeypatch.setattr(local_backend, "BATCH_SECONDS", 60.0)
    world = World(store)
    loop = start(store, world, pipeline_text(custom("x"), custom("y"), custom("z")))
    for key in ("x", "y", "z"):
        world.finish(key)
    assert loop.handle(world.events.get()) == 2
    assert world.events.qsize() == 1
    assert loop.handle(world.events.get()) == 1
    assert store.get_session(SID).status is SessionStatus.SUCCEEDED


def test_the_loop_reads_requests_while_it_runs(store):
    world = World(store)
    loop = start(store, world, pipeline_text(custom("a")))
    asked: list[Any] = [[CancelRequested(SID, T0, "from outside")]]
    ended = loop.run(SID, lambda: asked.pop() if asked else [])
    assert ended.status is SessionStatus.CANCELLED
    assert ended.reason == "from outside"


# ---------------------------------------------------------------- waiting for a job's process


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_a_wait_with_a_timeout_sees_the_end_or_gives_up_at_the_timeout(monkeypatch, pidfd):
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)  # as on a system without pidfds
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd on this system")
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert _ended_within(quick, 60.0) is True
    assert quick.returncode == 3  # reaped: the report reads its exit code
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _ended_within(slow, 0.2) is False
        assert slow.poll() is None  # still running: the caller decides what to do with it
    finally:
        slow.kill()
        slow.wait()
