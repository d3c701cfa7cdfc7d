"""However AWS delivers events — twice, late, out of order, at the same time — every
attempt is claimed once and the session ends as the graph says."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import AttemptFinished, Event
from engine.loader import load_pipeline
from engine.local.store import SqliteStore
from engine.ports import Dispatch
from engine.reducer import Reducer
from engine.state import JobStatus, SessionStatus
from tests.integration.engine_harness import T0


@st.composite
def plans(draw):
    """A random DAG of custom jobs, each with the outcomes of its attempts decided."""
    n = draw(st.integers(min_value=1, max_value=9))
    jobs = []
    for i in range(n):
        parents = sorted(draw(st.sets(st.integers(0, max(i - 1, 0)), max_size=3))) if i else []
        retries = draw(st.integers(0, 2))
        # The first attempt that succeeds (None: all fail).
        succeeds_at = draw(st.one_of(st.none(), st.integers(1, retries + 1)))
        jobs.append((f"j{i}", [f"j{p}" for p in parents if p < i], retries, succeeds_at))
    return jobs


def pipeline_text(jobs) -> str:
    lines = ['version: "1.1"', "name: random", "jobs:"]
    for job_id, parents, retries, _ in jobs:
        lines.append(
            f"  - {{id: {job_id}, type: custom, depends_on: [{', '.join(parents)}], "
            f"retries: {retries}, retry_delay: 1, parameters: {{command: x}}}}"
        )
    return "\n".join(lines) + "\n"


def expected_statuses(jobs) -> dict[str, JobStatus]:
    status: dict[str, JobStatus] = {}
    for job_id, parents, _, succeeds_at in jobs:
        above = [status[p] for p in parents]
        if any(s in (JobStatus.FAILED, JobStatus.UPSTREAM_FAILED) for s in above):
            status[job_id] = JobStatus.UPSTREAM_FAILED
        elif any(s is JobStatus.SKIPPED for s in above):
            status[job_id] = JobStatus.SKIPPED
        else:
            status[job_id] = JobStatus.SUCCEEDED if succeeds_at else JobStatus.FAILED
    return status


class World:
    """Dispatcher and Timers that put every event in a pool, several times over."""

    def __init__(self, jobs, copies) -> None:
        self.plan = {job_id: succeeds_at for job_id, _, _, succeeds_at in jobs}
        self.copies = copies
        self.pool: list[Event] = []
        self.claims: Counter[tuple[str, int]] = Counter()

    def dispatch(self, order: Dispatch) -> str:
        self.claims[(order.key, order.attempt)] += 1
        succeeds_at = self.plan[order.key]
        ok = succeeds_at is not None and order.attempt >= succeeds_at
        event = AttemptFinished(
            order.session_id,
            order.key,
            order.attempt,
            T0,
            {"attempt": order.attempt} if ok else None,
            None if ok else f"attempt {order.attempt} failed",
        )
        self.pool.extend([event] * self.copies())
        return f"h-{order.key}"

    def stop(self, run: Any, job_type: str) -> None:
        pass

    def schedule(self, event: Event, at: str) -> None:
        self.pool.extend([event] * self.copies())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(), st.data())
def test_any_delivery_order_with_duplicates_gives_the_same_end(jobs, data):
    world = World(jobs, lambda: data.draw(st.integers(1, 3), label="copies"))
    pipeline = load_pipeline(pipeline_text(jobs))
    store = SqliteStore(":memory:")
    reducer = Reducer(store, world, world, lambda name, version: pipeline)
    reducer.start(pipeline, 1, {}, "s", T0)
    delivered = 0
    while world.pool:
        index = data.draw(st.integers(0, len(world.pool) - 1), label="next event")
        reducer.handle(world.pool.pop(index))
        delivered += 1
        assert delivered < 2000
    assert all(count == 1 for count in world.claims.values()), world.claims
    expected = expected_statuses(jobs)
    actual = {job_id: store.get_run("s", job_id).status for job_id in expected}
    assert actual == expected
    failed = any(s is JobStatus.FAILED for s in expected.values())
    session = store.get_session("s")
    assert session.status is (SessionStatus.FAILED if failed else SessionStatus.SUCCEEDED)
    assert session.finished == len(jobs)


def test_completions_handled_from_several_threads_at_once(tmp_path):
    width = 40
    jobs = ["  - {id: root, type: custom, parameters: {command: x}}"]
    jobs += [
        f"  - {{id: m{i}, type: custom, depends_on: [root], parameters: {{command: x}}}}"
        for i in range(width)
    ]
    middle = ", ".join(f"m{i}" for i in range(width))
    jobs.append(
        f"  - {{id: sink, type: custom, depends_on: [{middle}], parameters: {{command: x}}}}"
    )
    pipeline = load_pipeline('version: "1.1"\nname: wide\njobs:\n' + "\n".join(jobs) + "\n")
    events: queue.Queue[Event | None] = queue.Queue()
    claims: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    class Threaded:
        def dispatch(self, order: Dispatch) -> str:
            with lock:
                claims[(order.key, order.attempt)] += 1
            done = AttemptFinished(order.session_id, order.key, order.attempt, T0, {"ok": 1})
            events.put(done)
            events.put(done)  # every completion is delivered twice
            return "h"

        def stop(self, run: Any, job_type: str) -> None:
            pass

        def schedule(self, event: Event, at: str) -> None:
            events.put(event)

    path = tmp_path / "state.db"
    world = Threaded()
    starter = Reducer(SqliteStore(path), world, world, lambda name, version: pipeline)
    starter.start(pipeline, 1, {}, "s", T0)
    errors: list[BaseException] = []

    def worker() -> None:
        reducer = Reducer(SqliteStore(path), world, world, lambda name, version: pipeline)
        while (event := events.get()) is not None:
            try:
                reducer.handle(event)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                events.task_done()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    events.join()
    for _ in threads:
        events.put(None)
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(claims.values()) == [1] * (width + 2)
    store = SqliteStore(path)
    assert store.get_session("s").status is SessionStatus.SUCCEEDED
    assert store.get_run("s", "sink").status is JobStatus.SUCCEEDED
    assert len(store.get_run("s", "sink").parents_done) == width
