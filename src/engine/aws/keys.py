"""The table's layout: the key of every item, how records become items and back, and
the expressions and batches that address them.

One table holds everything (see docs/architecture.md). A session's items share
its partition key ``SESSION#<id>``, so a Query reads its runs or its history
and the stream delivers its changes in commit order:

- ``SESSION``: the session, with the keys of the ``ByPipeline`` and ``ByStatus``
  indexes (``gsi1pk``/``gsi1sk``, ``gsi2pk``/``gsi2sk``);
- ``RUN#<job id>#-`` (a job) and ``RUN#<job id>#<index:08d>`` (a fan-out item):
  a Query returns a session's runs ordered by job id, then index, since job ids
  are ``[A-Za-z0-9_-]``, all above ``#``, and ``-`` sorts before the digits;
- ``SLOT#<scope>``: a fan-out's running slots (the session's own are its
  ``running`` counter);
- ``PART#<job id>#i<part:06d>`` / ``PART#<job id>#e<part:06d>``: a fan-out's items'
  outcomes / a wide join's parents' outcomes, :data:`PART_SIZE` a part (see
  :mod:`engine.aws.store`);
- ``H#<time>#<order>``: a history entry.

A pipeline's items share ``PIPELINE#<name>``: ``HEAD`` (latest version,
checksum, deleted) and ``V#<version:08d>`` (a document); ``PIPELINES``/``<name>``
lists it, so listing pipelines is one Query.

Field values are plain attributes: numbers as ``N``, texts as ``S``, and JSON
values (parameters, a run's item, inputs and output) as one ``S`` of JSON, so
floats never meet DynamoDB's decimals. A field that is None has no attribute.
A run's counted edges are attributes ``e#<edge>`` (see :mod:`engine.aws.store`).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from engine.errors import InputTooLarge, OutputTooLarge
from engine.events import HistoryEntry
from engine.state import JobRun, JobStatus, Outcome, Session, SessionStatus

Item = dict[str, dict[str, Any]]
"""An item as the low-level client reads and writes it: name -> typed value."""

SESSION_PREFIX = "SESSION#"
SESSION_SK = "SESSION"
RUN_PREFIX = "RUN#"
SLOT_PREFIX = "SLOT#"
PART_PREFIX = "PART#"
HISTORY_PREFIX = "H#"
EDGE_PREFIX = "e#"
PUSHED_PREFIX = "p#"
PARTS = "parts"
PART_SIZE = 50
"""A fan-out's items counted in one part: 50 outcomes (``e#[1234]``, about 15 bytes each)
keep a part's item under the 1 KB of one write unit."""
JOIN_PART_SIZE = 25
"""A job with more parents than this counts them in parts of this many: 25 outcomes of
parents named with up to 30 characters keep a part under 1 KB too."""
PIPELINES_PK = "PIPELINES"
PIPELINE_PREFIX = "PIPELINE#"
HEAD_SK = "HEAD"
VERSION_PREFIX = "V#"

MAX_OUTPUT_BYTES = 256 * 1024
"""The largest output (its UTF-8 JSON) a run keeps inline: the local store's limit."""

MAX_INPUTS_BYTES = 64 * 1024
"""The largest recorded inputs of a run (and parameters of a session), as UTF-8 JSON."""

MAX_ITEM_BYTES = 16 * 1024
"""The largest fan-out item value a run keeps, as UTF-8 JSON."""

MAX_DOCUMENT_BYTES = 350 * 1024
"""The largest pipeline document a version item keeps, gzip-compressed (DynamoDB's item
limit is 400 KB); a document over :data:`COMPRESS_DOCUMENT_BYTES` is kept compressed."""

COMPRESS_DOCUMENT_BYTES = 64 * 1024

MAX_TEXT_BYTES = 8 * 1024
"""An error or reason longer than this is clipped: a service's error text must not
keep a run's end from being written."""

# Output + inputs + item + error + reason stay near 350 KB: the rest of DynamoDB's
# 400 KB item limit is for the counted edges (about 20 bytes each).

BATCH_WRITE = 25
"""Items in one BatchWriteItem (DynamoDB's limit)."""

_ITEM_INDEX = re.compile(r"^(.+)\[(0|[1-9][0-9]{0,7})\]$")


def session_pk(session_id: str) -> str:
    return SESSION_PREFIX + session_id


