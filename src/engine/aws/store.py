"""The store port on DynamoDB: sessions, job runs, slots, history and pipeline versions.

One table (layout in :mod:`engine.aws.keys`). Every write the reducer relies
on is one conditional request, so two reducers (or one event delivered twice)
cannot both win (see :mod:`engine.ports`):

- ``transition``: one ``UpdateItem`` under ``status IN (...)`` (and ``attempt = :n``);
  a failed condition is None.
- ``count_edge``: one ``UpdateItem`` that sets the attribute ``e#<edge>`` to the
  outcome under ``attribute_not_exists(e#<edge>)``, adds one to ``done`` and
  takes one from ``left``, creating the run (WAITING, ``expected``) with
  ``if_not_exists`` when it has no item yet.
- ``acquire_slot``: ``ADD`` one under ``held < :limit``; ``count_finished``: ``ADD``.

Why one attribute per edge rather than a string set of ``edge|outcome``: the
condition must hold an edge counted whatever its outcome was, which a set can
only test with one ``contains`` per outcome, and any ``ReturnValues`` that
carries the set brings every counted edge back on every edge (O(in-degree)
per edge, O(n²) for a fan-out of n items). With one attribute per edge,
``UPDATED_NEW`` carries only what this write changed: the new edge, ``done``
and ``left`` (``expected - done``, kept so the reply holds ``expected`` too: the
count that decides the child is exact from the write alone). The run's other
fields then come from one ``GetItem`` projected without the edges, and the
caller whose edge completes the count reads them all, once. Below
:data:`SMALL_FAN_IN` edges the whole item is small, so one ``ALL_NEW`` reply
does both.

DynamoDB bills a write by the item's size, so a fan-out's items are not counted
on its run's item, which would grow by ~15 bytes an item (~150 KB at 10,000)
and make each count cost O(n) write units. ``expect_items`` gives the fan-out
one part item ``PART#<key>#<part>`` per :data:`~engine.aws.keys.PART_SIZE`
items, each with its items' count still to go (``left``). An item is counted
in its part (``e#[i]`` under ``attribute_not_exists``, ``left`` minus one: under
1 KB, one write unit); the caller whose item completes the part adds the
part's size to the run's count, under ``attribute_not_exists(p#<part>)``, so
a part is added once. Every write stays O(1) in size, and exactly one caller
completes the run, as for edges. A count whose part is complete but not yet
added (its reducer died in between) adds it when the item's count comes again
(a redelivery, the sweeper). Parts carry their expansion (the run's
``started_at``): a fan-out expanded again after a session retry overwrites
parts of the expansion before, and reads skip them.

A job with more than :data:`~engine.aws.keys.JOIN_PART_SIZE` parents counts
them the same way, in parts by the parent's position among its parents
(``position``), each part created by its first count (``if_not_exists``) and
the run by the first part added; a transition that replaces a run's edges (a
session retry) deletes its parts.

The session's own slots are its ``running`` counter (one item to read for the
session and its slots); a fan-out's are the item ``SLOT#<scope>``.

Reads that decide anything are strongly consistent. Sessions are listed from
the ``ByPipeline``/``ByStatus`` indexes (no Scan), whose projections hold no
counter, so counting never writes an index.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from engine.aws import keys as k
from engine.aws.settings import Clients
from engine.errors import Conflict, InputTooLarge, OutputTooLarge, PipelineNotFound, SessionNotFound
from engine.events import HistoryEntry
from engine.state import TERMINAL_JOB, JobRun, JobStatus, Outcome, Session, SessionStatus

SMALL_FAN_IN = 16
"""Up to this many edges, a count's reply is the whole run (one request, still O(1))."""

RETRIES = 20
"""Rounds of a read-then-conditional-write before giving up (recount, edge replacement)."""

DEPLOY_RETRIES = 50
"""Rounds of a deploy that lost the race for the next version number."""

BATCH_GET = 100


class _NoPart(Exception):
    """An item's count found no part to count in: its fan-out was expanded without parts."""


class _ConditionFailed(Exception):
    """A conditional write found the item otherwise; ``item`` is what it found (if asked)."""

    def __init__(self, item: k.Item | None) -> None:
        super().__init__("condition failed")
        self.item = item


def _check_changes(
    changes: Mapping[str, Any], fields: Mapping[str, Any], fixed: set[str], what: str
) -> None:
    for name in changes:
        if name not in fields or name in fixed:
            raise ValueError(f"a {what}'s '{name}' cannot be changed this way.")


