"""Scheduled sessions on EventBridge Scheduler: a recurring schedule that starts a session.

A scheduled session is a schedule ``start-<name>`` in the stack's schedule group
(the timers there are ``bunsui-...``). Its target is the start function, its input
the session request: ``{"schedule", "scheduled_time", "pipeline", "parameters",
"parameter_text"}``, where Scheduler fills ``scheduled_time`` in at each start
(``<aws.scheduler.scheduled-time>``). The start function derives the session id
from (schedule, scheduled time), so Scheduler delivering one start twice starts
one session.

The parameters are checked when the schedule is created, and again at each
start against the pipeline's version then latest. The input may hold secret
parameter values: it is encrypted with the stack's key (when the key is given
as an ARN), and listing schedules shows ``******`` in their place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from engine.aws.dispatch import Throttled, error_line, is_throttling
from engine.aws.settings import Clients, Settings
from engine.errors import BunsuiError, Conflict
from engine.parameters import REDACTED

PREFIX = "start-"
"""The names of scheduled sessions' schedules; the timers' begin with ``bunsui-``."""

NAME = re.compile(r"[0-9A-Za-z_.-]{1,58}")
"""A schedule's own name: Scheduler's characters, 64 in all with the prefix."""

SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
"""Scheduler's placeholder for the time a start was scheduled for."""

CRON_FIELDS = 6


class ScheduleInvalid(BunsuiError):
    """A schedule's name, expression or time zone that Scheduler cannot take."""


