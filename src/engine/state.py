"""The state of sessions and job runs, as records the store keeps.

One record per session and one per job run (a job, or one item of a
fan-out), never one document per session: a 10,000-job session costs per job
what a 5-job session does. Records are immutable values; the store applies
changes to them with conditional writes (see :mod:`engine.ports`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Where a job run is in its life."""

    WAITING = "waiting"
    """Known (a parent finished) but not yet decided: parents still running."""
    QUEUED = "queued"
    """Ready to run, held back by max_concurrency."""
    RUNNING = "running"
    """Claimed for an attempt and dispatched."""
    RETRYING = "retrying"
    """An attempt failed; the next waits for its retry delay."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Its condition was false, or its trigger rule was not met."""
    UPSTREAM_FAILED = "upstream_failed"
    """Not run because a parent failed (the default trigger rule)."""
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB


TERMINAL_JOB = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.SKIPPED,
        JobStatus.UPSTREAM_FAILED,
        JobStatus.CANCELLED,
    }
)


class Outcome(StrEnum):
    """How a finished parent counts for its children's trigger rules."""

    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"

    @classmethod
    def of(cls, status: JobStatus) -> Outcome:
        if status is JobStatus.SUCCEEDED:
            return cls.SUCCESS
        if status in (JobStatus.FAILED, JobStatus.UPSTREAM_FAILED, JobStatus.CANCELLED):
            return cls.FAILURE
        if status is JobStatus.SKIPPED:
            return cls.SKIPPED
        raise ValueError(f"{status} is not terminal")


class SessionStatus(StrEnum):
    """Where a session is in its life."""

    RUNNING = "running"
    PAUSED = "paused"
    """No new dispatches; running jobs finish."""
    CANCELLING = "cancelling"
    """Running work is being stopped; nothing new starts."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (SessionStatus.SUCCEEDED, SessionStatus.FAILED, SessionStatus.CANCELLED)


def run_key(job_id: str, index: int | None = None) -> str:
    """The key of a job run: the job id, or ``id[index]`` for an item of a fan-out."""
    return job_id if index is None else f"{job_id}[{index}]"


@dataclass(frozen=True)
class JobRun:
    """One job run: a job, a fan-out (the parent of its items), or one item.

    Attributes:
        session_id: The session it belongs to.
        key: :func:`run_key` of the job and item.
        job_id: The pipeline's job id.
        index: The item's position in its fan-out; None otherwise.
        status: See :class:`JobStatus`.
        attempt: 1 for the first attempt; 0 before any. Numbers go on across a
            session retry, so an attempt's dispatch id is never reused.
        base_attempt: Attempts made before the last session retry; the job's
            ``retries`` count from there.
        parents_done: The edges already counted: parent key -> :class:`Outcome`.
            For a fan-out, its finished items (``[i]`` -> outcome).
        expected: How many edges decide it (parents, or a fan-out's items).
        done: How many edges are counted. ``parents_done`` holds their outcomes
            when the run is read, but :meth:`Store.count_edge` fills it only with
            the last edge, so counting stays O(1) per edge.
        item: The fan-out item this run works on.
        inputs: The resolved parameters the last attempt was dispatched with.
        output: The result (inline, size-capped by the store).
        error: Why it failed or was skipped.
        handle: The service's id of the running work (to correlate and stop it).
        started_at / ended_at / updated_at: ISO-8601 UTC times.
        reason: Why a run ended as it did (``condition false``, ``timed out``...).
    """

    session_id: str
    key: str
    job_id: str
    index: int | None = None
    status: JobStatus = JobStatus.WAITING
    attempt: int = 0
    base_attempt: int = 0
    parents_done: Mapping[str, Outcome] = field(default_factory=dict)
    expected: int = 0
    done: int = 0
    item: Any = None
    inputs: Any = None
    output: Any = None
    error: str | None = None
    handle: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    updated_at: str | None = None
    reason: str | None = None

    def but(self, **changes: Any) -> JobRun:
        return replace(self, **changes)


@dataclass(frozen=True)
class Session:
    """A run of one pinned pipeline version with checked parameters.

    The counters let the reducer decide the end of a session without reading
    its jobs: ``finished == total`` means every run is terminal.
    """

    id: str
    pipeline: str
    version: int
    parameters: Mapping[str, Any]
    status: SessionStatus = SessionStatus.RUNNING
    total: int = 0
    finished: int = 0
    failed: int = 0
    running: int = 0
    created_at: str | None = None
    ended_at: str | None = None
    reason: str | None = None

    def but(self, **changes: Any) -> Session:
        return replace(self, **changes)
