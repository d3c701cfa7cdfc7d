"""Delivery chaos: random DAGs, every event delivered 1 to 3 times, in any order, by
several reducers at once, on the SQLite store and on the DynamoDB store (moto).

Each example draws a DAG (up to a few hundred jobs: trigger rules, conditions
that read parameters, upstream outputs and statuses, retries, timeouts,
fan-outs, concurrency limits) and what every attempt will do (succeed, fail,
be refused by the service, time out, complete after its timeout). The real
:class:`~engine.reducer.Reducer` runs it: three reducer threads, each with its
own Reducer and store client, handle batches of events at the same moment,
copies and order chosen by hypothesis (tests/reliability/chaos.py). The
session must then end exactly as the sequential reference interpreter
(tests/reliability/reference.py) says:

- every (run, attempt) is dispatched at most once, and exactly the attempts
  the reference makes are dispatched (on SQLite, the claims in the history too);
- the session's final status, and every job's and fan-out item's, are the
  reference's;
- no run is left non-terminal, and no run exists that the reference lacks;
- the session's counters (finished, failed) equal a recount of its runs, and
  every concurrency slot was given back.

``BUNSUI_CHAOS_EXAMPLES=N`` runs N examples per store (the default keeps
``make test`` within about a minute) and prints what ran: schedules, jobs,
events delivered, duplicates, the largest DAG.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.aws import keys as k
from engine.aws.store import DynamoStore
from engine.events import SessionStarted
from engine.loader import load_pipeline
from engine.local.store import SqliteStore
from engine.parameters import resolve_parameters
from engine.pipeline import Pipeline
from engine.ports import Store
from engine.reducer import Reducer
from engine.state import JobStatus
from tests.integration.test_dynamo_store import TABLE, MotoStore, new_client
from tests.reliability.chaos import (
    T0,
    WORKERS,
    Case,
    Choices,
    Reducers,
    SeededChoices,
    Stats,
    World,
    cases,
    deliver,
    pipeline_text,
)
from tests.reliability.reference import (
    Attempt,
    Dag,
    Expected,
    FanOut,
    Job,
    Plan,
    interpret,
)

LONG = os.environ.get("BUNSUI_CHAOS_EXAMPLES")
EXAMPLES = {"sqlite": 300, "dynamodb": 20}
"""Examples per store in ``make test``; BUNSUI_CHAOS_EXAMPLES sets both."""
MAX_JOBS = {"sqlite": 300, "dynamodb": 300 if LONG else 150}
"""The largest DAG; moto costs about 5 ms of CPU a request, so ``make test`` keeps
DynamoDB's sessions smaller."""
STATS = {"sqlite": Stats(), "dynamodb": Stats()}


@dataclass(frozen=True)
class Opened:
    """Where one example runs.

    Attributes:
        session_id: The session's id.
        store: The store the test starts the session with and reads at the end.
        make: Makes one more store client (one per reducer).
        history: Whether the reducers' clients write the history (the DynamoDB store,
            as deployed, leaves it to the table's stream).
    """

    session_id: str
    store: Store
    make: Callable[[], Store]
    history: bool


def examples(store: str) -> int:
    return int(LONG) if LONG else EXAMPLES[store]


def chaos_settings(store: str) -> Any:
    return settings(
        max_examples=examples(store),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        report_multiple_bugs=False,  # shrink one failure: replaying large sessions is slow
    )


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a long run, print what it ran (a normal run stays quiet)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not LONG or reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for name, stats in STATS.items():
            if stats.schedules:
                reporter.write_line(stats.line(name))


# -- the two stores -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_sessions(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Any]:
    """A fresh database file per example; each reducer opens its own connection."""
    directory = tmp_path_factory.mktemp("chaos")
    numbers = itertools.count()

    @contextlib.contextmanager
    def session() -> Iterator[Opened]:
        path = directory / f"chaos-{next(numbers)}.db"
        opened: list[SqliteStore] = []

        def make() -> Store:
            opened.append(SqliteStore(path))
            return opened[-1]

        try:
            yield Opened("s", make(), make, history=True)
        finally:
            for store in opened:
                store.close()
            for leftover in directory.glob(f"{path.name}*"):
                leftover.unlink()

    return session


@pytest.fixture(scope="module")
def dynamodb_sessions() -> Iterator[Callable[[], Any]]:
    """One moto table; a new session id per example; each reducer has its own client.

    Fan-outs here have 1 to 4 items and joins a few parents: parts of 2 (not 50 and 25)
    make them count in several parts, as a fan-out of thousands does (engine.aws.store).
    """
    parts = mock.patch.multiple(k, PART_SIZE=2, JOIN_PART_SIZE=2)
    parts.start()
    table = MotoStore()
    clients = [new_client() for _ in range(2 * WORKERS)]
    numbers = itertools.count()

    @contextlib.contextmanager
    def session() -> Iterator[Opened]:
        pool = iter(clients)

        def make() -> Store:
            return DynamoStore(TABLE, next(pool), history="stream")

        yield Opened(f"c{next(numbers)}", table, make, history=False)

    yield session
    table.close()
    parts.stop()


# -- one example --------------------------------------------------------------------------


def schedule_choices(data: st.DataObject) -> Choices:
    """The schedule's choices, from one drawn seed.

    Not drawn one by one: concurrent reducers make the pool's contents after a batch
    vary slightly from one replay to the next (which reducer drained a queue, in which
    batch), and hypothesis requires a replayed example to draw the same choices.
    """
    return SeededChoices(data.draw(st.integers(0, 2**32 - 1), label="schedule seed"))


