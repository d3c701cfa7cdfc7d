"""A session's history, derived from the changes of its items (DynamoDB Streams).

On AWS the reducer writes no history item (``DynamoStore(history="stream")``):
every entry it would write follows from a change it makes anyway — a run's
status (and attempt), a session's status — so the stream of the table, with
old and new images, tells the projector (``src/handlers/history.py``) which
entries to write, in BatchWriteItem batches. That keeps a job at three writes
plus one per edge.

A session's items share a partition key, so their stream records come in the
order of their writes; an entry's sort key is its time, then the record's
sequence number, so history lists in time order and a redelivered batch
writes the same items again.

What an item does not hold, an entry cannot say: ``job_retrying`` has the
error but not the retry's delay, ``session_retried`` not the jobs it re-runs,
and ``session_paused``/``resumed``/``retried`` (whose writes carry no time)
are at the time the stream saw the change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from engine.aws import keys as k
from engine.events import HistoryEntry
from engine.state import JobStatus, SessionStatus

_LIVE = (SessionStatus.RUNNING, SessionStatus.PAUSED)
_ENDED = (SessionStatus.FAILED, SessionStatus.CANCELLED)


@dataclass(frozen=True)
class StreamEntry(HistoryEntry):
    """A history entry with the stream record it came from.

    Attributes:
        sequence: The record's sequence number: orders entries of one time in the
            order of their writes, and keys the entry, so writing it twice is one item.
    """

    sequence: str = ""


def entries_from_stream(records: Iterable[Mapping[str, Any]]) -> list[HistoryEntry]:
    """The entries the reducer's ``_history`` calls would have written for these changes.

    Args:
        records: DynamoDB stream records with ``NEW_AND_OLD_IMAGES``: a Lambda
            event's ``Records``, ``GetRecords``' answer, or Powertools'
            ``DynamoDBStreamRecordModel`` dumped (its images hold plain values).

    Returns:
        :class:`StreamEntry` items, in the records' order, for :func:`write_history`.
    """
    entries: list[HistoryEntry] = []
    for record in records:
        change = record.get("dynamodb") or {}
        keys = typed_image(change.get("Keys"))
        pk, sk = keys.get("pk", {}).get("S", ""), keys.get("sk", {}).get("S", "")
        if change.get("NewImage") is None or not pk.startswith(k.SESSION_PREFIX):
            continue  # a removal, or not a session's item
        new, old = typed_image(change.get("NewImage")), typed_image(change.get("OldImage"))
        seen = _seen_at(change.get("ApproximateCreationDateTime"))
        if sk == k.SESSION_SK:
            entry = _session_entry(old, new, seen)
        elif sk.startswith(k.RUN_PREFIX):
            entry = _run_entry(old, new)
        else:
            entry = None
        if entry is not None:
            sequence = str(change.get("SequenceNumber", ""))
            entries.append(StreamEntry(*_fields(entry), sequence=sequence))
    return entries


def typed_image(image: Mapping[str, Any] | None) -> k.Item:
    """An image in DynamoDB's typed form, as the stream sends it; Powertools' parser
    model hands images over as plain values (numbers as Decimal), which become typed again."""
    return {name: _typed_value(value) for name, value in (image or {}).items()}


def _typed_value(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in _TYPES:
        return dict(value)  # already typed: no attribute of ours is a map
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float | Decimal):
        return {"N": str(value)}
    if isinstance(value, Mapping):
        return {"M": typed_image(value)}
    if isinstance(value, list | tuple):
        return {"L": [_typed_value(v) for v in value]}
    return {"S": str(value)}


_TYPES = {"S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS"}


def write_history(
    client: Any, table: str, entries: Sequence[HistoryEntry], history_days: int
) -> None:
    """Write entries as history items, 25 to a BatchWriteItem; each expires after
    ``history_days``. Idempotent: an entry written twice is one item."""
    now = datetime.now(UTC)
    requests = [
        {"PutRequest": {"Item": k.entry_item(entry, _order(entry), history_days, now)}}
        for entry in entries
    ]
    k.batch_write(client, table, requests)


def _order(entry: HistoryEntry) -> str:
    """What orders (and keys) an entry among those of its time."""
    sequence = getattr(entry, "sequence", "")
    if sequence:
        return f"{sequence:0>40}"  # sequence numbers are decimal, of growing length
    text = json.dumps(
        [entry.session_id, entry.at, entry.kind, entry.key, entry.attempt, entry.detail],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _fields(entry: HistoryEntry) -> tuple[Any, ...]:
    return (entry.session_id, entry.at, entry.kind, entry.key, entry.attempt, entry.detail)


def _seen_at(value: Any) -> str:
    """The record's approximate time (epoch seconds in a Lambda event, a datetime from
    boto3) as ISO-8601 UTC."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        moment = datetime.now(UTC)
    return moment.astimezone(UTC).isoformat()


