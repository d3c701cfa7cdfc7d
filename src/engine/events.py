"""What the reducer is told: one dataclass per event, each with its time inside.

Events come from the services (an attempt finished), from timers (a retry
is due, an attempt or the session timed out) and from users (cancel, pause,
resume). The reducer must accept any of them twice, late, or out of order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SessionStarted:
    session_id: str
    now: str


@dataclass(frozen=True)
class AttemptFinished:
    """An attempt of a run ended: its raw result, or the error that ended it.

    ``handle`` is the service's id of the work when the event names it (a Lambda
    request id, an ECS task ARN...): recorded with the outcome, so logs can find
    the work without a write at dispatch.
    """

    session_id: str
    key: str
    attempt: int
    now: str
    result: Any = None
    error: str | None = None
    handle: str | None = None


@dataclass(frozen=True)
class RetryDue:
    session_id: str
    key: str
    attempt: int
    """The attempt that failed; the next one is attempt + 1."""
    now: str


@dataclass(frozen=True)
class AttemptTimedOut:
    session_id: str
    key: str
    attempt: int
    now: str


@dataclass(frozen=True)
class SessionTimedOut:
    session_id: str
    now: str


@dataclass(frozen=True)
class CancelRequested:
    session_id: str
    now: str
    reason: str = "cancelled by user"


@dataclass(frozen=True)
class PauseRequested:
    session_id: str
    now: str


@dataclass(frozen=True)
class ResumeRequested:
    session_id: str
    now: str


Event = (
    SessionStarted
    | AttemptFinished
    | RetryDue
    | AttemptTimedOut
    | SessionTimedOut
    | CancelRequested
    | PauseRequested
    | ResumeRequested
)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a session's history (like a Step Functions execution history)."""

    session_id: str
    at: str
    kind: str
    """``session_started``, ``job_dispatched``, ``job_succeeded``, ``job_failed``,
    ``job_retrying``, ``job_skipped``, ``job_cancelled``, ``session_succeeded``, ..."""
    key: str | None = None
    attempt: int | None = None
    detail: Any = None
