"""Bunsui's own events on the EventBridge bus: engine events <-> entries, and putting them.

Every event Bunsui sends itself (a session to start, a retry or timeout that is
due, a user's cancel, pause or resume) travels on the bus ``BUNSUI_BUS`` with
source ``bunsui`` and one detail-type per kind, so the reducer's rule matches
them like any service's completion event. The same mapping serves the timers
(:mod:`engine.aws.timers` puts the detail in a schedule), the correlation of
incoming events (:mod:`engine.aws.correlate`) and :class:`BunsuiBus`.

The engine event's ``now`` travels as the entry's ``Time`` (the envelope's
``time``), except for the timers' events: those fire late by design (a
schedule runs within a minute of its time), so their detail carries ``due``
and the engine sees that instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from botocore.exceptions import ClientError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from engine.aws.dispatch import Throttled, error_line, is_throttling
from engine.aws.settings import Clients, Settings
from engine.errors import BunsuiError
from engine.events import (
    AttemptTimedOut,
    CancelRequested,
    Event,
    PauseRequested,
    ResumeRequested,
    RetryDue,
    SessionStarted,
    SessionTimedOut,
)
from engine.state import Session

SOURCE = "bunsui"
"""The source of every event Bunsui puts on its bus."""

SESSION_STARTED = "Session Started"
JOB_RETRY_DUE = "Job Retry Due"
JOB_TIMED_OUT = "Job Timed Out"
SESSION_TIMED_OUT = "Session Timed Out"
CANCEL_REQUESTED = "Session Cancel Requested"
PAUSE_REQUESTED = "Session Pause Requested"
RESUME_REQUESTED = "Session Resume Requested"
SESSION_COMPLETED = "Session Completed"
"""For users' own rules (notifications, chaining); the reducer does not take it."""


