"""DynamoStore on moto: what the contract suite cannot see.

The contract suite (tests/integration/test_store_contract.py) runs against
:class:`MotoStore` too. Here: races between separate clients, request counts
and reply sizes (the O(1) per edge promise), pagination past DynamoDB's 1 MB
pages, the session indexes, value limits, pipeline version listings, and the
history projected from the table's stream against the history written directly.

moto applies each request in the calling thread without a lock, where
DynamoDB applies every single-item write (and transaction) atomically; the
mock here serializes moto's requests so the races test the store's conditions,
not moto's internals.
"""

from __future__ import annotations

import base64
import itertools
import json
import queue
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from unittest import mock

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamRecordModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from engine.aws import keys as k
from engine.aws.history import entries_from_stream, write_history
from engine.aws.service import run_page
from engine.aws.store import SMALL_FAN_IN, DynamoStore
from engine.aws.table import DEFINITION, create_table, template_definition
from engine.errors import InputTooLarge, PipelineNotFound
from engine.events import (
    AttemptFinished,
    CancelRequested,
    Event,
    HistoryEntry,
    PauseRequested,
    ResumeRequested,
)
from engine.loader import load_pipeline
from engine.local.store import MAX_OUTPUT_BYTES as LOCAL_MAX_OUTPUT_BYTES
from engine.reducer import Reducer
from engine.state import JobRun, JobStatus, Outcome, Session, SessionStatus
from tests.e2e.aws.harness import item_bytes
from tests.integration.engine_harness import T0, Harness
from tests.integration.test_reducer_delivery import (
    World,
    expected_statuses,
    pipeline_text,
    plans,
)

REGION = "us-east-1"
TABLE = "bunsui"
W, R = JobStatus.WAITING, JobStatus.RUNNING
NOW = "2026-01-01T00:00:00+00:00"


_BOTO = boto3.session.Session(region_name=REGION)
_BOTO_LOCK = threading.Lock()


def new_client() -> Any:
    """A client of its own (from one session: loading botocore's models once is faster)."""
    with _BOTO_LOCK:  # a boto3 session is not safe to make clients from in two threads
        return _BOTO.client("dynamodb")


