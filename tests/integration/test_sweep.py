"""The sweeper drives on what a crashed reducer left: the reducer is made to die before
each of its writes in turn, and sweeps alone must bring the session to its end with
every attempt claimed (and dispatched) once. On SQLite a write is a store call; on
DynamoDB (moto) it is each write request, so the reducer also dies between an item's
count in its part and the part's addition to its fan-out."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest

from engine.aws import keys as k
from engine.aws.store import DynamoStore
from engine.errors import SessionNotFound
from engine.events import AttemptFinished, CancelRequested
from engine.loader import load_pipeline
from engine.local.store import SqliteStore
from engine.reducer import Reducer, later
from engine.state import JobStatus, SessionStatus
from tests.integration.engine_harness import T0, Recorder
from tests.integration.test_dynamo_store import TABLE, MotoStore

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


DYNAMODB_WRITES = frozenset(
    {"put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items"}
)


class CrashingDynamo:
    """A DynamoStore on moto, but the process dies just before write request ``crash_at``."""

    def __init__(self, table: MotoStore, crash_at: int | None = None) -> None:
        self.inner = DynamoStore(TABLE, table.client, history="direct")
        self.crash_at = crash_at
        self.writes = 0
        self.dying = DynamoStore(TABLE, _DyingClient(table.client, self), history="direct")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dying, name)


class _DyingClient:
    def __init__(self, client: Any, owner: CrashingDynamo) -> None:
        self.client = client
        self.owner = owner

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in DYNAMODB_WRITES:
            return method

        def write(**params: Any) -> Any:
            self.owner.writes += 1
            if self.owner.writes == self.owner.crash_at:
                raise Crash(f"died before write request {self.owner.writes} ({name})")
            return method(**params)

        return write


class World:
    """One session on a crashing store; the services answer every dispatch, once."""

    def __init__(self, crash_at: int | None = None, store: Any = None, sid: str = SID) -> None:
        self.store = store if store is not None else CrashingStore(crash_at)
        self.sid = sid
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
        self.survive(lambda: self.reducer.start(PIPELINE, 1, {}, self.sid, self.now))
        try:
            self.store.inner.get_session(self.sid)
        except SessionNotFound:
            return False
        return True

    def session_status(self) -> SessionStatus:
        return self.store.inner.get_session(self.sid).status

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
            self.sid, order.key, order.attempt, self.now, None if flaky else {"n": order.attempt}
        )
        if flaky:
            event = AttemptFinished(self.sid, order.key, order.attempt, self.now, error="flaky")
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
        found = self.survive(lambda: self.reducer.sweep(self.sid, self.now, GRACE))
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
    sid = world.sid
    session = world.store.inner.get_session(sid)
    assert session.status is SessionStatus.SUCCEEDED, world.sweeps
    assert (session.finished, session.failed, session.total) == (4, 0, 4)
    runs = world.store.inner.runs(sid)
    assert {run.key: run.status for run in runs} == {
        key: JobStatus.SUCCEEDED for key in ("a", "b", "c", "c[0]", "c[1]", "c[2]", "d")
    }
    claims = Counter((order.key, order.attempt) for order in world.services.orders)
    assert max(claims.values()) == 1, claims
    # d ran after both of its parents ended, and once.
    d = next(order for order in world.services.orders if order.key == "d")
    assert (
        world.store.inner.get_run(sid, "b").ended_at
        <= world.store.inner.get_run(sid, "d").started_at
    )
    assert d.attempt >= 1
    # The fan-out counted each of its items once.
    c = world.store.inner.get_run(sid, "c")
    assert c.done == c.expected == 4
    assert sorted(c.parents_done) == ["[0]", "[1]", "[2]", "a"]


def test_a_clean_run_needs_no_sweep():
    assert writes_of_a_clean_run() > 50


def crash_before_each_write(total: int, make: Callable[[int], World]) -> tuple[list[str], int]:
    """A session that dies before write 2, 3, ... ``total`` in turn (before write 1 no
    session exists: nothing to sweep), each run to its end: what went wrong, and how
    many sessions a sweep had to heal."""
    failures: list[str] = []
    swept = 0
    for crash_at in range(2, total + 1):
        world = make(crash_at)
        assert world.start()
        try:
            world.run_to_end()
            check_ended_well(world)
        except AssertionError as exc:
            failures.append(f"crash before write {crash_at}: {exc}")
        assert world.crashes == 1, crash_at
        swept += any(world.sweeps)
    return failures, swept


def test_the_session_completes_whatever_write_the_reducer_died_before():
    total = writes_of_a_clean_run()
    failures, swept = crash_before_each_write(total, World)
    assert not failures, "\n".join(failures[:5])
    # Most crash points are healed by a sweep (the rest by the events that follow).
    assert swept > total // 2


@pytest.fixture(scope="module")
def moto_table() -> Iterator[MotoStore]:
    """One moto table for every session; parts of 2 items, so ``c``'s 3 items count in
    two parts, and of 1 parent, so ``d`` counts its 2 parents in parts (engine.aws.store)."""
    with mock.patch.object(k, "PART_SIZE", 2), mock.patch.object(k, "JOIN_PART_SIZE", 1):
        table = MotoStore()
        yield table
        table.close()


@pytest.mark.timeout(600)
def test_on_dynamodb_the_session_completes_whatever_request_the_reducer_died_before(
    moto_table: MotoStore,
):
    sessions = itertools.count()

    def world(crash_at: int | None) -> World:
        return World(store=CrashingDynamo(moto_table, crash_at), sid=f"d-{next(sessions)}")

    clean = world(None)
    assert clean.start()
    assert clean.run_to_end() is SessionStatus.SUCCEEDED and clean.sweeps == []
    check_ended_well(clean)
    failures, _ = crash_before_each_write(clean.store.writes, world)
    assert not failures, "\n".join(failures[:5])


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