def session_id_of(pk: str) -> str:
    return pk[len(SESSION_PREFIX) :]


def run_sk(key: str) -> str:
    """The sort key of a run, from its key alone (``get_run`` knows nothing else)."""
    match = _ITEM_INDEX.match(key)
    if match is None:
        return f"{RUN_PREFIX}{key}#-"
    return f"{RUN_PREFIX}{match.group(1)}#{int(match.group(2)):08d}"


def job_prefix(job_id: str) -> str:
    """The sort-key prefix of a job's runs: the job and its fan-out items."""
    return f"{RUN_PREFIX}{job_id}#"


def slot_sk(scope: str) -> str:
    return SLOT_PREFIX + scope


def part_prefix(key: str) -> str:
    """The sort-key prefix of the parts of the fan-out run ``key``."""
    return f"{PART_PREFIX}{key}#"


def part_sk(key: str, part: int, items: bool) -> str:
    """A part of a fan-out's items (``i``) or of a job's parents (``e``)."""
    return f"{part_prefix(key)}{'i' if items else 'e'}{part:06d}"


_ITEM_EDGE = re.compile(r"^\[(0|[1-9][0-9]{0,7})\]$")


def item_position(edge: str) -> int | None:
    """The index of a fan-out item's edge ``[i]``; None for a parent's edge."""
    match = _ITEM_EDGE.match(edge)
    return None if match is None else int(match.group(1))


def document_value(document: str) -> Item:
    """A pipeline document's attribute: ``document`` (text), or ``document_gz`` (gzip)
    when it is large. A YAML pipeline compresses about 20 times: the largest pipeline
    the loader takes (10,000 jobs, about 1 MB) is kept in about 50 KB.

    Raises:
        InputTooLarge: the document is over :data:`MAX_DOCUMENT_BYTES` compressed.
    """
    encoded = document.encode()
    if len(encoded) <= COMPRESS_DOCUMENT_BYTES:
        return {"document": s(document)}
    packed = gzip.compress(encoded, mtime=0)
    if len(packed) > MAX_DOCUMENT_BYTES:
        raise InputTooLarge(
            f"the pipeline document is {len(encoded) // 1024:,} KB, {len(packed) // 1024:,} KB"
            f" compressed; on AWS a pipeline version holds at most"
            f" {MAX_DOCUMENT_BYTES // 1024} KB compressed: split the pipeline, or pass large"
            " lists as parameters."
        )
    return {"document_gz": {"B": packed}}


def document_of(item: Mapping[str, Any]) -> str:
    """The document a version item holds (see :func:`document_value`)."""
    if "document_gz" in item:
        return gzip.decompress(item["document_gz"]["B"]).decode()
    return text_of(item, "document") or ""


def pipeline_pk(name: str) -> str:
    return PIPELINE_PREFIX + name


def version_sk(version: int) -> str:
    return f"{VERSION_PREFIX}{version:08d}"


def key_of(pk: str, sk: str) -> Item:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


# -- typed values -------------------------------------------------------------------------


def s(text: str) -> dict[str, Any]:
    return {"S": text}


def n(number: int) -> dict[str, Any]:
    return {"N": str(int(number))}


