"""The HTTP API's bodies, and the events the other functions take, as pydantic models.

The API's records are those of :mod:`engine.records` (what the CLI reads back
with ``session_from_dict`` and the like); these models document and check them.
Request models forbid unknown fields, so a misspelt field is a 400 that names
it rather than a value silently left out.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.source import MAX_DOCUMENT_BYTES
from engine.state import JobStatus, SessionStatus

Name = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(max_length=4096)]
Parameters = Annotated[
    dict[str, Any],
    Field(
        default_factory=dict,
        description="Typed parameter values (a JSON number stays a number).",
    ),
]
ParameterText = Annotated[
    dict[str, Annotated[str, Field(max_length=65536)]],
    Field(
        default_factory=dict,
        description="`name=value` texts, coerced by each parameter's declared type exactly "
        "as the CLI's `--parameters` are; they win over `parameters`.",
    ),
]


class Model(BaseModel):
    """Base of every model here. Each builds its validator on first use (``defer_build``):
    the start and sweeper functions read one model of this module each, and building the
    API's at their import is a cold-start cost they never repay."""

    model_config = ConfigDict(defer_build=True)


class Request(Model):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------- errors


class Problem(Model):
    """One located problem (of a pipeline document, or of the request itself)."""

    path: str
    message: str
    hint: str | None = None
    line: int | None = None
    column: int | None = None


class ErrorDetail(Model):
    type: str = Field(description="The error's class: PipelineInvalid, ParameterInvalid, ...")
    message: str = Field(description="What the CLI prints for the same error.")
    problems: list[Problem] | None = None


class ErrorBody(Model):
    """Every 4xx (and 5xx) answer of the API."""

    error: ErrorDetail


# ---------------------------------------------------------------------- pipelines


class PipelineCreate(Request):
    document: Annotated[str, Field(min_length=1, max_length=MAX_DOCUMENT_BYTES)] = Field(
        description="The pipeline's YAML (or JSON) text."
    )
    source: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="The file name problems are located in (e.g. ml-pipeline.yaml)."
    )


class PipelineCreated(Model):
    name: str
    version: int
    jobs: int
    created: bool = Field(description="False when the document was the latest version already.")


class PipelineSummary(Model):
    name: str
    version: int = Field(description="The latest version.")
    created_at: str


class PipelineList(Model):
    pipelines: list[PipelineSummary]


class PipelineDocument(Model):
    name: str
    version: int
    document: str
    created_at: str


class PipelineVersion(Model):
    version: int
    created_at: str


class PipelineVersions(Model):
    name: str
    versions: list[PipelineVersion]


# ---------------------------------------------------------------------- sessions


class SessionStart(Request):
    pipeline: Name
    parameters: Parameters
    parameter_text: ParameterText


class SessionRecord(Model):
    """A session (``engine.records.session_to_dict``); secret values are ``******``."""

    id: str
    pipeline: str
    version: int
    parameters: dict[str, Any]
    status: SessionStatus
    total: int
    finished: int
    failed: int
    running: int
    created_at: str | None
    ended_at: str | None
    reason: str | None


class SessionReply(Model):
    session: SessionRecord


class SessionList(Model):
    sessions: list[SessionRecord]


class RunRecord(Model):
    """A job run (``engine.records.run_to_dict``)."""

    session_id: str
    key: str
    job_id: str
    index: int | None
    status: JobStatus
    attempt: int
    base_attempt: int
    parents_done: dict[str, str]
    expected: int
    done: int
    item: Any = None
    inputs: Any = None
    output: Any = None
    error: str | None
    handle: str | None
    started_at: str | None
    ended_at: str | None
    updated_at: str | None
    reason: str | None


class RunReply(Model):
    run: RunRecord


class RunList(Model):
    runs: list[RunRecord]
    next: str | None = Field(description="Pass as `next` for the following page; null: the last.")


class HistoryRecord(Model):
    """A history entry (``engine.records.entry_to_dict``)."""

    session_id: str
    at: str
    kind: str
    key: str | None
    attempt: int | None
    detail: Any = None


class HistoryList(Model):
    entries: list[tuple[int, HistoryRecord]] = Field(
        description="[number, entry] pairs; ask again with `after` = the last number."
    )
    next: bool = Field(description="Whether more entries follow this page.")


class CancelRequest(Request):
    reason: Annotated[str, Field(min_length=1, max_length=1000)] = "cancelled by user"


class EmptyRequest(Request):
    """Pause and resume take no fields."""


class RetryRequest(Request):
    parameters: Parameters
    parameter_text: ParameterText


# ---------------------------------------------------------------------- schedules


class ScheduleCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=58, pattern=r"^[0-9A-Za-z_.-]+$")]
    pipeline: Name
    cron: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="Six cron fields (minutes hours day-of-month month day-of-week year), "
        "`cron(...)` or `rate(...)`, as EventBridge Scheduler reads them."
    )
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"
    parameters: Parameters
    parameter_text: ParameterText


class ScheduleRecord(Model):
    name: str
    pipeline: str
    cron: str
    timezone: str
    parameters: dict[str, Any]
    parameter_text: dict[str, str]
    state: str | None = None
    created_at: str | None = None


class ScheduleList(Model):
    schedules: list[ScheduleRecord]


# ---------------------------------------------------------------------- other functions


class StartEvent(Model):
    """The start function's event: a scheduled session's input, as Scheduler sends it."""

    model_config = ConfigDict(extra="ignore")

    pipeline: Name
    parameters: Parameters
    parameter_text: ParameterText
    schedule: Annotated[str, Field(max_length=64)] | None = None
    scheduled_time: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="Scheduler's <aws.scheduler.scheduled-time>."
    )


class SweepEvent(Model):
    """The sweeper's event (Scheduler's rate schedule sends ``{}``); both fields optional."""

    model_config = ConfigDict(extra="ignore")

    limit: Annotated[int, Field(ge=1, le=1000)] | None = None
    grace_seconds: Annotated[float, Field(ge=0, le=86400)] | None = None