def _iso_time(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("must be an ISO-8601 time") from None
    return text


NonEmpty = Annotated[StrictStr, Field(min_length=1)]
Attempt = Annotated[StrictInt, Field(ge=1)]
IsoTime = Annotated[StrictStr, AfterValidator(_iso_time)]
"""A due time: the reducer computes with it."""


class EventNotPut(BunsuiError):
    """EventBridge refused an event Bunsui put on its bus."""


# ---------------------------------------------------------------- details


class Detail(BaseModel):
    """Base of Bunsui's details: unknown fields are ignored (a newer sender may add some).
    Each builds its validator on first use, as the correlator's models do."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


class SessionDetail(Detail):
    """``Session Started``, ``Session Pause Requested``, ``Session Resume Requested``."""

    session_id: NonEmpty


class JobTimerDetail(Detail):
    """``Job Retry Due`` and ``Job Timed Out``: the attempt and when it was due."""

    session_id: NonEmpty
    key: NonEmpty
    attempt: Attempt
    due: IsoTime


class SessionTimerDetail(Detail):
    """``Session Timed Out``."""

    session_id: NonEmpty
    due: IsoTime


class CancelDetail(Detail):
    """``Session Cancel Requested``."""

    session_id: NonEmpty
    reason: StrictStr = "cancelled by user"


class SessionCompletedDetail(Detail):
    """``Session Completed``: how a session ended, for users' own rules."""

    session_id: NonEmpty
    pipeline: NonEmpty
    status: NonEmpty


DETAIL_MODELS: dict[str, type[Detail]] = {
    SESSION_STARTED: SessionDetail,
    JOB_RETRY_DUE: JobTimerDetail,
    JOB_TIMED_OUT: JobTimerDetail,
    SESSION_TIMED_OUT: SessionTimerDetail,
    CANCEL_REQUESTED: CancelDetail,
    PAUSE_REQUESTED: SessionDetail,
    RESUME_REQUESTED: SessionDetail,
}
"""The detail model of each detail-type the reducer takes."""


def event_detail(event: Event) -> tuple[str, dict[str, Any]]:
    """The detail-type and detail of one of Bunsui's own events.

    Raises:
        TypeError: an :class:`~engine.events.AttemptFinished` (it comes from the
            services, never from Bunsui).
    """
    match event:
        case SessionStarted():
            return SESSION_STARTED, {"session_id": event.session_id}
        case RetryDue() | AttemptTimedOut():
            kind = JOB_RETRY_DUE if isinstance(event, RetryDue) else JOB_TIMED_OUT
            detail = {"session_id": event.session_id, "key": event.key}
            return kind, {**detail, "attempt": event.attempt, "due": event.now}
        case SessionTimedOut():
            return SESSION_TIMED_OUT, {"session_id": event.session_id, "due": event.now}
        case CancelRequested():
            return CANCEL_REQUESTED, {"session_id": event.session_id, "reason": event.reason}
        case PauseRequested():
            return PAUSE_REQUESTED, {"session_id": event.session_id}
        case ResumeRequested():
            return RESUME_REQUESTED, {"session_id": event.session_id}
    raise TypeError(f"{type(event).__name__} is not an event Bunsui puts on its bus")


def event_from_detail(detail_type: str, detail: Detail, time: str) -> Event:
    """The engine event of a parsed detail; ``time`` is the envelope's (ISO-8601).

    Raises:
        KeyError: a detail-type the reducer does not take.
    """
    match detail:
        case JobTimerDetail():
            timer = RetryDue if detail_type == JOB_RETRY_DUE else AttemptTimedOut
            return timer(detail.session_id, detail.key, detail.attempt, detail.due)
        case SessionTimerDetail():
            return SessionTimedOut(detail.session_id, detail.due)
        case CancelDetail():
            return CancelRequested(detail.session_id, time, detail.reason)
        case SessionDetail():
            made = {
                SESSION_STARTED: SessionStarted,
                PAUSE_REQUESTED: PauseRequested,
                RESUME_REQUESTED: ResumeRequested,
            }[detail_type]
            return made(detail.session_id, time)
    raise KeyError(detail_type)


def parse_detail(detail_type: str, detail: Mapping[str, Any]) -> Detail:
    """Validate a detail of one of Bunsui's detail-types.

    Raises:
        KeyError: an unknown detail-type.
        pydantic.ValidationError: the detail does not fit it.
    """
    return DETAIL_MODELS[detail_type].model_validate(detail)


# ---------------------------------------------------------------- putting


def _timestamp(text: str | None) -> datetime | None:
    """The entry's Time from an ISO-8601 string (None: EventBridge stamps it)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class BunsuiBus:
    """Puts Bunsui's own events on its bus.

    Args:
        settings: ``bus`` names the bus.
        clients: ``events`` is used.
    """

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients

    def entry(self, event: Event) -> dict[str, Any]:
        """The PutEvents entry of an engine event."""
        detail_type, detail = event_detail(event)
        entry: dict[str, Any] = {
            "Source": SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail, ensure_ascii=False),
            "EventBusName": self.settings.bus,
        }
        when = _timestamp(event.now)
        if when is not None:
            entry["Time"] = when
        return entry

    def put(self, event: Event) -> None:
        """Put one of Bunsui's events (not an AttemptFinished) on the bus.

        Raises:
            Throttled: EventBridge asked to slow down; retry later.
            EventNotPut: EventBridge refused the entry.
        """
        self._put(self.entry(event))

    def session_completed(self, session: Session) -> None:
        """Announce how a session ended (``Session Completed``), for users' own rules."""
        detail = {
            "session_id": session.id,
            "pipeline": session.pipeline,
            "status": str(session.status),
        }
        entry: dict[str, Any] = {
            "Source": SOURCE,
            "DetailType": SESSION_COMPLETED,
            "Detail": json.dumps(detail, ensure_ascii=False),
            "EventBusName": self.settings.bus,
        }
        when = _timestamp(session.ended_at)
        if when is not None:
            entry["Time"] = when
        self._put(entry)

    def _put(self, entry: dict[str, Any]) -> None:
        try:
            answer = self.clients.events.put_events(Entries=[entry])
        except ClientError as exc:
            kind = entry["DetailType"]
            if is_throttling(exc):
                raise Throttled(f"EventBridge PutEvents of {kind}: {error_line(exc)}") from exc
            raise EventNotPut(f"EventBridge PutEvents of {kind}: {error_line(exc)}") from exc
        if answer.get("FailedEntryCount", 0):
            failed = next((e for e in answer.get("Entries", []) if e.get("ErrorCode")), {})
            code = failed.get("ErrorCode", "unknown")
            text = f"{code}: {failed.get('ErrorMessage', 'no message')}"
            if code in ("ThrottlingException", "InternalFailure"):
                raise Throttled(f"EventBridge did not take {entry['DetailType']} ({text})")
            raise EventNotPut(f"EventBridge refused {entry['DetailType']} ({text})")