@dataclass(frozen=True)
class _Join:
    """A run an edge count creates when it has no item yet: a job whose parents end."""

    key: str
    job_id: str
    index: int | None
    expected: int

    def create(self, request: k.Expression, count: int) -> None:
        """Count ``count`` edges on the run, creating it (WAITING, ``expected``) if absent."""
        fresh: list[tuple[str, dict[str, Any]]] = [
            ("key", k.s(self.key)),
            ("job_id", k.s(self.job_id)),
            ("status", k.s(JobStatus.WAITING.value)),
            ("attempt", k.n(0)),
            ("base_attempt", k.n(0)),
            ("expected", k.n(self.expected)),
        ]
        if self.index is not None:
            fresh.append(("idx", k.n(self.index)))
        for name, value in fresh:
            # Two parents ending at once may both create the child: if_not_exists keeps one.
            request.set(name, f"if_not_exists({request.name(name)}, {request.value(value)})")
        left = f"if_not_exists({request.name(k.LEFT)}, {request.value(k.n(self.expected))})"
        request.set(k.LEFT, f"{left} - {request.value(k.n(count))}")
        request.add(k.REVISION, 1)

    def run(self, session_id: str) -> JobRun:
        """The run as it is before any edge is added to its count."""
        return JobRun(session_id, self.key, self.job_id, index=self.index, expected=self.expected)


def whole_run(client: Any, table: str, item: k.Item) -> JobRun:
    """The run of a whole item, with the edges its parts counted (one Query, when it has
    parts); ``done`` is then every edge counted, added to the run's count or not."""
    run = k.run_from_item(item)
    if k.PARTS not in item and run.expected <= k.JOIN_PART_SIZE:
        return run
    request = k.Expression()
    condition = request.equals("pk", item["pk"])
    prefix = request.value(k.s(k.part_prefix(run.key)))
    condition += f" AND begins_with({request.name('sk')}, {prefix})"
    params: dict[str, Any] = {"KeyConditionExpression": condition, **request.placeholders()}
    epoch = k.text_of(item, "started_at") or ""
    edges = dict(run.parents_done)
    for part in _query(client, table, ConsistentRead=True, **params):
        # A fan-out's parts carry its expansion; those of an expansion before are stale.
        if k.text_of(part, "epoch") in (None, epoch):
            edges.update(k.edges_of(part))
    return run.but(parents_done=edges, done=len(edges))


def _query(client: Any, table: str, **params: Any) -> Iterator[k.Item]:
    """Every item a Query finds, page after page (1 MB each)."""
    while True:
        page = client.query(TableName=table, **params)
        yield from page.get("Items", [])
        start = page.get("LastEvaluatedKey")
        if not start:
            return
        params["ExclusiveStartKey"] = start