def play(sessions: Callable[[], Any], case: Case, choices: Choices, stats: Stats) -> None:
    """Run the case on the real reducers and check it against the reference."""
    expected = interpret(case.dag, case.script)
    pipeline = load_pipeline(pipeline_text(case.dag))
    stats.schedules += 1
    stats.jobs += len(case.dag.jobs)
    stats.runs += len(expected.statuses)
    stats.max_jobs = max(stats.max_jobs, len(case.dag.jobs))
    world = World(case.script, stats)
    with sessions() as opened:

        def reducer(made: Store) -> Reducer:
            return Reducer(made, world, world, lambda name, version: pipeline)

        values = resolve_parameters(pipeline.parameters, {})
        reducer(opened.store).create(pipeline, 1, values, opened.session_id, T0)
        world.emit(SessionStarted(opened.session_id, T0))
        reducers = Reducers(
            [(reducer(opened.make()), reducer(opened.make())) for _ in range(WORKERS)], world
        )
        try:
            deliver(world, choices, reducers, limit=200 + 40 * len(expected.statuses))
        finally:
            reducers.close()
        assert reducers.errors == [], reducers.errors
        assert world.errors == [], world.errors
        check(opened, pipeline, expected, world)


def check(opened: Opened, pipeline: Pipeline, expected: Expected, world: World) -> None:
    """The invariants, each with a message that shows what differs."""
    store, session_id = opened.store, opened.session_id
    twice = {claim: n for claim, n in world.claims.items() if n > 1}
    assert not twice, f"attempts dispatched more than once: {twice}"
    dispatched = set(world.claims)
    assert dispatched == expected.dispatches(), (
        f"dispatched but not in the reference: {sorted(dispatched - expected.dispatches())}; "
        f"in the reference but never dispatched: {sorted(expected.dispatches() - dispatched)}"
    )
    if opened.history:  # each claim that won its conditional write is one history entry
        claims = Counter(
            (entry.key, entry.attempt)
            for _, entry in store.history(session_id)
            if entry.kind == "job_dispatched"
        )
        assert claims == Counter(world.claims), "claims recorded differ from dispatches"
    runs = store.runs(session_id)
    live = [(run.key, run.status.value) for run in runs if not run.status.terminal]
    assert not live, f"runs left non-terminal: {live}"
    actual = {run.key: run.status.value for run in runs}
    wrong = {
        key: (actual.get(key, "missing"), want)
        for key, want in expected.statuses.items()
        if actual.get(key) != want
    }
    extra = sorted(set(actual) - set(expected.statuses))
    assert not wrong and not extra, (
        f"(engine, reference) differ: {wrong}; runs not expected: {extra}"
    )
    session = store.get_session(session_id)
    assert session.status.value == expected.session
    jobs = [run for run in runs if run.index is None]
    assert session.total == len(pipeline.jobs)
    assert session.finished == sum(run.status.terminal for run in jobs) == len(pipeline.jobs)
    assert session.failed == sum(run.status is JobStatus.FAILED for run in jobs)
    assert session.running == 0, "a concurrency slot was never given back"


# -- the properties -----------------------------------------------------------------------


@pytest.mark.timeout(0 if LONG else 600)
@chaos_settings("sqlite")
@given(case=cases(max_jobs=MAX_JOBS["sqlite"]), data=st.data())
def test_sqlite_sessions_end_as_the_reference_says_however_events_arrive(
    sqlite_sessions: Callable[[], Any], case: Case, data: st.DataObject
) -> None:
    play(sqlite_sessions, case, schedule_choices(data), STATS["sqlite"])


@pytest.mark.timeout(0 if LONG else 600)
@chaos_settings("dynamodb")
@given(case=cases(max_jobs=MAX_JOBS["dynamodb"]), data=st.data())
def test_dynamodb_sessions_end_as_the_reference_says_however_events_arrive(
    dynamodb_sessions: Callable[[], Any], case: Case, data: st.DataObject
) -> None:
    play(dynamodb_sessions, case, schedule_choices(data), STATS["dynamodb"])


# -- shrunk reproductions -----------------------------------------------------------------


class OldestFirst:
    """The plainest schedule: each event delivered once, one at a time, oldest first."""

    def integer(self, low: int, high: int) -> int:
        return low


QUEUED_WITH_UNRENDERABLE_INPUTS = Case(
    Dag(
        (
            Job("j0"),
            Job("j1"),
            Job("j2", ("j0",), "all_done", reads="j0"),
        ),
        max_concurrency=1,
    ),
    {"j0": (Plan(Attempt.FAIL),), "j1": (Plan(Attempt.OK),), "j2": (Plan(Attempt.OK),)},
    seed=None,
)
"""j2 waits in the queue behind j1; when j1 ends, j2's inputs read the output of j0,
which failed: j2 must fail and the session end (found by the property above)."""

REFUSED_BEHIND_A_LIMIT = Case(
    Dag((Job("j0", fan_out=FanOut(items=300, max_concurrency=1)),)),
    {
        "j0[0]": (Plan(Attempt.OK),),
        **{f"j0[{i}]": (Plan(Attempt.REFUSED),) for i in range(1, 300)},
    },
    seed=None,
)
"""299 items queued behind one running item, and the service refuses every dispatch
(throttling): each must fail in turn when the slot frees, and the session end."""


@pytest.mark.parametrize("backend", ["sqlite_sessions", "dynamodb_sessions"])
def test_a_queued_job_whose_inputs_cannot_be_rendered_fails_and_the_session_ends(
    request: pytest.FixtureRequest, backend: str
) -> None:
    play(request.getfixturevalue(backend), QUEUED_WITH_UNRENDERABLE_INPUTS, OldestFirst(), Stats())


def test_a_long_queue_of_refused_dispatches_fails_item_by_item(
    sqlite_sessions: Callable[[], Any],
) -> None:
    play(sqlite_sessions, REFUSED_BEHIND_A_LIMIT, OldestFirst(), Stats())
