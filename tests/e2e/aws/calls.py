"""Every AWS request made in this process, counted by who made it, and the hooks that fake some.

The harness needs two things from botocore: to count each request Bunsui's
handlers make (per service and operation, split by handler, apart from the
harness's own requests and the jobs'), and to answer a few requests itself
(Lambda's ``Invoke``, which moto cannot run without Docker). Both are botocore
event hooks: ``before-parameter-build.*.*`` notes who is calling and with what,
``before-call.*.*`` counts the request and may answer it (a handler that
returns ``(http, parsed)`` stops botocore from sending it), ``after-call.*.*``
lets the harness see replies (the ECS task ARNs that ``RunTask`` created).

The handlers build their own boto3 sessions (``engine.aws.settings.Clients``),
so the hooks cannot be put on one session's event system; instead
:class:`Calls` wraps ``botocore.session.Session.create_client`` while it is
installed and registers them on every client made in that time. Clients made
before :meth:`Calls.install` are not seen: install first, import handlers after.

Who made a request is read from the call stack: the first frame of a module in
:data:`ACTORS` (``handlers.reducer`` -> ``reducer``) names it, whatever thread it
runs on (the API gateway serves requests on its own threads). Without one, the
actor is :func:`acting`'s current value: ``harness`` unless the harness runs a
job's own code (``job``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.session

ACTORS = {
    "handlers.api": "api",
    "handlers.reducer": "reducer",
    "handlers.history": "history",
    "handlers.sweeper": "sweeper",
    "handlers.start": "start",
}
"""Handler modules, and the name their requests are counted under."""
BUNSUI = frozenset(ACTORS.values())
"""Actors whose requests are Bunsui's own (the rest are the harness's or the jobs')."""

WRITES = {
    "dynamodb": ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"),
}
READS = {
    "dynamodb": ("GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"),
}

_KEY = "bunsui_harness"
_actor: contextvars.ContextVar[str] = contextvars.ContextVar("aws_actor", default="harness")

Interceptor = Callable[["Request"], Any]
"""Answers a request instead of AWS: returns the parsed reply, or None to let it through."""
Observer = Callable[["Request", Mapping[str, Any]], None]
"""Sees a request and AWS's parsed reply."""


@dataclass(frozen=True)
class Request:
    """One AWS API call as the hooks see it."""

    actor: str
    service: str
    """The client's service name (``dynamodb``, ``events``, ``lambda``, ``ecs``...)."""
    operation: str
    params: Mapping[str, Any]
    """The call's parameters as the caller passed them."""


@contextlib.contextmanager
def acting(actor: str) -> Iterator[None]:
    """Count the requests made inside the block as ``actor``'s (when no handler is on the stack)."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor() -> str:
    """Who is calling: the innermost handler module on the stack, else :func:`acting`'s value."""
    frame = sys._getframe(1)
    while frame is not None:
        actor = ACTORS.get(frame.f_globals.get("__name__", ""))
        if actor is not None:
            return actor
        frame = frame.f_back  # type: ignore[assignment]
    return _actor.get()


@dataclass
class Tally:
    """Request counts: ``requests[(actor, service, operation)]`` and the items they carried.

    ``items`` counts what a request writes or sends in bulk: the entries of a
    ``PutEvents``, the put/delete requests of a ``BatchWriteItem``, 1 for any
    other write.
    """

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    items: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def copy(self) -> Tally:
        return Tally(Counter(self.requests), Counter(self.items))

    def __sub__(self, other: Tally) -> Tally:
        return Tally(self.requests - other.requests, self.items - other.items)

    def count(
        self,
        actors: str | set[str] | frozenset[str] | None = None,
        service: str | None = None,
        operations: tuple[str, ...] | str | None = None,
        items: bool = False,
    ) -> int:
        """Requests (or their items) of these actors, service and operations (None: all)."""
        if isinstance(actors, str):
            actors = {actors}
        if isinstance(operations, str):
            operations = (operations,)
        table = self.items if items else self.requests
        return sum(
            n
            for (actor, svc, op), n in table.items()
            if (actors is None or actor in actors)
            and (service is None or svc == service)
            and (operations is None or op in operations)
        )

    def writes(self, actors: str | set[str] | frozenset[str], items: bool = False) -> int:
        """DynamoDB write requests (or items written) of these actors."""
        return self.count(actors, "dynamodb", WRITES["dynamodb"], items)

    def reads(self, actors: str | set[str] | frozenset[str]) -> int:
        """DynamoDB read requests of these actors."""
        return self.count(actors, "dynamodb", READS["dynamodb"])

    def table(self, actors: set[str] | frozenset[str] | None = None) -> list[tuple[str, int]]:
        """``("actor service.Operation", n)`` rows, most frequent first (for messages)."""
        rows = [
            (f"{actor} {service}.{op}", n)
            for (actor, service, op), n in self.requests.items()
            if actors is None or actor in actors
        ]
        return sorted(rows, key=lambda row: (-row[1], row[0]))