class ScheduleNotFound(BunsuiError):
    """No scheduled session has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"schedule '{name}' not found.")


@dataclass(frozen=True)
class Schedule:
    """A recurring start of a pipeline with fixed parameters.

    Attributes:
        cron: ``cron(...)``, ``rate(...)``, or the six fields of a cron expression
            (minutes hours day-of-month month day-of-week year).
        timezone: An IANA time zone the cron is read in.
        state: ``ENABLED`` or ``DISABLED`` (as Scheduler reports it).
    """

    name: str
    pipeline: str
    cron: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    parameter_text: Mapping[str, str] = field(default_factory=dict)
    timezone: str = "UTC"
    state: str | None = None
    created_at: str | None = None


def expression(cron: str) -> str:
    """Scheduler's expression for a cron given with or without ``cron(...)``.

    Raises:
        ScheduleInvalid: a cron without its six fields.
    """
    text = " ".join(cron.split())
    if text.startswith("rate(") and text.endswith(")"):
        return text
    inner = text[5:-1] if text.startswith("cron(") and text.endswith(")") else text
    fields = inner.split()
    if len(fields) != CRON_FIELDS:
        raise ScheduleInvalid(
            f"cron '{cron}' has {len(fields)} fields; EventBridge Scheduler's has 6: minutes "
            "hours day-of-month month day-of-week year, e.g. '0 2 * * ? *' (02:00 daily)."
        )
    return f"cron({inner})"


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise ScheduleInvalid(
            f"schedule name '{name}': use 1 to 58 letters, digits, '-', '_' or '.'."
        )


class ScheduledSessions:
    """Scheduled sessions as Scheduler schedules in the stack's group.

    Args:
        settings: ``schedule_group``, ``start_function_arn`` (the target),
            ``scheduler_role_arn`` (the role Scheduler invokes it as), ``kms_key``.
        clients: ``scheduler`` is used.
    """

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients

    def request(self, schedule: Schedule, secret_names: Sequence[str] = ()) -> dict[str, Any]:
        """The CreateSchedule request of a scheduled session."""
        _check_name(schedule.name)
        start = {
            "schedule": schedule.name,
            "scheduled_time": SCHEDULED_TIME,
            "pipeline": schedule.pipeline,
            "parameters": dict(schedule.parameters),
            "parameter_text": dict(schedule.parameter_text),
            "secret_parameters": sorted(secret_names),
        }
        request: dict[str, Any] = {
            "Name": PREFIX + schedule.name,
            "GroupName": self.settings.schedule_group,
            "ScheduleExpression": expression(schedule.cron),
            "ScheduleExpressionTimezone": schedule.timezone or "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED",
            "Description": f"Bunsui: starts a session of pipeline '{schedule.pipeline}'"[:512],
            "Target": {
                "Arn": self.settings.start_function_arn,
                "RoleArn": self.settings.scheduler_role_arn,
                "Input": json.dumps(start, ensure_ascii=False),
                # A start refused for bad parameters is not retried (the start function
                # logs it and returns); these retries are for AWS's own failures.
                "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600},
            },
        }
        if self.settings.kms_key.startswith("arn:"):
            request["KmsKeyArn"] = self.settings.kms_key
        return request

    def create(self, schedule: Schedule, secret_names: Sequence[str] = ()) -> Schedule:
        """Create the schedule.

        Raises:
            ScheduleInvalid: a bad name, cron or time zone.
            Conflict: a scheduled session has this name.
            Throttled: Scheduler asked to slow down.
        """
        request = self.request(schedule, secret_names)
        try:
            self.clients.scheduler.create_schedule(**request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ConflictException":
                raise Conflict(
                    f"schedule '{schedule.name}' already exists; delete it first."
                ) from exc
            if code == "ValidationException":
                message = exc.response.get("Error", {}).get("Message", "invalid")
                raise ScheduleInvalid(f"schedule '{schedule.name}': {message}") from exc
            _raise_if_throttled(exc, f"creating schedule '{schedule.name}'")
            raise
        return Schedule(
            schedule.name,
            schedule.pipeline,
            request["ScheduleExpression"],
            _shown(schedule.parameters, secret_names),
            _shown(schedule.parameter_text, secret_names),
            request["ScheduleExpressionTimezone"],
            "ENABLED",
        )

    def list(self) -> list[Schedule]:
        """Every scheduled session, by name (secret values shown as ``******``)."""
        found = [self._read(name) for name in self._names()]
        return sorted((s for s in found if s is not None), key=lambda s: s.name)

    def _names(self) -> Iterator[str]:
        params: dict[str, Any] = {"GroupName": self.settings.schedule_group, "NamePrefix": PREFIX}
        while True:
            try:
                page = self.clients.scheduler.list_schedules(**params)
            except ClientError as exc:
                _raise_if_throttled(exc, "listing schedules")
                raise
            for summary in page.get("Schedules", []):
                if summary["Name"].startswith(PREFIX):
                    yield summary["Name"]
            if not page.get("NextToken"):
                return
            params["NextToken"] = page["NextToken"]

    def _read(self, full_name: str) -> Schedule | None:
        try:
            found = self.clients.scheduler.get_schedule(
                Name=full_name, GroupName=self.settings.schedule_group
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None  # deleted since it was listed
            _raise_if_throttled(exc, f"reading schedule '{full_name}'")
            raise
        try:
            start = json.loads(found.get("Target", {}).get("Input") or "{}")
        except ValueError:
            start = {}
        start = start if isinstance(start, dict) else {}
        secrets = start.get("secret_parameters") or []
        created = found.get("CreationDate")
        return Schedule(
            full_name[len(PREFIX) :],
            str(start.get("pipeline", "")),
            found.get("ScheduleExpression", ""),
            _shown(start.get("parameters") or {}, secrets),
            _shown(start.get("parameter_text") or {}, secrets),
            found.get("ScheduleExpressionTimezone") or "UTC",
            found.get("State"),
            created.isoformat() if isinstance(created, datetime) else created,
        )

    def delete(self, name: str) -> None:
        """Delete a scheduled session (sessions it started are not touched).

        Raises:
            ScheduleNotFound: no scheduled session has this name.
        """
        if not NAME.fullmatch(name):
            raise ScheduleNotFound(name)
        try:
            self.clients.scheduler.delete_schedule(
                Name=PREFIX + name, GroupName=self.settings.schedule_group
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise ScheduleNotFound(name) from exc
            _raise_if_throttled(exc, f"deleting schedule '{name}'")
            raise


def _shown(values: Mapping[str, Any], secret_names: Sequence[str]) -> dict[str, Any]:
    return {name: REDACTED if name in secret_names else value for name, value in values.items()}


def _raise_if_throttled(exc: ClientError, what: str) -> None:
    """Throttling as :class:`Throttled`; the caller re-raises any other error as AWS's."""
    if is_throttling(exc):
        raise Throttled(f"{what}: {error_line(exc)}") from exc