class DynamoStore:
    """The :class:`engine.ports.Store` port (and pipeline versions) on one DynamoDB table.

    Safe for many threads (a boto3 client is). Several processes or Lambda
    instances share the table; its conditional writes settle their races.

    Args:
        table_name: The table (``BUNSUI_TABLE``).
        client: A boto3 DynamoDB client; the stack's default one when None.
        history: ``"stream"``: :meth:`append_history` writes nothing, the stream
            projector (:mod:`engine.aws.history`) derives the history from the items'
            changes; ``"direct"``: each entry is one item, written at once.
        history_days: How long history items live (the table's TTL).
    """

    def __init__(
        self,
        table_name: str,
        client: Any = None,
        *,
        history: str = "stream",
        history_days: int = 90,
    ) -> None:
        if history not in ("stream", "direct"):
            raise ValueError(f"history must be 'stream' or 'direct', not {history!r}.")
        self.table = table_name
        self.client = client if client is not None else Clients().dynamodb
        self.history_mode = history
        self.history_days = history_days

    # -- requests -----------------------------------------------------------------------

    def _get(self, pk: str, sk: str, projection: Sequence[str] | None = None) -> k.Item | None:
        params: dict[str, Any] = {}
        if projection is not None:
            request = k.Expression()
            params["ProjectionExpression"] = request.names_of(*projection)
            params.update(request.placeholders())
        reply = self.client.get_item(
            TableName=self.table, Key=k.key_of(pk, sk), ConsistentRead=True, **params
        )
        return reply.get("Item")

    def _update(
        self, pk: str, sk: str, request: k.Expression, returns: str, old_on_failure: bool = False
    ) -> k.Item:
        """UpdateItem; the reply's attributes. Raises _ConditionFailed."""
        params = request.params()
        if old_on_failure:
            params["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            reply = self.client.update_item(
                TableName=self.table, Key=k.key_of(pk, sk), ReturnValues=returns, **params
            )
        except ClientError as exc:
            if k.error_code(exc) == "ConditionalCheckFailedException":
                raise _ConditionFailed(exc.response.get("Item")) from None
            raise
        return reply.get("Attributes", {})

    def _put(self, item: k.Item, condition: str, request: k.Expression | None = None) -> bool:
        """A conditional PutItem; whether it was written."""
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression=condition,
                **(request.placeholders() if request else {}),
            )
        except ClientError as exc:
            if k.error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _query(self, **params: Any) -> Iterator[k.Item]:
        """Every item a Query finds, page after page (1 MB each)."""
        return _query(self.client, self.table, **params)

    @staticmethod
    def _partition(pk: str, prefix: str | None, request: k.Expression) -> dict[str, Any]:
        """Query parameters for the items of ``pk`` (whose sort key starts with ``prefix``)."""
        condition = request.equals("pk", k.s(pk))
        if prefix is not None:
            condition += f" AND begins_with({request.name('sk')}, {request.value(k.s(prefix))})"
        return {"KeyConditionExpression": condition}

    # -- sessions -----------------------------------------------------------------------

    def create_session(self, session: Session) -> None:
        """Write a new session.

        Raises:
            Conflict: a session with this id exists.
        """
        if not self._put(k.session_item(session), "attribute_not_exists(pk)"):
            raise Conflict(f"session '{session.id}' already exists.")

    def get_session(self, session_id: str) -> Session:
        """The session (raises SessionNotFound)."""
        item = self._get(k.session_pk(session_id), k.SESSION_SK)
        if item is None:
            raise SessionNotFound(session_id)
        return k.session_from_item(item)

    def set_session_status(
        self,
        session_id: str,
        expect: set[SessionStatus],
        status: SessionStatus,
        changes: Mapping[str, Any] | None = None,
    ) -> Session | None:
        """Change the status (and ``changes``) if it is one of ``expect``; the session
        moves to its new status's partition of ``ByStatus`` in the same write.

        Raises:
            SessionNotFound: no session has this id.
            ValueError: ``changes`` names a field that cannot be changed (``id``, ``status``).
        """
        changes = dict(changes or {})
        _check_changes(changes, k.SESSION_FIELDS, {"status"}, "session")
        if not expect:
            self.get_session(session_id)
            return None
        request = k.Expression()
        new_status = request.value(k.s(SessionStatus(status).value))
        request.set("status", new_status)
        request.set("gsi2pk", new_status)
        for name, value in changes.items():
            attribute, encode = k.SESSION_FIELDS[name]
            request.put(attribute, encode(value))
        if "pipeline" in changes:
            request.put("gsi1pk", None if changes["pipeline"] is None else k.s(changes["pipeline"]))
        if "created_at" in changes:
            newest = request.value(k.s(k.created_key(session_id, changes["created_at"])))
            request.set("gsi1sk", newest)
            request.set("gsi2sk", newest)
        # The status condition guards two reducers closing (or a cancel racing the close
        # of) one session: only the first sees a live status.
        request.where("attribute_exists(pk)")
        request.where(request.one_of("status", sorted(SessionStatus(s).value for s in expect)))
        try:
            item = self._update(
                k.session_pk(session_id), k.SESSION_SK, request, "ALL_NEW", old_on_failure=True
            )
        except _ConditionFailed as failed:
            if failed.item is None:
                raise SessionNotFound(session_id) from None
            return None
        return k.session_from_item(item)

    def count_finished(self, session_id: str, failed: bool) -> Session:
        """Atomically add one finished run (and one failed, if so): one ``ADD``.

        Returns:
            The session as updated by this call (its counters include this run).

        Raises:
            SessionNotFound: no session has this id.
        """
        request = k.Expression()
        request.add("finished", 1)
        if failed:
            request.add("failed", 1)
        request.where("attribute_exists(pk)")
        try:
            item = self._update(k.session_pk(session_id), k.SESSION_SK, request, "ALL_NEW")
        except _ConditionFailed:
            raise SessionNotFound(session_id) from None
        return k.session_from_item(item)

    def recount(self, session_id: str) -> Session:
        """Set ``finished``/``failed`` from the job-level runs (fan-out items do not count).

        The counters are written only if no ``count_finished`` came between reading
        them and writing: a run that ended meanwhile is then counted in the next round.

        Raises:
            SessionNotFound: no session has this id.
        """
        for _ in range(RETRIES):
            before = self.get_session(session_id)
            finished = failed = 0
            request = k.Expression()
            params = self._partition(k.session_pk(session_id), k.RUN_PREFIX, request)
            params["ProjectionExpression"] = request.names_of("idx", "status")
            for item in self._query(ConsistentRead=True, **params, **request.placeholders()):
                if "idx" in item:
                    continue
                status = JobStatus(item["status"]["S"])
                finished += status in TERMINAL_JOB
                failed += status is JobStatus.FAILED
            update = k.Expression()
            update.put("finished", k.n(finished))
            update.put("failed", k.n(failed))
            update.where("attribute_exists(pk)")
            update.where(update.equals("finished", k.n(before.finished)))
            update.where(update.equals("failed", k.n(before.failed)))
            try:
                item = self._update(k.session_pk(session_id), k.SESSION_SK, update, "ALL_NEW")
            except _ConditionFailed:
                continue
            return k.session_from_item(item)
        raise Conflict(f"session '{session_id}' changed too often to recount it; try again.")

    def sessions(
        self,
        pipeline: str | None = None,
        statuses: set[SessionStatus] | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """Sessions, newest first, optionally of one pipeline and in some statuses.

        One Query of ``ByPipeline`` (filtered by status), or one of ``ByStatus`` per
        status merged newest first (every status when neither is given); then the
        sessions themselves in one BatchGetItem per 100 (the indexes hold no counters).
        """
        if limit <= 0:
            return []
        wanted = sorted({SessionStatus(s).value for s in statuses}) if statuses else None
        if pipeline is not None:
            found = self._newest("ByPipeline", "gsi1pk", pipeline, limit, wanted)
        else:
            lists = [
                self._newest("ByStatus", "gsi2pk", status, limit)
                for status in wanted or [s.value for s in SessionStatus]
            ]
            merged = heapq.merge(*lists, key=lambda item: item["gsi2sk"]["S"], reverse=True)
            found = list(merged)[:limit]
        return self._sessions([item["pk"]["S"] for item in found])

    def _newest(
        self, index: str, key: str, value: str, limit: int, statuses: list[str] | None = None
    ) -> list[k.Item]:
        request = k.Expression()
        params: dict[str, Any] = {
            "IndexName": index,
            "KeyConditionExpression": request.equals(key, k.s(value)),
            "ScanIndexForward": False,
        }
        if statuses is None:
            params["Limit"] = limit  # no filter: the first page holds the answer
        else:
            params["FilterExpression"] = request.one_of("status", statuses)
        found: list[k.Item] = []
        for item in self._query(**params, **request.placeholders()):
            found.append(item)
            if len(found) >= limit:
                break
        return found

    def _sessions(self, pks: list[str]) -> list[Session]:
        """The sessions of these partition keys, in this order (gone ones left out)."""
        items: dict[str, k.Item] = {}
        for start in range(0, len(pks), BATCH_GET):
            pending: dict[str, Any] = {
                self.table: {
                    "Keys": [k.key_of(pk, k.SESSION_SK) for pk in pks[start : start + BATCH_GET]],
                    "ConsistentRead": True,
                }
            }
            for round_ in range(8):
                reply = self.client.batch_get_item(RequestItems=pending)
                for item in reply.get("Responses", {}).get(self.table, []):
                    items[item["pk"]["S"]] = item
                pending = reply.get("UnprocessedKeys") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**round_, 2.0) * (0.5 + random.random()))
        return [k.session_from_item(items[pk]) for pk in pks if pk in items]

    # -- slots --------------------------------------------------------------------------

    def acquire_slot(self, session_id: str, scope: str | None, limit: int) -> bool:
        """Take one of ``limit`` running slots of the session (scope None) or of a fan-out.

        The session's slots are its ``running`` counter; a fan-out's are the item
        ``SLOT#<scope>``, made on first use. ``held < :limit`` is the condition of the
        ``ADD`` itself, so two reducers cannot both take the last slot.

        Raises:
            SessionNotFound: no session has this id (for a fan-out's slot, checked only
                when none was taken: the reducer takes slots of sessions it has read).
        """
        if limit <= 0:
            self.get_session(session_id)
            return False
        request = k.Expression()
        bound = request.value(k.n(limit))
        if scope is None:
            request.add("running", 1)
            request.where("attribute_exists(pk)")
            request.where(f"{request.name('running')} < {bound}")
            try:
                self._update(
                    k.session_pk(session_id), k.SESSION_SK, request, "NONE", old_on_failure=True
                )
            except _ConditionFailed as failed:
                if failed.item is None:
                    raise SessionNotFound(session_id) from None
                return False
            return True
        held = request.name("held")
        request.add("held", 1)
        request.where(f"attribute_not_exists({held}) OR {held} < {bound}")
        try:
            self._update(k.session_pk(session_id), k.slot_sk(scope), request, "NONE")
        except _ConditionFailed:
            self.get_session(session_id)
            return False
        return True

    def release_slot(self, session_id: str, scope: str | None) -> None:
        """Give back a slot taken by :meth:`acquire_slot` (never below zero)."""
        request = k.Expression()
        counter = "running" if scope is None else "held"
        request.add(counter, -1)
        request.where(f"{request.name(counter)} > {request.value(k.n(0))}")
        sk = k.SESSION_SK if scope is None else k.slot_sk(scope)
        with contextlib.suppress(_ConditionFailed):  # none held: nothing to give back
            self._update(k.session_pk(session_id), sk, request, "NONE")

    # -- job runs -----------------------------------------------------------------------

    def put_run(self, run: JobRun) -> bool:
        """Write a run if no run has its key yet (one conditional PutItem).

        Raises:
            OutputTooLarge / InputTooLarge: a value is over its limit (:mod:`engine.aws.keys`).
        """
        try:
            return self._put(k.run_item(run), "attribute_not_exists(pk)")
        except ClientError as exc:
            if k.too_large(exc):
                raise _size_error(run.output is not None) from exc
            raise

    def put_new_runs(self, runs: Sequence[JobRun]) -> None:
        """Write runs no one else writes yet (see the port): BatchWriteItem, 25 a
        request (a batch cannot be conditional)."""
        puts = [{"PutRequest": {"Item": k.run_item(run)}} for run in runs]
        k.batch_write(self.client, self.table, puts)

    def get_run(self, session_id: str, key: str) -> JobRun | None:
        """The run with this key (its counted edges included, a fan-out's parts too), or None."""
        item = self._get(k.session_pk(session_id), k.run_sk(key))
        return None if item is None else self._whole(item)

    def _whole(self, item: k.Item) -> JobRun:
        return whole_run(self.client, self.table, item)

    def expect_items(self, session_id: str, key: str, count: int) -> None:
        """Make the fan-out run ``key`` count its ``count`` items in parts.

        One UpdateItem marks the run (``parts``), then one conditional PutItem a part:
        a part of this expansion is kept (a sweeper expanding the fan-out again loses
        nothing counted), a part of an expansion before is overwritten.
        """
        if count <= 0:
            return
        pk = k.session_pk(session_id)
        parts = -(-count // k.PART_SIZE)
        request = k.Expression()
        request.put(k.PARTS, k.n(parts))
        request.add(k.REVISION, 1)
        request.where("attribute_exists(pk)")
        try:
            run = self._update(pk, k.run_sk(key), request, "ALL_NEW")
        except _ConditionFailed:
            return  # no run: nothing will count into it
        epoch = k.text_of(run, "started_at") or ""
        for part in range(parts):
            size = min(k.PART_SIZE, count - part * k.PART_SIZE)
            item = {
                **k.key_of(pk, k.part_sk(key, part, items=True)),
                "size": k.n(size),
                k.LEFT: k.n(size),
                "epoch": k.s(epoch),
            }
            put = k.Expression()
            condition = (
                f"attribute_not_exists(pk) OR {put.name('epoch')} <> {put.value(k.s(epoch))}"
            )
            self._put(item, condition, put)

    def transition(
        self,
        session_id: str,
        key: str,
        expect: set[JobStatus],
        changes: Mapping[str, Any],
        attempt: int | None = None,
    ) -> JobRun | None:
        """Apply ``changes`` if the run's status is in ``expect`` (and its attempt is ``attempt``).

        One UpdateItem (``ALL_NEW``: a run's item is O(1) but for its edges). Replacing
        ``parents_done`` rewrites the whole item instead, conditional on its revision.

        Returns:
            The updated run, or None when the condition failed (or there is no run).

        Raises:
            ValueError: ``changes`` names a field that cannot be changed.
            OutputTooLarge / InputTooLarge: a value is over its limit; nothing was written.
        """
        _check_changes(changes, {**k.RUN_FIELDS, "parents_done": None}, set(), "job run")
        if not expect:
            return None
        if "parents_done" in changes:
            return self._replace_edges(session_id, key, expect, changes, attempt)
        request = k.Expression()
        for name, value in changes.items():
            attribute, encode = k.RUN_FIELDS[name]
            request.put(attribute, encode(value))
        if "expected" in changes or "done" in changes:
            request.set(k.LEFT, self._left(request, changes))
        request.add(k.REVISION, 1)
        # The status condition guards two reducers claiming or ending one run: the
        # loser's condition fails, since the winner changed the status. The attempt
        # guards a late event of an earlier attempt against ending the current one.
        request.where("attribute_exists(pk)")
        request.where(request.one_of("status", sorted(JobStatus(s).value for s in expect)))
        if attempt is not None:
            request.where(request.equals("attempt", k.n(attempt)))
        try:
            item = self._update(k.session_pk(session_id), k.run_sk(key), request, "ALL_NEW")
        except _ConditionFailed:
            return None
        except ClientError as exc:
            if k.too_large(exc):
                raise _size_error(changes.get("output") is not None) from exc
            raise
        return k.run_from_item(item)

    @staticmethod
    def _left(request: k.Expression, changes: Mapping[str, Any]) -> str:
        if "expected" in changes and "done" in changes:
            return request.value(k.n(changes["expected"] - changes["done"]))
        expected = (
            request.value(k.n(changes["expected"]))
            if "expected" in changes
            else request.name("expected")
        )
        done = request.value(k.n(changes["done"])) if "done" in changes else request.name("done")
        return f"{expected} - {done}"

    def _replace_edges(
        self,
        session_id: str,
        key: str,
        expect: set[JobStatus],
        changes: Mapping[str, Any],
        attempt: int | None,
    ) -> JobRun | None:
        """A transition that replaces the counted edges: the item is read and put back
        whole (any number of edges, no expression limit), under its revision, so an
        edge counted or a transition made in between sends it round again."""
        pk, sk = k.session_pk(session_id), k.run_sk(key)
        for _ in range(RETRIES):
            item = self._get(pk, sk)
            if item is None:
                return None
            run = k.run_from_item(item)
            if run.status not in expect or (attempt is not None and run.attempt != attempt):
                return None
            if k.PARTS in item or run.expected > k.JOIN_PART_SIZE:
                self._delete_parts(pk, key)  # the new edges are the run's own
            new = run.but(**changes)
            new_item = k.run_item(new)
            revision = k.int_of(item, k.REVISION) or 0
            new_item[k.REVISION] = k.n(revision + 1)
            request = k.Expression()
            condition = request.equals(k.REVISION, k.n(revision))
            try:
                if self._put(new_item, condition, request):
                    return k.run_from_item(new_item)
            except ClientError as exc:
                if k.too_large(exc):
                    raise _size_error(new.output is not None) from exc
                raise
        raise Conflict(f"job run '{key}' changed too often to replace its edges; try again.")

    def _delete_parts(self, pk: str, key: str) -> None:
        request = k.Expression()
        params = self._partition(pk, k.part_prefix(key), request)
        params["ProjectionExpression"] = request.names_of("pk", "sk")
        found = self._query(ConsistentRead=True, **params, **request.placeholders())
        deletes = [{"DeleteRequest": {"Key": k.key_of(pk, part["sk"]["S"])}} for part in found]
        k.batch_write(self.client, self.table, deletes)

    def count_edge(
        self,
        session_id: str,
        key: str,
        job_id: str,
        index: int | None,
        edge: str,
        outcome: Outcome,
        expected: int,
        position: int | None = None,
    ) -> JobRun | None:
        """Record that ``edge`` finished with ``outcome``, creating the run if absent.

        One UpdateItem, plus one GetItem when more than :data:`SMALL_FAN_IN` edges
        decide the run (or ``expected`` is not given): projected without the edges,
        or whole for the caller whose edge completes the count. A fan-out's item
        ``[i]`` is counted in its part (see the module's notes): one UpdateItem and
        one GetItem, and one UpdateItem more for the item that completes its part.

        Returns:
            The updated run, or None when this edge was counted before. Exactly one
            caller gets a run with ``done == expected``; only that one carries the
            outcomes in ``parents_done`` (others: ``done`` alone).
        """
        pk, sk = k.session_pk(session_id), k.run_sk(key)
        item = k.item_position(edge)
        if item is not None:
            with contextlib.suppress(_NoPart):
                return self._count_in_part(pk, key, item, edge, outcome, None)
        elif position is not None and expected > k.JOIN_PART_SIZE:
            join = _Join(key, job_id, index, expected)
            return self._count_in_part(pk, key, position, edge, outcome, join)
        request = k.Expression()
        attribute = k.edge_attribute(edge)
        request.set(attribute, request.value(k.s(Outcome(outcome).value)))
        _Join(key, job_id, index, expected).create(request, 1)
        request.adds.append(f"{request.name('done')} {request.value(k.n(1))}")
        # The edge's own attribute guards a redelivered event counting it twice, whatever
        # outcome it came with; each caller's reply holds the count its own edge made.
        request.where(f"attribute_not_exists({request.name(attribute)})")
        small = 0 < expected <= SMALL_FAN_IN
        try:
            reply = self._update(pk, sk, request, "ALL_NEW" if small else "UPDATED_NEW")
        except _ConditionFailed:
            return None
        done, left = int(reply["done"]["N"]), int(reply[k.LEFT]["N"])
        if small and k.PARTS not in reply:
            run: JobRun | None = k.run_from_item(reply, edges=left <= 0)
        else:
            run = self._read_counted(pk, key, complete=left <= 0)
        if run is None:
            return None  # deleted in between (a session retry forgot it)
        return run.but(done=done, expected=done + left)

    def _read_counted(self, pk: str, key: str, complete: bool) -> JobRun | None:
        """The run a count changed: whole (its parts too) for the count that completed
        it, else without its edges (one GetItem projected)."""
        found = self._get(pk, k.run_sk(key), None if complete else ("pk", *k.RUN_ATTRIBUTES))
        if found is None:
            return None
        return self._whole(found) if complete else k.run_from_item(found, edges=False)

    def _count_in_part(
        self, pk: str, key: str, position: int, edge: str, outcome: Outcome, join: _Join | None
    ) -> JobRun | None:
        """Count ``edge`` in its part: a fan-out's item (``join`` None: the parts exist)
        or a parent of a wide join (the part is created by its first count).

        Returns:
            What :meth:`count_edge` returns.

        Raises:
            _NoPart: the fan-out has no parts (it was expanded before they were).
        """
        size = k.PART_SIZE if join is None else k.JOIN_PART_SIZE
        part = position // size
        request = k.Expression()
        attribute = k.edge_attribute(edge)
        request.set(attribute, request.value(k.s(Outcome(outcome).value)))
        if join is None:
            request.add(k.LEFT, -1)
            request.where("attribute_exists(pk)")
        else:
            part_size = request.value(k.n(min(size, join.expected - part * size)))
            request.set("size", f"if_not_exists({request.name('size')}, {part_size})")
            left = f"if_not_exists({request.name(k.LEFT)}, {part_size})"
            request.set(k.LEFT, f"{left} - {request.value(k.n(1))}")
        request.where(f"attribute_not_exists({request.name(attribute)})")
        sk = k.part_sk(key, part, items=join is None)
        try:
            reply = self._update(pk, sk, request, "ALL_NEW", old_on_failure=True)
        except _ConditionFailed as failed:
            if failed.item is None:  # only a fan-out's part must exist beforehand
                raise _NoPart from None
            # Counted before. Its part may be complete and never added to the run (the
            # reducer that completed it died): adding it is idempotent, so add it now.
            if (k.int_of(failed.item, k.LEFT) or 0) > 0:
                return None
            return self._add_part(pk, key, part, failed.item, join)
        if (k.int_of(reply, k.LEFT) or 0) > 0:
            run = self._read_counted(pk, key, complete=False)
            if run is not None:
                # The part this edge left incomplete may have been completed and added
                # since: the count read can be whole, but only the part's completer may
                # see the run complete.
                return run.but(done=min(run.done, run.expected - 1))
            # A join's first parts fill before any is added: the run has no item yet.
            return None if join is None else join.run(k.session_id_of(pk))
        return self._add_part(pk, key, part, reply, join)

    def _add_part(
        self, pk: str, key: str, part: int, counted: k.Item, join: _Join | None
    ) -> JobRun | None:
        """Add a complete part's size to its run's count, once (``p#<part>``): the run,
        whole when this completes it; None when the part was added before."""
        size = k.int_of(counted, "size") or 0
        request = k.Expression()
        added = f"{k.PUSHED_PREFIX}{'i' if join is None else 'e'}{part}"
        request.put(added, k.n(size))
        request.adds.append(f"{request.name('done')} {request.value(k.n(size))}")
        if join is None:
            request.add(k.LEFT, -size)
            request.add(k.REVISION, 1)
            request.where("attribute_exists(pk)")
        else:
            join.create(request, size)
        request.where(f"attribute_not_exists({request.name(added)})")
        try:
            reply = self._update(pk, k.run_sk(key), request, "UPDATED_NEW")
        except _ConditionFailed:
            return None
        done, left = int(reply["done"]["N"]), int(reply[k.LEFT]["N"])
        run = self._read_counted(pk, key, complete=left <= 0)
        return None if run is None else run.but(done=done, expected=done + left)

    def runs(
        self,
        session_id: str,
        statuses: set[JobStatus] | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[JobRun]:
        """Runs of a session by job id, then item index: one Query (page after page).

        Args:
            statuses: Only runs in one of these statuses (an empty set matches none);
                a filter, so the Query still reads the session's (or job's) runs.
            job_id: Only the runs of this job (a fan-out and its items): a key prefix.
            limit: At most this many runs.
        """
        if (limit is not None and limit <= 0) or (statuses is not None and not statuses):
            return []
        request = k.Expression()
        prefix = k.RUN_PREFIX if job_id is None else k.job_prefix(job_id)
        params = self._partition(k.session_pk(session_id), prefix, request)
        filters = []
        if statuses is not None:
            filters.append(request.one_of("status", sorted(JobStatus(s).value for s in statuses)))
        if job_id is not None:
            filters.append(request.equals("job_id", k.s(job_id)))
        if filters:
            params["FilterExpression"] = " AND ".join(filters)
        elif limit is not None:
            params["Limit"] = limit
        found: list[JobRun] = []
        for item in self._query(ConsistentRead=True, **params, **request.placeholders()):
            found.append(self._whole(item))
            if limit is not None and len(found) >= limit:
                break
        # The reducer's keys (job, job[i]) sort by job and index already; a key that
        # names an index its run does not have is put in the local store's order here.
        return sorted(found, key=k.run_order)

    def delete_runs(self, session_id: str, keys: Sequence[str]) -> None:
        """Forget runs and their counted edges (BatchWriteItem, 25 a request)."""
        pk = k.session_pk(session_id)
        k.batch_write(
            self.client,
            self.table,
            [{"DeleteRequest": {"Key": k.key_of(pk, k.run_sk(key))}} for key in keys],
        )

    # -- history ------------------------------------------------------------------------

    def append_history(self, entry: HistoryEntry) -> None:
        """Write the entry now (``history="direct"``), or nothing: with ``"stream"`` the
        projector writes it from the change of the run or session item."""
        if self.history_mode != "direct":
            return
        item = k.entry_item(entry, k.STAMPS.next(), self.history_days, datetime.now(UTC))
        self.client.put_item(TableName=self.table, Item=item)

    def history(self, session_id: str, after: int = 0) -> list[tuple[int, HistoryEntry]]:
        """The session's entries in time order, numbered from 1, after number ``after``."""
        request = k.Expression()
        params = self._partition(k.session_pk(session_id), k.HISTORY_PREFIX, request)
        items = self._query(ConsistentRead=True, **params, **request.placeholders())
        return [(seq, k.entry_from_item(item)) for seq, item in enumerate(items, 1) if seq > after]

    # -- pipeline versions --------------------------------------------------------------

    def put_pipeline_version(self, name: str, document: str, checksum: str, created_at: str) -> int:
        """Store a pipeline document as its next immutable version (1, 2, ...).

        The version item, the head (latest) and the listing item are one transaction
        conditional on the head's ``latest`` as read: of two deploys at once, one
        writes N + 1 and the other goes round again for N + 2. Putting a deleted
        pipeline's name again brings it back, its old versions included.

        Returns:
            The new version, or the latest one when its checksum is ``checksum``.

        Raises:
            Conflict: too many deploys of this pipeline at once.
        """
        pk = k.pipeline_pk(name)
        for _ in range(DEPLOY_RETRIES):
            head = self._get(pk, k.HEAD_SK)
            latest = 0 if head is None else k.int_of(head, "latest") or 0
            if head is not None and k.text_of(head, "checksum") == checksum:
                if not _deleted(head) or self._set_deleted(name, False, latest):
                    return latest
                continue
            version = latest + 1
            fields = {"created_at": k.s(created_at), "checksum": k.s(checksum)}
            listing = {"latest": k.n(version), "deleted": {"BOOL": False}, **fields}
            request = k.Expression()
            if head is None:
                request.where("attribute_not_exists(pk)")
            else:
                request.where(request.equals("latest", k.n(latest)))
            document_item = {"version": k.n(version), **k.document_value(document), **fields}
            written = self._transact(
                {
                    "Put": {
                        "Item": {**k.key_of(pk, k.version_sk(version)), **document_item},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Put": {"Item": {**k.key_of(pk, k.HEAD_SK), **listing}, **request.params()}},
                {"Put": {"Item": {**k.key_of(k.PIPELINES_PK, name), **listing}}},
            )
            if written:
                return version
            time.sleep(0.01 * random.random())
        raise Conflict(f"pipeline '{name}' is being deployed by others at once; try again.")

    def _transact(self, *actions: dict[str, dict[str, Any]]) -> bool:
        """TransactWriteItems; False when a condition failed (nothing was written)."""
        for action in actions:
            next(iter(action.values()))["TableName"] = self.table
        try:
            self.client.transact_write_items(TransactItems=list(actions))
        except ClientError as exc:
            if k.error_code(exc) != "TransactionCanceledException":
                raise
            return False
        return True

    def _set_deleted(self, name: str, deleted: bool, latest: int | None = None) -> bool:
        """Mark the head and the listing item (not) deleted if the head is not yet;
        with ``latest``, only while that is still the latest version."""
        head = k.Expression()
        head.put("deleted", {"BOOL": deleted})
        head.where("attribute_exists(pk)")
        head.where(head.equals("deleted", {"BOOL": not deleted}))
        if latest is not None:
            head.where(head.equals("latest", k.n(latest)))
        listing = k.Expression()
        listing.put("deleted", {"BOOL": deleted})
        return self._transact(
            {"Update": {"Key": k.key_of(k.pipeline_pk(name), k.HEAD_SK), **head.params()}},
            {"Update": {"Key": k.key_of(k.PIPELINES_PK, name), **listing.params()}},
        )

    def get_pipeline_version(self, name: str, version: int | None = None) -> tuple[int, str]:
        """A pipeline's document: the latest version, or the one asked for.

        An explicit version stays readable after :meth:`delete_pipeline`, so the
        sessions that pinned it keep running.

        Raises:
            PipelineNotFound: no such pipeline (or it was deleted and no version was
                given), or it has no version ``version``.
        """
        pk = k.pipeline_pk(name)
        if version is None:
            head = self._get(pk, k.HEAD_SK)
            if head is None or _deleted(head):
                raise PipelineNotFound(name)
            version = k.int_of(head, "latest") or 0
        found = self._get(pk, k.version_sk(version))
        if found is None:
            if self._get(pk, k.HEAD_SK, ("pk",)) is None:
                raise PipelineNotFound(name)
            raise PipelineNotFound(name, version)
        return version, k.document_of(found)

    def list_pipelines(self) -> list[tuple[str, int, str]]:
        """``(name, latest version, its created_at)`` of every pipeline not deleted, by name."""
        request = k.Expression()
        params = self._partition(k.PIPELINES_PK, None, request)
        params["FilterExpression"] = request.equals("deleted", {"BOOL": False})
        return [
            (item["sk"]["S"], k.int_of(item, "latest") or 0, k.text_of(item, "created_at") or "")
            for item in self._query(ConsistentRead=True, **params, **request.placeholders())
        ]

    def delete_pipeline(self, name: str) -> None:
        """Mark a pipeline deleted: it leaves :meth:`list_pipelines` and a get without a
        version fails, but its versions stay readable by number.

        Raises:
            PipelineNotFound: no such pipeline, or it is already deleted.
        """
        if not self._set_deleted(name, True):
            raise PipelineNotFound(name)

    def pipeline_versions(self, name: str) -> list[tuple[int, str]]:
        """``(version, created_at)`` of every version of a pipeline, oldest first: one
        Query of its partition (the head, then the versions), documents left out.

        Raises:
            PipelineNotFound: no such pipeline, or it was deleted.
        """
        request = k.Expression()
        params = self._partition(k.pipeline_pk(name), None, request)
        params["ProjectionExpression"] = request.names_of("sk", "version", "created_at", "deleted")
        items = list(self._query(ConsistentRead=True, **params, **request.placeholders()))
        head = next((item for item in items if item["sk"]["S"] == k.HEAD_SK), None)
        if head is None or _deleted(head):
            raise PipelineNotFound(name)
        return [
            (k.int_of(item, "version") or 0, k.text_of(item, "created_at") or "")
            for item in items
            if item["sk"]["S"].startswith(k.VERSION_PREFIX)
        ]


def _deleted(head: k.Item) -> bool:
    return bool(head.get("deleted", {}).get("BOOL"))


def _size_error(has_output: bool) -> Exception:
    """DynamoDB's refusal of an item over 400 KB, as the error the reducer handles."""
    text = "a job run's record would be larger than DynamoDB's 400 KB item limit"
    if has_output:
        return OutputTooLarge(
            f"{text} with this output: write large results to storage (S3) and return "
            "their location."
        )
    return InputTooLarge(f"{text}: pass large values by reference (an S3 location).")