def _session_entry(
    old: Mapping[str, Any], new: Mapping[str, Any], seen: str
) -> HistoryEntry | None:
    if "status" not in new:
        return None
    session = k.session_from_item(new)
    if "status" not in old:
        return HistoryEntry(
            session.id,
            session.created_at or seen,
            "session_started",
            detail={"version": session.version},
        )
    before, after = k.session_from_item(old).status, session.status
    if before is after:
        return None  # a counter
    kind = f"session_{after.value}"
    if after is SessionStatus.PAUSED and before is SessionStatus.RUNNING:
        return HistoryEntry(session.id, seen, kind)
    if after is SessionStatus.RUNNING and before is SessionStatus.PAUSED:
        return HistoryEntry(session.id, seen, "session_resumed")
    if after is SessionStatus.RUNNING and before in _ENDED:
        return HistoryEntry(session.id, seen, "session_retried")
    if after.terminal and before is SessionStatus.CANCELLING:
        return HistoryEntry(
            session.id, session.ended_at or seen, kind, detail={"reason": session.reason}
        )
    if after.terminal and before in _LIVE:
        return HistoryEntry(session.id, session.ended_at or seen, kind)
    return None  # into CANCELLING: the end of the cancel says it


def _run_entry(old: Mapping[str, Any], new: Mapping[str, Any]) -> HistoryEntry | None:
    # An image of the keys alone is not a run yet (moto makes an item in two steps).
    if "key" not in new:
        return None
    run = k.run_from_item(new, edges=False)
    before = k.run_from_item(old, edges=False) if "key" in old else None
    status, attempt, changed = run.status, run.attempt, run.updated_at or ""
    old_status = before.status if before else None
    if status is JobStatus.RUNNING and attempt > (before.attempt if before else 0):
        return HistoryEntry(run.session_id, changed, "job_dispatched", run.key, attempt)
    if status is old_status:
        return None  # a count, a handle, an input: no entry
    if status is JobStatus.RUNNING and before is not None and old_status is JobStatus.WAITING:
        # A fan-out's claim adds its items to the edges it waits for.
        items = run.expected - before.expected
        return HistoryEntry(
            run.session_id, changed, "fan_out_started", run.key, detail={"items": items}
        )
    if status is JobStatus.RETRYING and old_status is JobStatus.RUNNING:
        return HistoryEntry(
            run.session_id, changed, "job_retrying", run.key, attempt, {"error": run.error}
        )
    ended = run.ended_at or changed
    if status is JobStatus.CANCELLED:
        detail = {"reason": run.reason}
        return HistoryEntry(run.session_id, ended, "job_cancelled", run.key, attempt, detail)
    if status.terminal and (old_status is None or not old_status.terminal):
        said = {"error": run.error, "reason": run.reason}
        detail = {name: value for name, value in said.items() if value}
        return HistoryEntry(run.session_id, ended, f"job_{status.value}", run.key, attempt, detail)
    return None  # queued, or reset for a retry