def text_of(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return None if value is None or "NULL" in value else value["S"]


def int_of(item: Mapping[str, Any], name: str, default: int | None = 0) -> int | None:
    value = item.get(name)
    return default if value is None or "NULL" in value else int(value["N"])


def json_of(item: Mapping[str, Any], name: str) -> Any:
    text = text_of(item, name)
    return None if text is None else json.loads(text)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def output_value(value: Any) -> dict[str, Any] | None:
    """The output attribute, refusing what is too large to keep inline."""
    if value is None:
        return None
    # The size is measured as the local store measures it, so both refuse the same outputs.
    size = _size(json.dumps(value, ensure_ascii=False))
    if size > MAX_OUTPUT_BYTES:
        raise OutputTooLarge(
            f"output is {size} bytes of JSON; the limit is {MAX_OUTPUT_BYTES} bytes: "
            "write large results to storage (S3) and return their location."
        )
    return s(_json(value))


def _bounded_json(what: str, limit: int) -> Callable[[Any], dict[str, Any] | None]:
    def encode(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        text = _json(value)
        if _size(text) > limit:
            raise InputTooLarge(
                f"{what} is {_size(text)} bytes of JSON; the limit is {limit} bytes: "
                "pass large values by reference (an S3 location)."
            )
        return s(text)

    return encode


inputs_value = _bounded_json("a job's inputs", MAX_INPUTS_BYTES)
item_value = _bounded_json("a fan-out item", MAX_ITEM_BYTES)
parameters_value = _bounded_json("a session's parameters", MAX_INPUTS_BYTES)


def clipped(text: str) -> str:
    """``text`` cut to :data:`MAX_TEXT_BYTES` of UTF-8, saying so."""
    data = text.encode("utf-8")
    if len(data) <= MAX_TEXT_BYTES:
        return text
    head = data[: MAX_TEXT_BYTES - 64].decode("utf-8", errors="ignore")
    return f"{head} ... [{len(data) - len(head.encode('utf-8'))} more bytes clipped]"


def _text(value: Any) -> dict[str, Any] | None:
    return None if value is None else s(str(value))


def _clipped_text(value: Any) -> dict[str, Any] | None:
    return None if value is None else s(clipped(str(value)))


def _number(value: Any) -> dict[str, Any] | None:
    return None if value is None else n(value)


Encoder = Callable[[Any], dict[str, Any] | None]
"""A field value -> its attribute (None: no attribute)."""

RUN_FIELDS: dict[str, tuple[str, Encoder]] = {
    "job_id": ("job_id", _text),
    "index": ("idx", _number),
    "status": ("status", lambda value: s(JobStatus(value).value)),
    "attempt": ("attempt", n),
    "base_attempt": ("base_attempt", n),
    "expected": ("expected", n),
    "done": ("done", n),
    "item": ("item", item_value),
    "inputs": ("inputs", inputs_value),
    "output": ("output", output_value),
    "error": ("error", _clipped_text),
    "handle": ("handle", _text),
    "started_at": ("started_at", _text),
    "ended_at": ("ended_at", _text),
    "updated_at": ("updated_at", _text),
    "reason": ("reason", _clipped_text),
}
"""A run's changeable fields: attribute name and encoder. ``session_id`` and ``key``
are the item's key; ``parents_done`` are the edge attributes."""

RUN_ATTRIBUTES = ("key", *(attribute for attribute, _ in RUN_FIELDS.values()))
"""Every attribute of a run but its edges (what a read without the edges projects)."""

LEFT = "left"
"""Edges still to count (``expected - done``): changes with every counted edge, so the
count's reply always carries it, and ``expected`` with it."""

REVISION = "rev"
"""Bumped by every write to a run: a rewrite of the whole item is conditional on it."""

SESSION_FIELDS: dict[str, tuple[str, Encoder]] = {
    "pipeline": ("pipeline", _text),
    "version": ("version", n),
    "parameters": ("parameters", lambda value: parameters_value(dict(value))),
    "status": ("status", lambda value: s(SessionStatus(value).value)),
    "total": ("total", n),
    "finished": ("finished", n),
    "failed": ("failed", n),
    "running": ("running", n),
    "created_at": ("created_at", _text),
    "ended_at": ("ended_at", _text),
    "reason": ("reason", _clipped_text),
}
"""A session's fields but its id (the key): attribute name and encoder."""


# -- runs ---------------------------------------------------------------------------------


def edge_attribute(edge: str) -> str:
    return EDGE_PREFIX + edge


def edges_of(item: Mapping[str, Any]) -> dict[str, Outcome]:
    return {
        name[len(EDGE_PREFIX) :]: Outcome(value["S"])
        for name, value in item.items()
        if name.startswith(EDGE_PREFIX)
    }


def run_item(run: JobRun) -> Item:
    """The whole item of a run; ``done`` is the number of its ``parents_done``."""
    edges = {edge: Outcome(outcome) for edge, outcome in run.parents_done.items()}
    item: Item = key_of(session_pk(run.session_id), run_sk(run.key))
    item["key"] = s(run.key)
    values = {**_fields(run, RUN_FIELDS), "done": len(edges)}
    for name, (attribute, encode) in RUN_FIELDS.items():
        value = encode(values[name])
        if value is not None:
            item[attribute] = value
    item[LEFT] = n(run.expected - len(edges))
    item[REVISION] = n(0)
    for edge, outcome in edges.items():
        item[edge_attribute(edge)] = s(outcome.value)
    return item


def run_from_item(item: Mapping[str, Any], edges: bool = True) -> JobRun:
    """The run an item holds; with its counted edges, or (``edges=False``) the count alone."""
    return JobRun(
        session_id=session_id_of(item["pk"]["S"]),
        key=item["key"]["S"],
        job_id=text_of(item, "job_id") or item["key"]["S"],
        index=int_of(item, "idx", None),
        status=JobStatus(text_of(item, "status") or JobStatus.WAITING.value),
        attempt=int_of(item, "attempt") or 0,
        base_attempt=int_of(item, "base_attempt") or 0,
        parents_done=edges_of(item) if edges else {},
        expected=int_of(item, "expected") or 0,
        done=int_of(item, "done") or 0,
        item=json_of(item, "item"),
        inputs=json_of(item, "inputs"),
        output=json_of(item, "output"),
        error=text_of(item, "error"),
        handle=text_of(item, "handle"),
        started_at=text_of(item, "started_at"),
        ended_at=text_of(item, "ended_at"),
        updated_at=text_of(item, "updated_at"),
        reason=text_of(item, "reason"),
    )


def run_order(run: JobRun) -> tuple[str, bool, int, str]:
    """Order of runs: job id, the job before its items, item index, key."""
    return (run.job_id, run.index is not None, run.index or 0, run.key)


# -- sessions -----------------------------------------------------------------------------


def created_key(session_id: str, created_at: str | None) -> str:
    """The indexes' sort key: newest first when read backwards, ties by id. Index keys
    cannot be empty: a session without a time still has its id."""
    return f"{created_at or ''}#{session_id}"


def session_index_keys(session: Session) -> Item:
    """The attributes that place a session in ``ByPipeline`` and ``ByStatus``."""
    newest = created_key(session.id, session.created_at)
    return {
        "gsi1pk": s(session.pipeline),
        "gsi1sk": s(newest),
        "gsi2pk": s(SessionStatus(session.status).value),
        "gsi2sk": s(newest),
    }


def session_item(session: Session) -> Item:
    item: Item = key_of(session_pk(session.id), SESSION_SK)
    values = _fields(session, SESSION_FIELDS)
    for name, (attribute, encode) in SESSION_FIELDS.items():
        value = encode(values[name])
        if value is not None:
            item[attribute] = value
    item.update(session_index_keys(session))
    return item


def session_from_item(item: Mapping[str, Any]) -> Session:
    return Session(
        id=session_id_of(item["pk"]["S"]),
        pipeline=text_of(item, "pipeline") or "",
        version=int_of(item, "version") or 0,
        parameters=json_of(item, "parameters") or {},
        status=SessionStatus(text_of(item, "status") or SessionStatus.RUNNING.value),
        total=int_of(item, "total") or 0,
        finished=int_of(item, "finished") or 0,
        failed=int_of(item, "failed") or 0,
        running=int_of(item, "running") or 0,
        created_at=text_of(item, "created_at"),
        ended_at=text_of(item, "ended_at"),
        reason=text_of(item, "reason"),
    )


def _fields(record: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in fields}


# -- history ------------------------------------------------------------------------------


def parse_time(at: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(at)
    except (TypeError, ValueError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def sort_time(at: str) -> str:
    """``at`` in one fixed-width UTC form, so history keys sort in time order whatever
    form a time came in (``Z``, ``+00:00``, with or without fractions)."""
    moment = parse_time(at)
    return at if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_sk(at: str, order: str) -> str:
    return f"{HISTORY_PREFIX}{sort_time(at)}#{order}"


def _clip_detail(detail: Any) -> Any:
    if not isinstance(detail, dict):
        return detail
    return {
        name: clipped(value) if isinstance(value, str) and name in ("error", "reason") else value
        for name, value in detail.items()
    }


class Stamps:
    """Increasing stamps of this process (time in ns, never repeated nor going back),
    with a random suffix per process: the order of history entries written directly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._suffix = os.urandom(3).hex()

    def next(self) -> str:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return f"{self._last:020d}-{self._suffix}"


STAMPS = Stamps()
"""The stamps of this process (shared by its stores)."""


def entry_item(entry: HistoryEntry, order: str, history_days: int, now: datetime) -> Item:
    """The item of a history entry; it expires ``history_days`` after its time."""
    item: Item = key_of(session_pk(entry.session_id), history_sk(entry.at, order))
    item["at"] = s(entry.at)
    item["kind"] = s(entry.kind)
    if entry.key is not None:
        item["key"] = s(entry.key)
    if entry.attempt is not None:
        item["attempt"] = n(entry.attempt)
    if entry.detail is not None:
        item["detail"] = s(_json(_clip_detail(entry.detail)))
    start = parse_time(entry.at) or now
    item["expires_at"] = n((start + timedelta(days=history_days)).timestamp())
    return item


def entry_from_item(item: Mapping[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        session_id=session_id_of(item["pk"]["S"]),
        at=text_of(item, "at") or "",
        kind=text_of(item, "kind") or "",
        key=text_of(item, "key"),
        attempt=int_of(item, "attempt", None),
        detail=json_of(item, "detail"),
    )


# -- requests -----------------------------------------------------------------------------


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def too_large(exc: ClientError) -> bool:
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return error_code(exc) == "ValidationException" and "maximum allowed size" in message


class Expression:
    """One request's expressions. Every name goes through a placeholder: most of ours
    (status, key, item, output, reason...) are DynamoDB reserved words."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, dict[str, Any]] = {}
        self._placeholders: dict[str, str] = {}
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.adds: list[str] = []
        self.conditions: list[str] = []

    def name(self, attribute: str) -> str:
        if attribute not in self._placeholders:
            placeholder = f"#n{len(self._placeholders)}"
            self._placeholders[attribute] = placeholder
            self.names[placeholder] = attribute
        return self._placeholders[attribute]

    def value(self, value: dict[str, Any]) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = value
        return placeholder

    def set(self, attribute: str, expression: str) -> None:
        self.sets.append(f"{self.name(attribute)} = {expression}")

    def put(self, attribute: str, value: dict[str, Any] | None) -> None:
        """SET the attribute to ``value``, or REMOVE it when None (a field set to None)."""
        if value is None:
            self.removes.append(self.name(attribute))
        else:
            self.set(attribute, self.value(value))

    def add(self, attribute: str, amount: int) -> None:
        self.adds.append(f"{self.name(attribute)} {self.value(n(amount))}")

    def where(self, condition: str) -> None:
        self.conditions.append(condition)

    def equals(self, attribute: str, value: dict[str, Any]) -> str:
        return f"{self.name(attribute)} = {self.value(value)}"

    def names_of(self, *attributes: str) -> str:
        """A projection of these attributes."""
        return ", ".join(self.name(attribute) for attribute in attributes)

    def one_of(self, attribute: str, values: Iterable[str]) -> str:
        return f"{self.name(attribute)} IN ({', '.join(self.value(s(v)) for v in values)})"

    def placeholders(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.names:
            params["ExpressionAttributeNames"] = self.names
        if self.values:
            params["ExpressionAttributeValues"] = self.values
        return params

    def params(self) -> dict[str, Any]:
        clauses = [
            f"{verb} {', '.join(parts)}"
            for verb, parts in (("SET", self.sets), ("REMOVE", self.removes), ("ADD", self.adds))
            if parts
        ]
        params: dict[str, Any] = {}
        if clauses:
            params["UpdateExpression"] = " ".join(clauses)
        if self.conditions:
            params["ConditionExpression"] = " AND ".join(f"({c})" for c in self.conditions)
        return {**params, **self.placeholders()}


def batch_write(client: Any, table: str, requests: Sequence[dict[str, Any]]) -> None:
    """BatchWriteItem in requests of 25, retrying unprocessed items with backoff.

    Raises:
        RuntimeError: some items were still unprocessed after the retries (the
            caller retries the whole batch: every write here is idempotent).
    """
    for start in range(0, len(requests), BATCH_WRITE):
        # One key twice in a request is refused: the last write of a key wins.
        chunk = {_request_key(r): r for r in requests[start : start + BATCH_WRITE]}
        pending: list[dict[str, Any]] = list(chunk.values())
        for round_ in range(8):
            reply = client.batch_write_item(RequestItems={table: pending})
            pending = reply.get("UnprocessedItems", {}).get(table, [])
            if not pending:
                break
            time.sleep(min(0.05 * 2**round_, 2.0) * (0.5 + random.random()))
        if pending:
            raise RuntimeError(f"{len(pending)} items of a batch write were not written.")


def _request_key(request: dict[str, Any]) -> tuple[str, str]:
    item = (
        request["PutRequest"]["Item"]
        if "PutRequest" in request
        else request["DeleteRequest"]["Key"]
    )
    return item["pk"]["S"], item["sk"]["S"]