class Calls:
    """Counts every request of every boto3 client made while installed; fakes some.

    Args:
        intercept: ``(service, operation) -> interceptor``: requests answered
            here, never sent (only those of Bunsui's own actors and jobs; the
            harness's own calls always go through).
        observe: ``(service, operation) -> observer``: sees each reply.
        on_client: Called with every client made while installed (after the hooks).
    """

    def __init__(
        self,
        intercept: Mapping[tuple[str, str], Interceptor] | None = None,
        observe: Mapping[tuple[str, str], Observer] | None = None,
        on_client: Callable[[Any], None] | None = None,
    ) -> None:
        self.tally = Tally()
        self.intercept = dict(intercept or {})
        self.observe = dict(observe or {})
        self.on_client = on_client
        self._lock = threading.Lock()
        self._original: Any = None

    # ------------------------------------------------------------ installing

    def install(self) -> None:
        """Wrap ``Session.create_client`` so every client made from now on is hooked."""
        if self._original is not None:
            return
        original = botocore.session.Session.create_client
        calls = self

        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            calls.hook(client)
            return client

        self._original = original
        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            botocore.session.Session.create_client = self._original  # type: ignore[method-assign]
            self._original = None

    def hook(self, client: Any) -> None:
        """Register the three hooks on one client."""
        events = client.meta.events
        service = client.meta.service_model.service_name
        events.register("before-parameter-build.*.*", self._noting(service))
        events.register_first("before-call.*.*", self._before_call)
        events.register("after-call.*.*", self._after_call)
        if self.on_client is not None:
            self.on_client(client)

    def snapshot(self) -> Tally:
        with self._lock:
            return self.tally.copy()

    # ------------------------------------------------------------ hooks

    def _noting(self, service: str) -> Callable[..., None]:
        def note(params: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
            context[_KEY] = Request(current_actor(), service, model.name, dict(params))

        return note

    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> Any:
        request: Request | None = context.get(_KEY)
        if request is None:
            return None
        key = (request.actor, request.service, request.operation)
        with self._lock:
            self.tally.requests[key] += 1
            self.tally.items[key] += _items(request)
        interceptor = self.intercept.get((request.service, request.operation))
        if interceptor is None or request.actor == "harness":
            return None
        parsed = interceptor(request)
        if parsed is None:
            return None
        status = int(parsed.get("StatusCode", 200))
        parsed.setdefault("ResponseMetadata", {"HTTPStatusCode": status, "HTTPHeaders": {}})
        return _FakeHttp(status), parsed

    def _after_call(self, parsed: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        request: Request | None = context.get(_KEY)
        if request is None:
            return
        observer = self.observe.get((request.service, request.operation))
        if observer is not None and request.actor != "harness":
            observer(request, parsed)


@dataclass(frozen=True)
class _FakeHttp:
    """What botocore reads of an HTTP reply a hook gave instead of AWS."""

    status_code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""
    text: str = ""


def _items(request: Request) -> int:
    params = request.params
    if request.operation == "PutEvents":
        return len(params.get("Entries") or [])
    if request.operation == "BatchWriteItem":
        return sum(len(writes) for writes in (params.get("RequestItems") or {}).values())
    if request.operation == "TransactWriteItems":
        return len(params.get("TransactItems") or [])
    return 1


def decode(payload: Any) -> Any:
    """A Lambda ``Payload`` parameter (bytes, text or a file) as JSON."""
    if hasattr(payload, "read"):
        payload = payload.read()
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    return json.loads(payload) if payload else {}
