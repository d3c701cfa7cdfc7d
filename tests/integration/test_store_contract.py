"""The Store port's contract, run against every implementation.

Each test states one guarantee of :mod:`engine.ports` (or of pipeline
versions) and checks it on every store of ``FACTORIES``; adding a backend is
one line there. The races are real: threads (and, for a SQLite file, two
processes) hit one store at once, and exactly one of them must win.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import Conflict, OutputTooLarge, PipelineNotFound, SessionNotFound
from engine.events import HistoryEntry
from engine.local.store import MAX_OUTPUT_BYTES, SCHEMA_VERSION, SqliteStore
from engine.state import JobRun, JobStatus, Outcome, Session, SessionStatus
from tests.integration.test_dynamo_store import MotoStore

W, R = JobStatus.WAITING, JobStatus.RUNNING
NOW = "2024-05-01T12:00:00Z"
THREADS = 8

FACTORIES: list[tuple[str, Callable[[Path], Any]]] = [
    ("sqlite-file", lambda tmp: SqliteStore(tmp / "bunsui.db")),
    ("sqlite-memory", lambda tmp: SqliteStore(":memory:")),
    ("dynamodb-moto", lambda tmp: MotoStore()),
]


@pytest.fixture(params=[factory for _, factory in FACTORIES], ids=[n for n, _ in FACTORIES])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = request.param(tmp_path)
    yield made
    if hasattr(made, "close"):
        made.close()


_ids = itertools.count()


def new_session(store: Any, **fields: Any) -> Session:
    """A fresh session in ``store`` (a new id each call, so hypothesis examples don't collide)."""
    fields.setdefault("id", f"s{next(_ids)}")
    session = Session(pipeline="ml", version=1, parameters={"lr": 0.1}, **fields)
    store.create_session(session)
    return session


def put(store: Any, session: Session, key: str, **fields: Any) -> JobRun:
    run = JobRun(session.id, key, fields.pop("job_id", key), **fields)
    assert store.put_run(run) is True
    return run


def keys(runs: list[JobRun]) -> list[str]:
    return [run.key for run in runs]


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released at once by a barrier; their results, in order."""
    barrier = threading.Barrier(len(calls))

    def go(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(go, calls))


# -- sessions ---------------------------------------------------------------------------


def test_a_session_round_trips(store):
    session = Session(
        "s-1",
        "ml",
        3,
        {"name": "モデル", "nested": {"a": [1, 2.5, None, True]}},
        SessionStatus.PAUSED,
        total=5,
        finished=1,
        failed=1,
        created_at=NOW,
        reason="why",
    )
    store.create_session(session)
    got = store.get_session("s-1")
    assert got == session
    assert got.status is SessionStatus.PAUSED


def test_creating_a_session_twice_conflicts(store):
    session = new_session(store)
    with pytest.raises(Conflict):
        store.create_session(session.but(pipeline="other"))
    assert store.get_session(session.id).pipeline == "ml"


def test_a_missing_session_is_not_found(store):
    with pytest.raises(SessionNotFound, match="session 'nope' not found"):
        store.get_session("nope")
    with pytest.raises(SessionNotFound):
        store.count_finished("nope", failed=False)
    with pytest.raises(SessionNotFound):
        store.set_session_status("nope", {SessionStatus.RUNNING}, SessionStatus.PAUSED)
    with pytest.raises(SessionNotFound):
        store.acquire_slot("nope", None, 1)
    assert store.runs("nope") == []
    assert store.get_run("nope", "a") is None
    assert store.history("nope") == []


def test_session_status_changes_only_from_an_expected_status(store):
    session = new_session(store)
    paused = store.set_session_status(session.id, {SessionStatus.RUNNING}, SessionStatus.PAUSED)
    assert paused == session.but(status=SessionStatus.PAUSED)

    assert (
        store.set_session_status(session.id, {SessionStatus.RUNNING}, SessionStatus.FAILED) is None
    )
    assert store.set_session_status(session.id, set(), SessionStatus.FAILED) is None
    assert store.get_session(session.id) == paused

    done = store.set_session_status(
        session.id,
        {SessionStatus.RUNNING, SessionStatus.PAUSED},
        SessionStatus.SUCCEEDED,
        {"ended_at": NOW, "reason": "all done"},
    )
    assert done == paused.but(status=SessionStatus.SUCCEEDED, ended_at=NOW, reason="all done")
    assert store.get_session(session.id) == done


def test_session_status_refuses_changes_to_its_identity(store):
    session = new_session(store)
    for changes in ({"id": "other"}, {"status": SessionStatus.FAILED}, {"bogus": 1}):
        with pytest.raises(ValueError):
            store.set_session_status(
                session.id, {SessionStatus.RUNNING}, SessionStatus.PAUSED, changes
            )
    assert store.get_session(session.id) == session


def test_closing_a_session_races_once(store):
    for _ in range(50):
        session = new_session(store)
        results = race(
            [
                lambda s=session, to=status: store.set_session_status(
                    s.id, {SessionStatus.RUNNING}, to
                )
                for status in (SessionStatus.SUCCEEDED, SessionStatus.CANCELLED)
            ]
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert store.get_session(session.id).status is winners[0].status


def test_count_finished_counts_runs_and_failures(store):
    session = new_session(store, total=3)
    assert store.count_finished(session.id, failed=False).finished == 1
    after = store.count_finished(session.id, failed=True)
    assert (after.finished, after.failed) == (2, 1)
    assert store.get_session(session.id) == after


def test_count_finished_is_atomic_under_threads(store):
    session = new_session(store, total=THREADS * 25)

    def work(worker: int) -> list[int]:
        return [
            store.count_finished(session.id, failed=(worker + i) % 3 == 0).finished
            for i in range(25)
        ]

    with ThreadPoolExecutor(THREADS) as pool:
        seen = [n for ns in pool.map(work, range(THREADS)) for n in ns]
    # Each call saw its own count, so exactly one saw finished == total.
    assert sorted(seen) == list(range(1, THREADS * 25 + 1))
    final = store.get_session(session.id)
    expected_failed = sum((w + i) % 3 == 0 for w in range(THREADS) for i in range(25))
    assert (final.finished, final.failed) == (THREADS * 25, expected_failed)


# -- slots ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", [None, "train"])
def test_slots_up_to_the_limit_and_back(store, scope):
    session = new_session(store)
    assert [store.acquire_slot(session.id, scope, 2) for _ in range(3)] == [True, True, False]
    store.release_slot(session.id, scope)
    assert store.acquire_slot(session.id, scope, 2) is True
    assert store.acquire_slot(session.id, scope, 2) is False
    assert store.acquire_slot(session.id, scope, 3) is True  # a higher limit lets one more in


def test_the_session_slots_are_its_running_counter(store):
    session = new_session(store)
    store.acquire_slot(session.id, None, 5)
    store.acquire_slot(session.id, None, 5)
    store.acquire_slot(session.id, "train", 5)
    assert store.get_session(session.id).running == 2
    store.release_slot(session.id, None)
    assert store.get_session(session.id).running == 1


def test_slot_scopes_are_independent(store):
    session = new_session(store)
    assert store.acquire_slot(session.id, "train", 1) is True
    assert store.acquire_slot(session.id, "train", 1) is False
    assert store.acquire_slot(session.id, "eval", 1) is True
    assert store.acquire_slot(session.id, None, 1) is True
    other = new_session(store)
    assert store.acquire_slot(other.id, "train", 1) is True


def test_slots_never_go_below_zero_nor_open_at_limit_zero(store):
    session = new_session(store)
    store.release_slot(session.id, None)
    store.release_slot(session.id, "train")  # never acquired: nothing to give back
    assert store.acquire_slot(session.id, None, 0) is False
    assert store.acquire_slot(session.id, "train", 0) is False
    assert [store.acquire_slot(session.id, "train", 1) for _ in range(2)] == [True, False]
    assert store.get_session(session.id).running == 0


@pytest.mark.parametrize("scope", [None, "train"])
def test_slots_never_exceed_the_limit_under_threads(store, scope):
    session = new_session(store)
    limit = 3
    lock = threading.Lock()
    holders = 0
    most = 0
    taken = 0

    def work(_: int) -> None:
        nonlocal holders, most, taken
        for _ in range(40):
            if not store.acquire_slot(session.id, scope, limit):
                continue
            with lock:
                holders += 1
                taken += 1
                most = max(most, holders)
            time.sleep(0.0005)  # hold the slot a moment, so holders overlap
            with lock:
                holders -= 1
            store.release_slot(session.id, scope)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))
    assert 0 < most <= limit
    assert taken > 0
    # Every slot came back: exactly `limit` can be taken again.
    assert [store.acquire_slot(session.id, scope, limit) for _ in range(limit + 1)] == [
        *([True] * limit),
        False,
    ]


# -- runs -------------------------------------------------------------------------------


def test_a_run_round_trips(store):
    session = new_session(store)
    run = JobRun(
        session.id,
        "train[2]",
        "train",
        index=2,
        status=JobStatus.RETRYING,
        attempt=2,
        parents_done={"prep": Outcome.SUCCESS, "check": Outcome.SKIPPED},
        expected=2,
        done=2,
        item={"lr": 0.01, "name": "é"},
        inputs={"payload": [1, "two", None]},
        output={"metrics": {"f1": 0.75}},
        error="boom",
        handle="arn:aws:ecs:task/1",
        started_at=NOW,
        ended_at=None,
        updated_at=NOW,
        reason="retry",
    )
    assert store.put_run(run) is True
    got = store.get_run(session.id, "train[2]")
    assert got == run
    assert got.status is JobStatus.RETRYING
    assert all(type(outcome) is Outcome for outcome in got.parents_done.values())


def test_put_run_writes_only_once(store):
    session = new_session(store)
    first = put(store, session, "a", expected=1)
    assert store.put_run(first.but(status=R, attempt=1, expected=5)) is False
    assert store.get_run(session.id, "a") == first


def test_put_run_races_once(store):
    session = new_session(store)
    for i in range(50):
        key = f"job{i}"
        results = race(
            [
                lambda k=key, n=n: store.put_run(JobRun(session.id, k, k, handle=str(n)))
                for n in range(4)
            ]
        )
        assert results.count(True) == 1
        assert store.get_run(session.id, key).handle == str(results.index(True))


def test_put_new_runs_writes_a_new_sessions_roots_at_once(store):
    session = new_session(store)
    roots = [JobRun(session.id, f"root{i:02d}", f"root{i:02d}") for i in range(30)]
    store.put_new_runs(roots)  # more than one batch of 25 on DynamoDB
    assert store.runs(session.id) == roots
    assert store.get_run(session.id, "root07") == roots[7]
    store.put_new_runs([])


def test_a_missing_run_is_none(store):
    session = new_session(store)
    assert store.get_run(session.id, "nope") is None
    assert store.transition(session.id, "nope", {W}, {"status": R}) is None


# -- transition -------------------------------------------------------------------------


def test_transition_applies_from_an_expected_status(store):
    session = new_session(store)
    put(store, session, "a")
    changes = {"status": R, "attempt": 1, "inputs": {"x": 1}, "started_at": NOW, "handle": "h"}
    running = store.transition(session.id, "a", {W, JobStatus.QUEUED}, changes)
    assert running == JobRun(session.id, "a", "a").but(**changes)
    assert running.status is R
    assert store.get_run(session.id, "a") == running


def test_transition_from_another_status_changes_nothing(store):
    session = new_session(store)
    run = put(store, session, "a", status=R, attempt=1)
    assert store.transition(session.id, "a", {W}, {"status": R, "handle": "x"}) is None
    assert store.transition(session.id, "a", set(), {"status": JobStatus.FAILED}) is None
    assert store.get_run(session.id, "a") == run


def test_transition_of_another_attempt_changes_nothing(store):
    session = new_session(store)
    run = put(store, session, "a", status=R, attempt=2)
    ended = {"status": JobStatus.SUCCEEDED, "output": {"ok": True}}
    assert store.transition(session.id, "a", {R}, ended, attempt=1) is None
    assert store.get_run(session.id, "a") == run
    assert store.transition(session.id, "a", {R}, ended, attempt=2) == run.but(**ended)


def test_transition_can_clear_fields_and_replace_edges(store):
    session = new_session(store)
    put(store, session, "a", status=JobStatus.FAILED, error="boom", parents_done={"p": "failure"})
    changed = store.transition(
        session.id,
        "a",
        {JobStatus.FAILED},
        {"status": W, "error": None, "parents_done": {"q": Outcome.SUCCESS}},
    )
    assert changed.error is None
    assert changed.parents_done == {"q": Outcome.SUCCESS}
    assert store.get_run(session.id, "a") == changed


def test_transition_refuses_to_change_a_runs_identity(store):
    session = new_session(store)
    run = put(store, session, "a")
    for changes in ({"key": "b"}, {"session_id": "other"}, {"bogus": 1}):
        with pytest.raises(ValueError):
            store.transition(session.id, "a", {W}, changes)
    assert store.get_run(session.id, "a") == run


def test_two_threads_claiming_one_run_one_wins(store):
    session = new_session(store)
    for i in range(200):
        key = f"job{i}"
        put(store, session, key)
        results = race(
            [
                lambda k=key, n=n: store.transition(
                    session.id, k, {W}, {"status": R, "attempt": 1, "handle": n}, attempt=0
                )
                for n in ("left", "right")
            ]
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, key
        assert store.get_run(session.id, key) == winners[0]


def test_an_output_up_to_the_limit_is_kept(store):
    session = new_session(store)
    put(store, session, "a", status=R)
    largest = "x" * (MAX_OUTPUT_BYTES - 2)  # its JSON adds the two quotes
    ended = store.transition(
        session.id, "a", {R}, {"status": JobStatus.SUCCEEDED, "output": largest}
    )
    assert store.get_run(session.id, "a").output == ended.output == largest


@pytest.mark.parametrize(
    "output",
    ["x" * (MAX_OUTPUT_BYTES - 1), {"text": "é" * (MAX_OUTPUT_BYTES // 2)}],
    ids=["one byte over", "multibyte"],
)
def test_an_output_over_the_limit_is_refused_not_lost(store, output):
    session = new_session(store)
    run = put(store, session, "a", status=R, attempt=1)
    size = len(json.dumps(output, ensure_ascii=False).encode())
    with pytest.raises(OutputTooLarge, match=rf"{size} bytes.*limit is {MAX_OUTPUT_BYTES} bytes"):
        store.transition(session.id, "a", {R}, {"status": JobStatus.SUCCEEDED, "output": output})
    assert store.get_run(session.id, "a") == run
    with pytest.raises(OutputTooLarge):
        store.put_run(JobRun(session.id, "b", "b", output=output))
    assert store.get_run(session.id, "b") is None


# -- count_edge -------------------------------------------------------------------------


def test_count_edge_creates_the_run_and_counts_each_edge_once(store):
    session = new_session(store)
    first = store.count_edge(session.id, "c", "c", None, "a", Outcome.SUCCESS, 2)
    # Not complete yet: the count, without the outcomes (O(1) per edge).
    assert first == JobRun(session.id, "c", "c", expected=2, done=1)
    assert first.status is W and first.attempt == 0

    assert store.count_edge(session.id, "c", "c", None, "a", Outcome.FAILURE, 2) is None
    second = store.count_edge(session.id, "c", "c", None, "b", Outcome.SKIPPED, 2)
    assert second.parents_done == {"a": Outcome.SUCCESS, "b": Outcome.SKIPPED}
    assert second.done == second.expected == 2
    assert store.count_edge(session.id, "c", "c", None, "b", Outcome.SKIPPED, 2) is None
    assert store.get_run(session.id, "c") == second


def test_count_edge_keeps_an_existing_run(store):
    session = new_session(store)
    fan = put(store, session, "train", status=R, attempt=1, expected=3, item=[1, 2, 3])
    counted = store.count_edge(session.id, "train", "train", None, "[1]", Outcome.SUCCESS, 0)
    assert counted == fan.but(done=1)
    assert store.get_run(session.id, "train").parents_done == {"[1]": Outcome.SUCCESS}


def test_count_edge_keeps_an_items_index(store):
    session = new_session(store)
    item = store.count_edge(session.id, "t[4]", "t", 4, "prep", Outcome.SUCCESS, 1)
    assert (item.job_id, item.index) == ("t", 4)
    assert store.get_run(session.id, "t[4]") == item


def test_count_edge_under_threads_one_caller_sees_the_last_edge(store):
    session = new_session(store)
    edges = [f"p{i}" for i in range(50)]

    def deliver(seed: int) -> list[JobRun | None]:
        mine = edges[:]
        random.Random(seed).shuffle(mine)
        return [
            store.count_edge(session.id, "child", "child", None, e, Outcome.SUCCESS, 50)
            for e in mine
        ]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for rs in pool.map(deliver, range(THREADS)) for r in rs]
    counted = [r for r in results if r is not None]
    assert len(counted) == len(edges)  # each edge counted by exactly one delivery
    assert sorted(r.done for r in counted) == list(range(1, 51))
    assert sum(r.done == r.expected for r in counted) == 1
    assert [len(r.parents_done) for r in counted if r.done == r.expected] == [50]
    assert set(store.get_run(session.id, "child").parents_done) == set(edges)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    deliveries=st.lists(st.integers(1, 3), min_size=1, max_size=8).flatmap(
        lambda repeats: st.permutations([f"p{i}" for i, n in enumerate(repeats) for _ in range(n)])
    )
)
def test_duplicate_deliveries_in_any_order_count_once(store, deliveries):
    session = new_session(store)
    edges = sorted(set(deliveries))
    outcomes = {e: list(Outcome)[i % 3] for i, e in enumerate(edges)}
    results = [
        store.count_edge(session.id, "c", "c", None, e, outcomes[e], len(edges)) for e in deliveries
    ]
    counted = [r for r in results if r is not None]
    assert len(counted) == len(edges)
    assert sum(len(r.parents_done) == len(edges) for r in counted) == 1
    assert store.get_run(session.id, "c").parents_done == outcomes


# -- runs(), delete_runs ----------------------------------------------------------------


def test_runs_are_in_key_order_and_filtered(store):
    session = new_session(store)
    other = new_session(store)
    put(store, other, "a")
    for key, job, status in [
        ("train[2]", "train", R),
        ("eval", "eval", W),
        ("train", "train", R),
        ("train[10]", "train", JobStatus.SUCCEEDED),
        ("prep", "prep", JobStatus.SUCCEEDED),
    ]:
        put(store, session, key, job_id=job, status=status)
    store.count_edge(session.id, "eval", "eval", None, "train", Outcome.SUCCESS, 1)

    assert keys(store.runs(session.id)) == ["eval", "prep", "train", "train[10]", "train[2]"]
    assert keys(store.runs(session.id, {R})) == ["train", "train[2]"]
    assert keys(store.runs(session.id, {R, W})) == ["eval", "train", "train[2]"]
    assert keys(store.runs(session.id, set())) == []
    assert keys(store.runs(session.id, job_id="train")) == ["train", "train[10]", "train[2]"]
    assert keys(store.runs(session.id, {JobStatus.SUCCEEDED}, job_id="train")) == ["train[10]"]
    assert keys(store.runs(session.id, limit=2)) == ["eval", "prep"]
    assert keys(store.runs(session.id, {R}, limit=1)) == ["train"]
    assert store.runs(session.id, limit=0) == []
    # Records from runs() are whole, counted edges included.
    assert store.runs(session.id) == [
        store.get_run(session.id, k) for k in keys(store.runs(session.id))
    ]
    assert store.runs(session.id)[0].parents_done == {"train": Outcome.SUCCESS}
    # A filtered-out run's edges stay its own, even between two selected keys.
    store.count_edge(session.id, "train[10]", "train", 10, "prep", Outcome.SUCCESS, 1)
    assert [r.parents_done for r in store.runs(session.id, {R})] == [{}, {}]


def test_delete_runs_forgets_them_and_their_edges(store):
    session = new_session(store)
    put(store, session, "a", status=JobStatus.FAILED)
    put(store, session, "b", status=JobStatus.SUCCEEDED)
    store.count_edge(session.id, "c", "c", None, "a", Outcome.FAILURE, 1)
    store.delete_runs(session.id, ["a", "c", "never-existed"])
    store.delete_runs(session.id, [])
    assert [r.key for r in store.runs(session.id)] == ["b"]
    again = store.count_edge(session.id, "c", "c", None, "a", Outcome.SUCCESS, 1)
    assert again.parents_done == {"a": Outcome.SUCCESS}  # counted anew after the retry


# -- history ----------------------------------------------------------------------------


def test_history_is_in_order_and_read_after_a_sequence_number(store):
    session = new_session(store)
    other = new_session(store)
    entries = [
        HistoryEntry(session.id, NOW, "session_started"),
        HistoryEntry(session.id, NOW, "job_dispatched", "a", 1, {"handle": "h", "ü": [1.5]}),
        HistoryEntry(session.id, NOW, "job_failed", "a", 1, "boom"),
    ]
    store.append_history(entries[0])
    store.append_history(HistoryEntry(other.id, NOW, "session_started"))
    for entry in entries[1:]:
        store.append_history(entry)

    history = store.history(session.id)
    assert [entry for _, entry in history] == entries
    seqs = [seq for seq, _ in history]
    assert seqs == sorted(set(seqs)) and all(isinstance(s, int) for s in seqs)
    assert [e for _, e in store.history(session.id, after=seqs[0])] == entries[1:]
    assert store.history(session.id, after=seqs[-1]) == []
    assert [e.kind for _, e in store.history(other.id)] == ["session_started"]


def test_history_sequence_numbers_increase_under_threads(store):
    session = new_session(store)

    def work(worker: int) -> None:
        for i in range(20):
            store.append_history(HistoryEntry(session.id, NOW, "tick", f"w{worker}", i))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))
    history = store.history(session.id)
    assert len(history) == THREADS * 20
    assert [seq for seq, _ in history] == sorted({seq for seq, _ in history})
    for worker in range(THREADS):  # each writer's entries keep its own order
        mine = [e.attempt for _, e in history if e.key == f"w{worker}"]
        assert mine == list(range(20))


# -- pipeline versions ------------------------------------------------------------------


def test_pipeline_versions_are_immutable_and_deduplicated(store):
    assert store.put_pipeline_version("ml", "doc A", "sum-a", "t1") == 1
    assert store.put_pipeline_version("ml", "doc A", "sum-a", "t2") == 1
    assert store.put_pipeline_version("ml", "doc B", "sum-b", "t3") == 2
    assert store.put_pipeline_version("ml", "doc A", "sum-a", "t4") == 3  # a revert is new
    assert store.get_pipeline_version("ml") == (3, "doc A")
    assert store.get_pipeline_version("ml", 2) == (2, "doc B")
    assert store.get_pipeline_version("ml", 1) == (1, "doc A")
    with pytest.raises(PipelineNotFound, match=r"^pipeline 'ml' has no version 4\.$"):
        store.get_pipeline_version("ml", 4)
    with pytest.raises(PipelineNotFound, match=r"^pipeline 'etl' not found\.$"):
        store.get_pipeline_version("etl")
    with pytest.raises(PipelineNotFound, match="not found"):
        store.get_pipeline_version("etl", 1)


def test_pipelines_are_listed_by_name_with_their_latest_version(store):
    assert store.list_pipelines() == []
    store.put_pipeline_version("ml", "doc A", "sum-a", "t1")
    store.put_pipeline_version("etl", "doc E", "sum-e", "t2")
    store.put_pipeline_version("ml", "doc B", "sum-b", "t3")
    assert store.list_pipelines() == [("etl", 1, "t2"), ("ml", 2, "t3")]


def test_a_deleted_pipeline_keeps_its_versions_for_pinned_sessions(store):
    store.put_pipeline_version("ml", "doc A", "sum-a", "t1")
    store.put_pipeline_version("ml", "doc B", "sum-b", "t2")
    store.put_pipeline_version("etl", "doc E", "sum-e", "t3")
    store.delete_pipeline("ml")

    assert store.list_pipelines() == [("etl", 1, "t3")]
    with pytest.raises(PipelineNotFound, match="pipeline 'ml' not found"):
        store.get_pipeline_version("ml")
    assert store.get_pipeline_version("ml", 1) == (1, "doc A")  # a pinned session runs on
    with pytest.raises(PipelineNotFound):
        store.delete_pipeline("ml")
    with pytest.raises(PipelineNotFound):
        store.delete_pipeline("never")

    # Deploying the name again brings it back; versions continue, never reused.
    assert store.put_pipeline_version("ml", "doc C", "sum-c", "t4") == 3
    assert store.list_pipelines() == [("etl", 1, "t3"), ("ml", 3, "t4")]


def test_concurrent_deploys_get_distinct_versions(store):
    results = race(
        [
            lambda n=n: store.put_pipeline_version("ml", f"doc {n}", f"sum-{n}", "t")
            for n in range(THREADS)
        ]
    )
    assert sorted(results) == list(range(1, THREADS + 1))


# -- SQLite specifics -------------------------------------------------------------------


def test_two_store_objects_on_one_file_share_it(tmp_path):
    with SqliteStore(tmp_path / "b.db") as one, SqliteStore(tmp_path / "b.db") as two:
        session = new_session(one)
        assert two.get_session(session.id) == session
        put(one, session, "a")
        assert two.transition(session.id, "a", {W}, {"status": R}) is not None
        assert one.transition(session.id, "a", {W}, {"status": R}) is None
        assert one.get_run(session.id, "a").status is R
        assert two.count_edge(session.id, "c", "c", None, "a", Outcome.SUCCESS, 1) is not None
        assert one.count_edge(session.id, "c", "c", None, "a", Outcome.SUCCESS, 1) is None


def test_the_file_is_wal_with_a_schema_version(tmp_path):
    path = tmp_path / "b.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        SqliteStore(path)


def test_records_of_an_unknown_session_are_refused(tmp_path):
    with SqliteStore(tmp_path / "b.db") as store:
        with pytest.raises(SessionNotFound):
            store.put_run(JobRun("nope", "a", "a"))
        with pytest.raises(SessionNotFound):
            store.count_edge("nope", "a", "a", None, "p", Outcome.SUCCESS, 1)
        with pytest.raises(SessionNotFound):
            store.append_history(HistoryEntry("nope", NOW, "session_started"))
        with pytest.raises(SessionNotFound):
            store.acquire_slot("nope", "train", 1)


def _claim_in_process(path: str, session_id: str, keys: list[str], name: str, gate, out) -> None:
    """Child process: claim every run it can, and report which it won."""
    store = SqliteStore(path)
    gate.wait()
    won = [
        key
        for key in keys
        if store.transition(session_id, key, {W}, {"status": R, "handle": name}) is not None
    ]
    store.close()
    out.put((name, won))


def test_two_processes_claiming_the_same_runs_one_wins_each(tmp_path):
    path = str(tmp_path / "b.db")
    keys = [f"job{i:03}" for i in range(300)]
    with SqliteStore(path) as store:
        session = new_session(store)
        for key in keys:
            put(store, session, key)
        context = multiprocessing.get_context("spawn")
        gate, out = context.Barrier(2), context.Queue()
        workers = [
            context.Process(
                target=_claim_in_process, args=(path, session.id, keys, name, gate, out)
            )
            for name in ("one", "two")
        ]
        for worker in workers:
            worker.start()
        won = dict(out.get(timeout=60) for _ in workers)
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        assert sorted(won["one"] + won["two"]) == keys  # each run claimed exactly once
        for name, claimed in won.items():
            assert all(store.get_run(session.id, k).handle == name for k in claimed)