@contextmanager
def serialized_moto() -> Iterator[None]:
    """Let one moto request run at a time, as DynamoDB makes each write atomic."""
    lock = threading.RLock()
    original = BotocoreStubber.process_request

    def process(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return original(self, request)

    with mock.patch.object(BotocoreStubber, "process_request", process):
        yield


class MotoStore(DynamoStore):
    """A DynamoStore on its own moto account and table (the contract suite's factory)."""

    def __init__(self, history: str = "direct") -> None:
        self._mock = mock_aws()
        self._mock.start()
        self._serial = serialized_moto()
        self._serial.__enter__()
        client = new_client()
        self.stream_arn = create_table(client, TABLE)
        super().__init__(TABLE, client, history=history)

    def close(self) -> None:
        self._serial.__exit__(None, None, None)
        self._mock.stop()


@pytest.fixture
def store() -> Iterator[MotoStore]:
    made = MotoStore()
    yield made
    made.close()


class Calls:
    """The requests a client makes (operation, parameters) and its replies' sizes."""

    def __init__(self, client: Any) -> None:
        self.made: list[tuple[str, dict[str, Any], int]] = []
        client.meta.events.register("provide-client-params.dynamodb", self._before)
        client.meta.events.register("after-call.dynamodb", self._after)

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["asked"] = dict(params)

    def _after(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        reply = {key: value for key, value in parsed.items() if key != "ResponseMetadata"}
        self.made.append(
            (model.name, context.get("asked", {}), len(json.dumps(reply, default=str)))
        )

    def during(self, call: Callable[[], Any]) -> list[str]:
        """The operations ``call`` made."""
        start = len(self.made)
        call()
        return [name for name, _, _ in self.made[start:]]


def session(store: DynamoStore, sid: str = "s", **fields: Any) -> Session:
    made = Session(sid, "ml", 1, {"lr": 0.1}, **fields)
    store.create_session(made)
    return made


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(calls))

    def go(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(go, calls))


# -- the table ----------------------------------------------------------------------------


def _shape(definition: dict[str, Any]) -> dict[str, Any]:
    """A table definition with its lists in a fixed order."""
    shape = json.loads(json.dumps(definition))
    shape["AttributeDefinitions"].sort(key=lambda a: a["AttributeName"])
    for index in shape.get("GlobalSecondaryIndexes", []):
        index["Projection"]["NonKeyAttributes"].sort()
    shape.get("GlobalSecondaryIndexes", []).sort(key=lambda i: i["IndexName"])
    return shape


def test_the_table_here_is_the_templates_table():
    template = template_definition()
    if template is None:
        pytest.skip("template.yaml has no Table resource")
    assert _shape(template) == _shape(DEFINITION)


def test_the_output_limit_is_the_local_stores():
    assert k.MAX_OUTPUT_BYTES == LOCAL_MAX_OUTPUT_BYTES


# -- requests per call --------------------------------------------------------------------


def test_each_call_is_one_request_where_the_port_promises_one(store):
    calls = Calls(store.client)
    assert calls.during(lambda: session(store)) == ["PutItem"]
    assert calls.during(lambda: store.get_session("s")) == ["GetItem"]
    assert calls.during(lambda: store.put_run(JobRun("s", "a", "a"))) == ["PutItem"]
    assert calls.during(lambda: store.get_run("s", "a")) == ["GetItem"]
    claim = {"status": R, "attempt": 1}
    assert calls.during(lambda: store.transition("s", "a", {W}, claim, 0)) == ["UpdateItem"]
    assert calls.during(lambda: store.transition("s", "a", {W}, claim, 0)) == ["UpdateItem"]
    assert calls.during(lambda: store.count_edge("s", "c", "c", None, "a", Outcome.SUCCESS, 2)) == [
        "UpdateItem"
    ]
    assert calls.during(lambda: store.count_edge("s", "c", "c", None, "b", Outcome.SUCCESS, 2)) == [
        "UpdateItem"
    ]
    wide = SMALL_FAN_IN + 1
    assert calls.during(
        lambda: store.count_edge("s", "w", "w", None, "a", Outcome.SUCCESS, wide)
    ) == ["UpdateItem", "GetItem"]
    assert calls.during(lambda: store.count_finished("s", failed=True)) == ["UpdateItem"]
    assert calls.during(lambda: store.acquire_slot("s", None, 2)) == ["UpdateItem"]
    assert calls.during(lambda: store.acquire_slot("s", "t", 2)) == ["UpdateItem"]
    assert calls.during(lambda: store.release_slot("s", "t")) == ["UpdateItem"]
    assert calls.during(
        lambda: store.set_session_status("s", {SessionStatus.RUNNING}, SessionStatus.PAUSED)
    ) == ["UpdateItem"]
    assert calls.during(lambda: store.runs("s")) == ["Query"]
    assert calls.during(lambda: store.sessions("ml")) == ["Query", "BatchGetItem"]
    assert calls.during(lambda: store.recount("s")) == ["GetItem", "Query", "UpdateItem"]
    assert calls.during(lambda: store.delete_runs("s", ["a", "c"])) == ["BatchWriteItem"]
    assert calls.during(lambda: store.put_pipeline_version("ml", "d", "x", NOW)) == [
        "GetItem",
        "TransactWriteItems",
    ]
    stream = DynamoStore(TABLE, store.client, history="stream")
    entry = HistoryEntry("s", NOW, "session_paused")
    assert calls.during(lambda: stream.append_history(entry)) == []
    assert calls.during(lambda: store.append_history(entry)) == ["PutItem"]
    assert all(name != "Scan" for name, _, _ in calls.made)


def test_counting_edges_of_a_wide_fan_in_never_brings_the_edges_back(store):
    session(store)
    parents = [f"parent_{i:03d}" for i in range(500)]
    # 480 of 500 parents counted already: the item holds ~12 KB of edges.
    early = dict.fromkeys(parents[:480], Outcome.SUCCESS)
    store.put_run(JobRun("s", "sink", "sink", expected=500, parents_done=early))
    calls = Calls(store.client)
    results = [
        store.count_edge("s", "sink", "sink", None, p, Outcome.SUCCESS, len(parents))
        for p in parents[480:]
    ]
    assert [r.done for r in results] == list(range(481, 501))
    assert all(r.parents_done == {} for r in results[:-1])
    assert set(results[-1].parents_done) == set(parents)
    updates = [(asked, size) for name, asked, size in calls.made if name == "UpdateItem"]
    reads = [(asked, size) for name, asked, size in calls.made if name == "GetItem"]
    assert len(updates) == len(reads) == 20
    assert all(asked["ReturnValues"] == "UPDATED_NEW" for asked, _ in updates)
    # Every reply but the last read is O(1), though the item holds up to 500 edges.
    assert max(size for _, size in updates) < 600
    assert max(size for _, size in reads[:-1]) < 1000
    assert all("ProjectionExpression" in asked for asked, _ in reads[:-1])
    assert "ProjectionExpression" not in reads[-1][0]
    assert reads[-1][1] > 500 * len("parent_000")


# -- a fan-out's items, counted in parts ---------------------------------------------------


def fan_out(store: DynamoStore, items: int, started_at: str = NOW) -> None:
    """A running fan-out ``each`` with one parent counted and ``items`` items expected."""
    store.put_run(
        JobRun(
            "s",
            "each",
            "each",
            status=R,
            expected=1 + items,
            parents_done={"a": Outcome.SUCCESS},
            started_at=started_at,
        )
    )
    store.expect_items("s", "each", items)


def count_items(
    store: DynamoStore, indexes: list[int], failed: frozenset[int] = frozenset()
) -> list[JobRun | None]:
    return [
        store.count_edge(
            "s",
            "each",
            "each",
            None,
            f"[{i}]",
            Outcome.FAILURE if i in failed else Outcome.SUCCESS,
            0,
        )
        for i in indexes
    ]


def test_a_fan_outs_items_are_counted_in_parts_no_item_grows_with_its_width(store):
    session(store)
    fan_out(store, 120)
    failed = frozenset({7, 33, 119})
    results = count_items(store, list(range(120)), failed)
    last = [r for r in results if r is not None and r.done == r.expected]
    assert [r.done < r.expected for r in results[:-1]] == [True] * 119
    assert len(last) == 1 and last[0] is results[-1] and last[0].expected == 121
    outcomes = last[0].parents_done
    assert len(outcomes) == 121 and outcomes["a"] is Outcome.SUCCESS
    assert {int(e[1:-1]) for e, o in outcomes.items() if o is Outcome.FAILURE} == failed
    # The run holds no item's outcome; each part at most 50, well under 1 KB.
    items = store.client.scan(TableName=TABLE)["Items"]
    run = next(i for i in items if i["sk"]["S"] == k.run_sk("each"))
    assert not [name for name in run if name.startswith("e#[")]
    parts = [i for i in items if i["sk"]["S"].startswith(k.part_prefix("each"))]
    assert [int(p["size"]["N"]) for p in parts] == [50, 50, 20]
    assert max(item_bytes(p) for p in parts) < 1024
    # Reads bring the parts' outcomes back with the run.
    assert store.get_run("s", "each").parents_done == outcomes
    assert next(r for r in store.runs("s") if r.key == "each").parents_done == outcomes
    listed = run_page(store.client, TABLE, "s", "each", None, 1, None).runs  # the API's page
    assert listed[0].parents_done == outcomes and listed[0].done == 121
    assert count_items(store, [5, 119]) == [None, None]


def test_counting_an_item_is_one_write_and_one_read_of_the_runs_fields(store):
    session(store)
    fan_out(store, 60)
    calls = Calls(store.client)
    assert calls.during(lambda: count_items(store, [0])) == ["UpdateItem", "GetItem"]
    count_items(store, list(range(1, 49)))
    # The item that completes its part adds the part to the run: one more write.
    assert calls.during(lambda: count_items(store, [49])) == ["UpdateItem", "UpdateItem", "GetItem"]
    count_items(store, list(range(50, 59)))
    # The item that completes the run reads it whole, its parts with it.
    assert calls.during(lambda: count_items(store, [59])) == [
        "UpdateItem",
        "UpdateItem",
        "GetItem",
        "Query",
    ]
    # A duplicate: its part is complete, so it adds the part again (a condition that fails).
    assert calls.during(lambda: count_items(store, [3])) == ["UpdateItem", "UpdateItem"]


class Died(Exception):
    """The reducer died."""


def test_a_part_completed_by_a_reducer_that_died_is_added_when_its_item_comes_again(store):
    session(store)
    fan_out(store, 60)
    count_items(store, list(range(49)))
    with mock.patch.object(DynamoStore, "_add_part", side_effect=Died), pytest.raises(Died):
        count_items(store, [49])  # part 0 complete, never added to the run
    assert all(
        r is not None and r.done < r.expected for r in count_items(store, list(range(50, 60)))
    )
    # What the sweeper reads: every item counted, though the run's own count is short.
    seen = store.get_run("s", "each")
    assert seen.done == seen.expected == 61
    again = count_items(store, [49])[0]
    assert again is not None and again.done == again.expected == 61
    assert len(again.parents_done) == 61
    assert count_items(store, [49, 0]) == [None, None]


@pytest.mark.parametrize("width", [7, 50, 130])
def test_two_clients_counting_every_item_twice_complete_the_fan_out_once(store, width):
    session(store)
    fan_out(store, width)
    stores = [DynamoStore(TABLE, new_client(), history="direct") for _ in range(2)]
    order = list(range(width))
    both = race(
        [
            lambda one=one, indexes=indexes: count_items(one, indexes)
            for one, indexes in zip(stores, (order, order[::-1]), strict=True)
        ]
    )
    counted = [r for rs in both for r in rs if r is not None]
    complete = [r for r in counted if r.done == r.expected]
    assert len(complete) == 1
    assert len(complete[0].parents_done) == width + 1
    assert store.get_run("s", "each").done == width + 1


def test_expanding_again_keeps_what_was_counted_a_new_expansion_starts_afresh(store):
    session(store)
    fan_out(store, 60)
    count_items(store, [0, 1], failed=frozenset({1}))
    store.expect_items("s", "each", 60)  # a sweeper expanding the same fan-out again
    assert store.get_run("s", "each").parents_done["[1]"] is Outcome.FAILURE
    # A session retry resets the fan-out and claims it again: a new expansion.
    store.transition("s", "each", {R}, {"status": W, "parents_done": {}, "expected": 1})
    store.count_edge("s", "each", "each", None, "a", Outcome.SUCCESS, 1)
    later = "2026-01-01T01:00:00+00:00"
    store.transition("s", "each", {W}, {"status": R, "expected": 61, "started_at": later})
    store.expect_items("s", "each", 60)
    results = count_items(store, list(range(60)))
    assert results[-1] is not None and results[-1].done == results[-1].expected == 61
    assert set(results[-1].parents_done.values()) == {Outcome.SUCCESS}


def test_a_fan_out_expanded_without_parts_counts_its_items_on_its_run(store):
    session(store)
    store.put_run(JobRun("s", "each", "each", status=R, expected=3, started_at=NOW))
    results = count_items(store, [0, 1, 2, 2])
    assert [r is not None and r.done for r in results] == [1, 2, 3, False]
    assert set(results[2].parents_done) == {"[0]", "[1]", "[2]"}


def count_parents(
    store: DynamoStore, parents: list[str], order: list[int], failed: frozenset[int] = frozenset()
) -> list[JobRun | None]:
    """Count the edges of ``parents`` (by their positions, in ``order``) into ``sink``."""
    return [
        store.count_edge(
            "s",
            "sink",
            "sink",
            None,
            parents[i],
            Outcome.FAILURE if i in failed else Outcome.SUCCESS,
            len(parents),
            i,
        )
        for i in order
    ]


def test_a_job_with_many_parents_counts_them_in_parts_no_item_grows_with_them(store):
    session(store)
    parents = [f"parent_{i:04d}" for i in range(130)]
    order = list(range(130))
    random.Random(7).shuffle(order)
    results = count_parents(store, parents, order, failed=frozenset({3, 77}))
    complete = [r for r in results if r is not None and r.done == r.expected]
    assert len(complete) == 1 and complete[0] is results[-1]
    assert all(r is not None and r.done < r.expected == 130 for r in results[:-1])
    outcomes = complete[0].parents_done
    assert set(outcomes) == set(parents)
    assert {p for p, o in outcomes.items() if o is Outcome.FAILURE} == {parents[3], parents[77]}
    items = store.client.scan(TableName=TABLE)["Items"]
    run = next(i for i in items if i["sk"]["S"] == k.run_sk("sink"))
    assert not [name for name in run if name.startswith(k.EDGE_PREFIX)]
    parts = [i for i in items if i["sk"]["S"].startswith(k.part_prefix("sink"))]
    assert sorted(int(p["size"]["N"]) for p in parts) == [5, 25, 25, 25, 25, 25]
    assert max(item_bytes(p) for p in parts) < 1024
    assert store.get_run("s", "sink").parents_done == outcomes
    assert count_parents(store, parents, [0, 129]) == [None, None]


def test_a_joins_part_completed_by_a_reducer_that_died_is_added_when_its_edge_comes_again(store):
    session(store)
    parents = [f"p{i}" for i in range(60)]
    count_parents(store, parents, list(range(10)))
    with mock.patch.object(DynamoStore, "_add_part", side_effect=Died), pytest.raises(Died):
        count_parents(store, parents, list(range(10, 25)))  # part 0 complete, never added
    assert store.get_run("s", "sink") is None  # no part added yet: the run has no item
    again = count_parents(store, parents, [24, *range(25, 60)])
    assert again[0] is not None and again[0].done == 25
    assert again[-1] is not None and again[-1].done == again[-1].expected == 60
    assert len(again[-1].parents_done) == 60


def test_replacing_a_joins_edges_forgets_its_parts(store):
    session(store)
    parents = [f"p{i}" for i in range(60)]
    count_parents(store, parents, list(range(60)), failed=frozenset({5}))
    reset = store.transition("s", "sink", {W}, {"parents_done": {}, "expected": 60})
    assert reset is not None and reset.done == 0
    assert store.get_run("s", "sink").parents_done == {}
    results = count_parents(store, parents, list(range(60)))  # a session retry counts again
    assert results[-1] is not None and results[-1].done == results[-1].expected == 60
    assert set(results[-1].parents_done.values()) == {Outcome.SUCCESS}


# -- races between clients ----------------------------------------------------------------


@pytest.mark.parametrize("expected", [2, SMALL_FAN_IN + 4], ids=["small", "wide"])
def test_two_clients_count_an_edge_once_and_one_sees_the_last(store, expected):
    session(store)
    stores = [DynamoStore(TABLE, new_client(), history="direct") for _ in range(2)]
    for round_ in range(12):
        child = f"c{round_}"
        early = {f"early{i}": Outcome.SUCCESS for i in range(expected - 2)}
        store.put_run(JobRun("s", child, child, expected=expected, parents_done=early))
        both = race(
            [
                lambda one=one, c=child, edges=edges: [
                    one.count_edge("s", c, c, None, e, Outcome.FAILURE, expected) for e in edges
                ]
                for one, edges in zip(stores, (["x", "y"], ["y", "x"]), strict=True)
            ]
        )
        counted = [r for rs in both for r in rs if r is not None]
        assert sorted(r.done for r in counted) == [expected - 1, expected]
        last = [r for r in counted if r.done == r.expected]
        assert len(last) == 1
        assert set(last[0].parents_done) >= {"x", "y"}
        assert len(store.get_run("s", child).parents_done) == expected


def test_fifty_claims_of_one_run_one_wins(store):
    session(store)
    stores = [DynamoStore(TABLE, new_client()) for _ in range(5)]
    for round_ in range(3):
        key = f"job{round_}"
        store.put_run(JobRun("s", key, key))
        results = race(
            [
                lambda n=n, key=key: stores[n % 5].transition(
                    "s", key, {W}, {"status": R, "attempt": 1, "handle": str(n)}, attempt=0
                )
                for n in range(50)
            ]
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert store.get_run("s", key).handle == winners[0].handle


def test_slots_hold_their_limit_across_clients(store):
    session(store)
    limit, lock = 3, threading.Lock()
    holders = most = 0

    def work(_: int) -> None:
        nonlocal holders, most
        mine = DynamoStore(TABLE, new_client())
        for _ in range(15):
            if not mine.acquire_slot("s", "train", limit):
                continue
            with lock:
                holders += 1
                most = max(most, holders)
            with lock:
                holders -= 1
            mine.release_slot("s", "train")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    assert 0 < most <= limit
    assert [store.acquire_slot("s", "train", limit) for _ in range(limit + 1)] == [
        True,
        True,
        True,
        False,
    ]


# -- runs ---------------------------------------------------------------------------------


def test_runs_are_read_page_after_page_in_job_then_index_order(store):
    session(store)
    padding = "x" * 900  # ~1 KB a run: 1,300 runs are more than one 1 MB page
    runs = [JobRun("s", "prep", "prep", status=JobStatus.SUCCEEDED, inputs=padding)]
    runs += [
        JobRun("s", f"train[{i}]", "train", index=i, inputs=padding, status=W if i % 3 else R)
        for i in range(1300)
    ]
    runs.append(JobRun("s", "train", "train", status=R))
    k.batch_write(store.client, TABLE, [{"PutRequest": {"Item": k.run_item(r)}} for r in runs])
    calls = Calls(store.client)

    every = store.runs("s")
    assert [r.key for r in every] == ["prep", "train"] + [f"train[{i}]" for i in range(1300)]
    assert sum(name == "Query" for name, _, _ in calls.made) >= 2
    running = store.runs("s", {R}, job_id="train")
    assert [r.key for r in running] == ["train"] + [f"train[{i}]" for i in range(0, 1300, 3)]
    waiting = [f"train[{i}]" for i in range(1300) if i % 3]
    assert [r.key for r in store.runs("s", {W}, limit=1000)] == waiting[:1000]
    assert [r.key for r in store.runs("s", job_id="prep")] == ["prep"]


def test_recount_counts_job_level_runs_only(store):
    session(store, total=3, finished=7, failed=5)
    for run in [
        JobRun("s", "a", "a", status=JobStatus.SUCCEEDED),
        JobRun("s", "b", "b", status=JobStatus.FAILED),
        JobRun("s", "c", "c", status=R),
        JobRun("s", "b[0]", "b", index=0, status=JobStatus.FAILED),
    ]:
        store.put_run(run)
    counted = store.recount("s")
    assert (counted.finished, counted.failed) == (2, 1)
    assert store.get_session("s") == counted


# -- sessions -----------------------------------------------------------------------------


def test_sessions_come_from_the_indexes_newest_first(store):
    made = []
    for i in range(12):
        pipeline = "ml" if i % 2 else "etl"
        made.append(Session(f"s{i:02d}", pipeline, 1, {}, created_at=f"2026-01-01T00:00:{i:02d}Z"))
        store.create_session(made[-1])
    store.set_session_status("s03", {SessionStatus.RUNNING}, SessionStatus.FAILED)
    store.set_session_status("s05", {SessionStatus.RUNNING}, SessionStatus.SUCCEEDED)
    store.set_session_status("s04", {SessionStatus.RUNNING}, SessionStatus.PAUSED)
    store.count_finished("s05", failed=False)
    calls = Calls(store.client)

    def ids(found: list[Session]) -> list[str]:
        return [s.id for s in found]

    assert ids(store.sessions()) == [f"s{i:02d}" for i in reversed(range(12))]
    assert ids(store.sessions(limit=3)) == ["s11", "s10", "s09"]
    assert ids(store.sessions("ml", limit=3)) == ["s11", "s09", "s07"]
    assert ids(store.sessions(statuses={SessionStatus.FAILED, SessionStatus.SUCCEEDED})) == [
        "s05",
        "s03",
    ]
    assert ids(store.sessions("etl", {SessionStatus.PAUSED, SessionStatus.RUNNING}, 2)) == [
        "s10",
        "s08",
    ]
    assert ids(store.sessions("ml", {SessionStatus.PAUSED})) == []
    assert store.sessions(limit=0) == []
    # Whole records, counters included, though the indexes hold none.
    assert store.sessions("ml", {SessionStatus.SUCCEEDED})[0] == store.get_session("s05")
    assert store.get_session("s05").finished == 1
    assert {name for name, _, _ in calls.made} <= {"Query", "BatchGetItem", "GetItem"}


# -- values -------------------------------------------------------------------------------


def test_values_over_their_limits_are_refused_or_clipped(store):
    session(store)
    store.put_run(JobRun("s", "a", "a"))
    with pytest.raises(InputTooLarge, match=r"inputs is \d+ bytes of JSON; the limit is 65536"):
        store.transition("s", "a", {W}, {"status": R, "inputs": {"x": "y" * 70_000}})
    with pytest.raises(InputTooLarge, match="fan-out item"):
        store.put_run(JobRun("s", "b[0]", "b", index=0, item="z" * 20_000))
    with pytest.raises(InputTooLarge, match="parameters"):
        store.create_session(Session("big", "ml", 1, {"p": "q" * 70_000}))
    assert store.get_run("s", "a").status is W
    ended = store.transition("s", "a", {W}, {"status": JobStatus.FAILED, "error": "é" * 10_000})
    assert len(ended.error.encode()) <= k.MAX_TEXT_BYTES
    assert ended.error.startswith("éé") and ended.error.endswith("bytes clipped]")


# -- pipeline versions --------------------------------------------------------------------


def test_a_large_pipeline_document_is_kept_compressed_and_read_back_whole(store):
    jobs = "".join(
        f"  - {{id: j{i}, type: lambda, parameters: {{function_name: f}}}}\n" for i in range(10_000)
    )
    document = f"version: '1.1'\nname: big\njobs:\n{jobs}"
    assert len(document.encode()) > 500 * 1024  # over DynamoDB's item limit as text
    assert store.put_pipeline_version("big", document, "c", NOW) == 1
    assert store.get_pipeline_version("big") == (1, document)
    item = store.client.get_item(
        TableName=TABLE, Key=k.key_of(k.pipeline_pk("big"), k.version_sk(1))
    )
    assert "document" not in item["Item"] and len(item["Item"]["document_gz"]["B"]) < 100 * 1024
    small = "version: '1.1'\nname: small\njobs: []\n"
    store.put_pipeline_version("small", small, "s", NOW)
    assert store.get_pipeline_version("small") == (1, small)


def test_a_pipeline_document_over_the_limit_compressed_is_refused_with_its_sizes(store):
    # 600 KB of base64 noise: gzip takes it to about 450 KB.
    noise = base64.b64encode(random.Random(1).randbytes(450 * 1024)).decode()
    with pytest.raises(InputTooLarge, match=r"is 600 KB, \d+ KB compressed; .* at most 350 KB"):
        store.put_pipeline_version("noisy", f"# {noise}\n", "n", NOW)
    with pytest.raises(PipelineNotFound):
        store.get_pipeline_version("noisy")


def test_pipeline_versions_are_listed_until_the_pipeline_is_deleted(store):
    store.put_pipeline_version("ml", "doc A", "a", "t1")
    store.put_pipeline_version("ml", "doc B", "b", "t2")
    store.put_pipeline_version("ml", "doc B", "b", "t3")
    assert store.pipeline_versions("ml") == [(1, "t1"), (2, "t2")]
    with pytest.raises(PipelineNotFound):
        store.pipeline_versions("etl")
    store.delete_pipeline("ml")
    with pytest.raises(PipelineNotFound):
        store.pipeline_versions("ml")
    # The same document again brings it back without a new version.
    assert store.put_pipeline_version("ml", "doc B", "b", "t4") == 2
    assert store.list_pipelines() == [("ml", 2, "t2")]


# -- history ------------------------------------------------------------------------------

HISTORY_PIPELINE = """
version: "1.1"
name: story
jobs:
  - {id: a, type: custom, retries: 1, retry_delay: 1, parameters: {command: a}}
  - {id: b, type: custom, depends_on: [a], parameters: {command: b}}
  - {id: c, type: custom, depends_on: [b], parameters: {command: c}}
  - {id: d, type: custom, depends_on: [a], condition: false, parameters: {command: d}}
  - id: e
    type: custom
    depends_on: [a]
    for_each: {items: [1, 2]}
    parameters: {command: ["e", "${item}"]}
"""


def play_story(store: DynamoStore) -> Harness:
    h = Harness(HISTORY_PIPELINE, store=store)
    h.finish("a", error="first try fails")
    h.tick(1)
    h.fire_timers()
    h.finish("a", {"ok": True})
    h.finish("b", error="b fails")
    h.finish("e[0]", {"n": 0})
    h.finish("e[1]", {"n": 1})
    assert h.session_status() is SessionStatus.FAILED
    return h


def project_stream(store: MotoStore) -> list[dict[str, Any]]:
    """What the history function does: read the stream, write the entries; the records."""
    streams = boto3.client(
        "dynamodbstreams",
        region_name=REGION,
        # botocore names an account endpoint for a stream ARN; moto answers the regional one.
        endpoint_url=f"https://streams.dynamodb.{REGION}.amazonaws.com",
    )
    shards = streams.describe_stream(StreamArn=store.stream_arn)["StreamDescription"]["Shards"]
    records: list[dict[str, Any]] = []
    for shard in shards:
        iterator = streams.get_shard_iterator(
            StreamArn=store.stream_arn,
            ShardId=shard["ShardId"],
            ShardIteratorType="TRIM_HORIZON",
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator)
            records += page["Records"]
            iterator = page.get("NextShardIterator") if page["Records"] else None
    write_history(store.client, TABLE, entries_from_stream(records), 90)
    return records


def as_parsed(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the history function hands it over: Powertools' model, dumped (its
    images hold plain values, numbers as Decimal)."""
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/bunsui/stream/1"
    return DynamoDBStreamRecordModel.model_validate({**record, "eventSourceARN": arn}).model_dump()


def story(store: DynamoStore) -> list[tuple[str, str | None, int | None]]:
    return [(e.kind, e.key, e.attempt) for _, e in store.history("s-1")]


def test_the_stream_projection_writes_the_history_the_reducer_would():
    direct = MotoStore("direct")
    try:
        play_story(direct)
        written = story(direct)
        details = {(e.kind, e.key): e.detail for _, e in direct.history("s-1")}
    finally:
        direct.close()
    streamed = MotoStore("stream")
    try:
        play_story(streamed)
        assert streamed.history("s-1") == []  # the reducer wrote none
        records = project_stream(streamed)
        assert story(streamed) == written
        parsed = entries_from_stream([as_parsed(record) for record in records])
        assert parsed == entries_from_stream(records)
        assert len(parsed) == len(written)
        projected = {(e.kind, e.key): e.detail for _, e in streamed.history("s-1")}
        # What an item cannot tell: the retry's delay.
        assert details.pop(("job_retrying", "a")) == {"error": "first try fails", "delay": 1.0}
        assert projected.pop(("job_retrying", "a")) == {"error": "first try fails"}
        assert projected == details
        project_stream(streamed)  # a redelivered batch writes the same items again
        assert story(streamed) == written
    finally:
        streamed.close()
    assert written[0] == ("session_started", None, None)
    assert ("job_upstream_failed", "c", 0) in written
    assert ("job_skipped", "d", 0) in written
    assert ("fan_out_started", "e", None) in written
    assert written[-1] == ("session_failed", None, None)


def test_pause_resume_cancel_and_retry_are_projected_too():
    kinds = []
    for mode in ("direct", "stream"):
        store = MotoStore(mode)
        try:
            h = Harness(HISTORY_PIPELINE, store=store)
            h.reducer.handle(PauseRequested("s-1", h.tick()))
            h.reducer.handle(ResumeRequested("s-1", h.tick()))
            h.reducer.handle(CancelRequested("s-1", h.tick(), "enough"))
            h.reducer.retry("s-1", h.tick())
            if mode == "stream":
                project_stream(store)
            kinds.append(Counter(e.kind for _, e in store.history("s-1")))
        finally:
            store.close()
    assert kinds[0] == kinds[1]
    assert {"session_paused", "session_resumed", "job_cancelled", "session_cancelled"} <= set(
        kinds[0]
    )
    assert kinds[0]["session_retried"] == 1


def test_history_is_written_25_items_a_request_once_per_entry(store):
    calls = Calls(store.client)
    entries = [
        HistoryEntry("s", f"2026-01-01T00:00:{i % 60:02d}Z", "tick", "a", i) for i in range(60)
    ]
    write_history(store.client, TABLE, entries, 7)
    write_history(store.client, TABLE, entries, 7)
    writes = [body for name, body, _ in calls.made if name == "BatchWriteItem"]
    assert [len(body["RequestItems"][TABLE]) for body in writes] == [25, 25, 10] * 2
    history = store.history("s")
    assert len(history) == 60
    assert [e.attempt for _, e in history] == sorted(range(60), key=lambda i: (i % 60, i))
    assert [seq for seq, _ in store.history("s", after=58)] == [59, 60]


# -- the reducer on DynamoDB --------------------------------------------------------------

_examples = itertools.count()


@pytest.fixture(scope="module")
def shared() -> Iterator[MotoStore]:
    made = MotoStore()
    yield made
    made.close()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans(), st.data())
def test_any_delivery_order_with_duplicates_gives_the_same_end(shared, jobs, data):
    sid = f"p{next(_examples)}"
    world = World(jobs, lambda: data.draw(st.integers(1, 3), label="copies"))
    pipeline = load_pipeline(pipeline_text(jobs))
    reducer = Reducer(shared, world, world, lambda name, version: pipeline)
    reducer.start(pipeline, 1, {}, sid, T0)
    while world.pool:
        reducer.handle(world.pool.pop(data.draw(st.integers(0, len(world.pool) - 1), label="next")))
    assert all(count == 1 for count in world.claims.values()), world.claims
    expected = expected_statuses(jobs)
    assert {j: shared.get_run(sid, j).status for j in expected} == expected
    failed = any(s is JobStatus.FAILED for s in expected.values())
    final = shared.get_session(sid)
    assert final.status is (SessionStatus.FAILED if failed else SessionStatus.SUCCEEDED)
    assert final.finished == len(jobs)


def test_completions_handled_by_several_clients_at_once(shared):
    width = 30
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

    class Twice:
        def dispatch(self, order: Any) -> None:
            with lock:
                claims[(order.key, order.attempt)] += 1
            done = AttemptFinished(order.session_id, order.key, order.attempt, T0, {"ok": 1})
            events.put(done)
            events.put(done)  # every completion is delivered twice

        def stop(self, run: Any, job_type: str) -> None:
            pass

        def schedule(self, event: Event, at: str) -> None:
            events.put(event)

    world = Twice()
    Reducer(shared, world, world, lambda name, v: pipeline).start(pipeline, 1, {}, "wide", T0)
    errors: list[BaseException] = []

    def worker() -> None:
        mine = DynamoStore(TABLE, new_client(), history="stream")
        reducer = Reducer(mine, world, world, lambda name, v: pipeline)
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
    assert shared.get_session("wide").status is SessionStatus.SUCCEEDED
    sink = shared.get_run("wide", "sink")
    assert sink.status is JobStatus.SUCCEEDED
    assert len(sink.parents_done) == width
