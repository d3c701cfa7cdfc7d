"""The Timers port on EventBridge Scheduler: one one-time schedule per timer.

A timer (a retry that is due, an attempt or a session that timed out) is a
schedule ``at(YYYY-MM-DDThh:mm:ss)`` in UTC whose target is Bunsui's bus: at
that time Scheduler puts the event's detail there with Bunsui's detail-type
and source ``bunsui`` (:mod:`engine.aws.bus`), the reducer's rule delivers it,
and the schedule deletes itself (``ActionAfterCompletion: DELETE``).

Granularity: Scheduler starts a one-time schedule within the minute of its
time, never before it (times are rounded up to the second). A time already
past, or due within :data:`LEAD_SECONDS`, is scheduled :data:`LEAD_SECONDS`
from now; the event still carries its own ``due``, so the reducer sees the
time the timer was for.

Idempotent: the schedule's name is derived from (kind, session, key,
attempt), so scheduling the same timer twice (a duplicate delivery) finds
the name taken (``ConflictException``) and leaves the first in place.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from engine.aws.bus import SOURCE, event_detail
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

LEAD_SECONDS = 60
"""How far ahead a timer that is already due is scheduled (Scheduler's granularity)."""

KINDS: dict[type, str] = {
    RetryDue: "retry",
    AttemptTimedOut: "job-timeout",
    SessionTimedOut: "session-timeout",
    SessionStarted: "start",
    CancelRequested: "cancel",
    PauseRequested: "pause",
    ResumeRequested: "resume",
}
"""The kind of each event in its schedule's name."""


class TimerNotScheduled(BunsuiError):
    """Scheduler refused a timer (a missing group or role, a bad target)."""


def schedule_name(event: Event) -> str:
    """The schedule of a timer: ``bunsui-<kind>-<hash of session, key, attempt>`` (≤ 64).

    Raises:
        TypeError: an event no timer is for (an AttemptFinished).
    """
    kind = KINDS.get(type(event))
    if kind is None:
        raise TypeError(f"{type(event).__name__} is not an event a timer puts back")
    key = getattr(event, "key", "-")
    attempt = getattr(event, "attempt", "-")
    digest = hashlib.sha256(f"{kind}|{event.session_id}|{key}|{attempt}".encode()).hexdigest()
    return f"bunsui-{kind}-{digest[:32]}"


def at_expression(at: str, now: datetime) -> str:
    """The schedule expression ``at(...)`` in UTC for ISO time ``at``, seen at ``now``."""
    due = datetime.fromisoformat(at)
    if due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    due = due.astimezone(UTC)
    earliest = now.astimezone(UTC) + timedelta(seconds=LEAD_SECONDS)
    if due < earliest:
        due = earliest
    seconds = math.ceil(due.timestamp())  # never fire before the time
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"at({moment.strftime('%Y-%m-%dT%H:%M:%S')})"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SchedulerTimers:
    """Implements the Timers port with EventBridge Scheduler.

    Args:
        settings: ``bus_arn`` (the target), ``scheduler_role_arn`` (the role
            Scheduler assumes to put events) and ``schedule_group``.
        clients: ``scheduler`` is used.
        clock: The wall clock, to move a past time ahead (tests pass their own).
    """

    def __init__(
        self,
        settings: Settings,
        clients: Clients,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.clock = clock

    def request(self, event: Event, at: str) -> dict[str, Any]:
        """The CreateSchedule request of a timer."""
        detail_type, detail = event_detail(event)
        return {
            "Name": schedule_name(event),
            "GroupName": self.settings.schedule_group,
            "ScheduleExpression": at_expression(at, self.clock()),
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "ActionAfterCompletion": "DELETE",
            "Description": f"Bunsui: {detail_type} of session {event.session_id}",
            "Target": {
                "Arn": self.settings.bus_arn,
                "RoleArn": self.settings.scheduler_role_arn,
                "Input": json.dumps(detail, ensure_ascii=False),
                "EventBridgeParameters": {"DetailType": detail_type, "Source": SOURCE},
            },
        }

    def schedule(self, event: Event, at: str) -> None:
        """Put ``event`` on the bus at ``at`` (ISO-8601); a timer already set is kept.

        Raises:
            Throttled: Scheduler asked to slow down.
            TimerNotScheduled: Scheduler refused the schedule.
        """
        request = self.request(event, at)
        try:
            self.clients.scheduler.create_schedule(**request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ConflictException":
                return  # the same timer was scheduled before (a duplicate delivery)
            if is_throttling(exc):
                raise Throttled(f"scheduling {request['Name']}: {error_line(exc)}") from exc
            raise TimerNotScheduled(
                f"Scheduler refused timer {request['Name']} ({event_detail(event)[0]} of "
                f"session {event.session_id}): {error_line(exc)}"
            ) from exc
