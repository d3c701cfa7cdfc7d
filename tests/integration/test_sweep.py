"""The sweeper drives on what a crashed reducer left: the reducer is made to die before
each of its writes in turn, and sweeps alone must bring the session to its end with
every attempt claimed (and dispatched) once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from engine.events import AttemptFinished, CancelRequested
from engine.loader import load_pipeline
from engine.local.store import SqliteStore
from engine.reducer import Reducer, later
from engine.state import JobStatus, SessionStatus
from tests.integration.engine_harness import T0, Recorder

GRACE = 300.0
SID = "s-1"
WRITES = frozenset(
    {
        "create_session",
        "set_session_status",
        "count_finished",
        "recount",
        "acquire_slot",
        "release_slot",
        "put_run",
        "transition",
        "count_edge",
        "delete_runs",
        "append_history",
    }
)

# Edges, a fan-out held to one item at a time, a session-wide limit, a flaky job that
# retries, and a timeout on every job (a claim whose dispatch was lost ends by it).
PIPELINE = load_pipeline(
    """
version: "1.1"
name: sweep
max_concurrency: 2
jobs:
  - {id: a, type: custom, timeout: 60, retries: 1, retry_delay: 5, parameters: {command: x}}
  - id: b
    type: custom
    depends_on: [a]
    timeout: 60
    retries: 2
    retry_delay: 5
    retry_backoff: 2
    parameters: {command: x}
  - id: c
    type: custom
    depends_on: [a]
    timeout: 60
    retries: 1
    retry_delay: 5
    for_each: {items: [1, 2, 3], max_concurrency: 1}
    parameters: {command: ["work", "${item}"]}
  - id: d
    type: custom
    depends_on: [b, c]
    timeout: 60
    retries: 1
    retry_delay: 5
    parameters: {command: x}
"""
)


class Crash(Exception):
    """The reducer's process died."""


class CrashingStore:
    """The SQLite store, but the process dies just before write number ``crash_at``."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.inner = SqliteStore(":memory:")
        self.crash_at = crash_at
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in WRITES:
            return method

        def write(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.writes == self.crash_at:
                raise Crash(f"died before write {self.writes} ({name})")
            return method(*args, **kwargs)

        return write


class World:
    """One session on a crashing store; the services answer every dispatch, once."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.store = CrashingStore(crash_at)
        self.services = Recorder()
        self.reducer = Reducer(self.store, self.services, self.services, lambda *_: PIPELINE)
        self.now = T0
        self.answered: set[tuple[str, int]] = set()
        self.crashes = 0
        self.sweeps: list[list[str]] = []

    def survive(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Crash:
            self.crashes += 1
            return None

    def start(self) -> bool:
        self.survive(lambda: self.reducer.start(PIPELINE, 1, {}, SID, self.now))
        return bool(self.store.inner.sessions())

    def session_status(self) -> SessionStatus:
        return self.store.inner.get_session(SID).status

    def answer_next(self) -> bool:
        order = next(
            (o for o in self.services.orders if (o.key, o.attempt) not in self.answered), None
        )
        if order is None:
            return False
        self.answered.add((order.key, order.attempt))
        self.now = later(self.now, 1)
        flaky = order.key == "b" and order.attempt == 1
        event = AttemptFinished(
            SID, order.key, order.attempt, self.now, None if flaky else {"n": order.attempt}
        )
        if flaky:
            event = AttemptFinished(SID, order.key, order.attempt, self.now, error="flaky")
        self.survive(lambda: self.reducer.handle(event))
        return True

    def fire_next_timer(self) -> bool:
        if not self.services.timers:
            return False
        self.services.timers.sort(key=lambda timer: timer[0])
        at, event = self.services.timers.pop(0)
        self.now = max(self.now, at)
        self.survive(lambda: self.reducer.handle(event))
        return True

    def sweep(self, after: float = 1000.0) -> None:
        self.now = later(self.now, after)
        found = self.survive(lambda: self.reducer.sweep(SID, self.now, GRACE))
        self.sweeps.append(found or [])

    def run_to_end(self, max_sweeps: int = 6) -> SessionStatus:
        """Answers first, then timers, then (nothing else moving) a sweep much later."""
        for _ in range(500):
            if self.session_status().terminal:
                break
            if self.answer_next() or self.fire_next_timer():
                continue
            assert len(self.sweeps) < max_sweeps, f"stuck after sweeps {self.sweeps}"
            self.sweep()
        return self.session_status()


def writes_of_a_clean_run() -> int:
    world = World()
    assert world.start()
    assert world.run_to_end() is SessionStatus.SUCCEEDED
    assert world.sweeps == []
    return world.store.writes


def check_ended_well(world: World) -> None:
    session = world.store.inner.get_session(SID)
    assert session.status is SessionStatus.SUCCEEDED, world.sweeps
    assert (session.finished, session.failed, session.total) == (4, 0, 4)
    runs = world.store.inner.runs(SID)
    assert {run.key: run.status for run in runs} == {
        key: JobStatus.SUCCEEDED for key in ("a", "b", "c", "c[0]", "c[1]", "c[2]", "d")
    }
    claims = Counter((order.key, order.attempt) for order in world.services.orders)
    assert max(claims.values()) == 1, claims
    # d ran after both of its parents ended, and once.
    d = next(order for order in world.services.orders if order.key == "d")
    assert (
        world.store.inner.get_run(SID, "b").ended_at
        <= world.store.inner.get_run(SID, "d").started_at
    )
    assert d.attempt >= 1


def test_a_clean_run_needs_no_sweep():
    assert writes_of_a_clean_run() > 50


def test_the_session_completes_whatever_write_the_reducer_died_before():
    total = writes_of_a_clean_run()
    failures: list[str] = []
    swept = 0
    for crash_at in range(2, total + 1):  # before write 1 no session exists: nothing to sweep
        world = World(crash_at)
        assert world.start()
        try:
            world.run_to_end()
            check_ended_well(world)
        except AssertionError as exc:
            failures.append(f"crash before write {crash_at}: {exc}")
        assert world.crashes == 1, crash_at
        swept += any(world.sweeps)
    assert not failures, "\n".join(failures[:5])
    # Most crash points are healed by a sweep (the rest by the events that follow).
    assert swept > total // 2


def test_a_sweep_of_a_healthy_session_writes_nothing():
    world = World()
    assert world.start()
    while not world.session_status().terminal:
        before = world.store.writes
        world.sweep(after=1)  # a live session: everything within the grace period
        assert world.store.writes == before
        assert world.sweeps[-1] == []
        assert world.answer_next() or world.fire_next_timer()
    check_ended_well(world)


def test_sweeping_twice_does_nothing_more():
    world = World(crash_at=30)
    assert world.start()
    world.run_to_end()
    check_ended_well(world)
    before = world.store.writes
    world.sweep()
    assert world.store.writes == before and world.sweeps[-1] == []


def test_running_attempts_are_left_to_their_timeout():
    world = World()
    assert world.start()
    assert world.store.inner.get_run(SID, "a").status is JobStatus.RUNNING
    world.sweep(after=GRACE + 30)  # past the grace period, not past a's timeout
    assert world.sweeps[-1] == []
    assert world.store.inner.get_run(SID, "a").status is JobStatus.RUNNING
    assert world.services.stopped == []


def test_an_attempt_whose_timeout_timer_was_lost_times_out():
    world = World()
    assert world.start()
    world.services.timers.clear()  # the timers went missing
    world.sweep(after=60 + GRACE + 1)
    assert world.sweeps[-1] == ["timed out a (its timer was lost)"]
    run = world.store.inner.get_run(SID, "a")
    assert run.status is JobStatus.RETRYING and run.error == "timed out after 60s"
    assert world.services.stopped == [("a", "handle-a-1")]


def test_a_session_never_started_is_started_once_the_grace_period_passed():
    world = World(crash_at=2)  # died after writing the session and its root, before starting it
    assert world.start()
    assert [(r.key, r.status, r.attempt) for r in world.store.inner.runs(SID)] == [
        ("a", JobStatus.WAITING, 0)
    ]
    world.sweep(after=10)
    assert world.sweeps[-1] == []
    world.sweep(after=GRACE)
    assert world.sweeps[-1] == ["decided a: running"]
    assert [order.key for order in world.services.orders] == ["a"]


@pytest.mark.parametrize("crash_after", range(2, 14))
def test_an_interrupted_cancel_is_finished(crash_after: int):
    world = World()
    assert world.start()
    world.answer_next()  # a succeeded: b and c[0] run, c[1] and c[2] are queued
    world.store.crash_at = world.store.writes + crash_after  # the first write is CANCELLING
    world.survive(lambda: world.reducer.handle(CancelRequested(SID, later(world.now, 1))))
    world.sweep(after=10)  # a cancel in flight is left to its reducer
    if world.session_status() is SessionStatus.CANCELLING:
        assert world.sweeps[-1] == []
        world.sweep()
        assert "finished an interrupted cancel" in world.sweeps[-1]
    assert world.crashes == 1
    assert world.session_status() is SessionStatus.CANCELLED
    assert all(run.status.terminal for run in world.store.inner.runs(SID))
    assert {key for key, _ in world.services.stopped} >= {"b", "c[0]"}
    # As after a cancel that was not interrupted: d never existed, the rest are counted.
    assert world.store.inner.get_session(SID).finished == 3
