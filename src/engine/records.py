"""Sessions, job runs and history entries as plain JSON values, and back.

The one wire form of the state records: the DynamoDB store keeps the
non-key fields this way, the HTTP API answers with it, and the CLI reads it
back into the same dataclasses it uses with the local backend.
"""

from __future__ import annotations

from typing import Any

from engine.events import HistoryEntry
from engine.state import JobRun, JobStatus, Outcome, Session, SessionStatus


def session_to_dict(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "pipeline": session.pipeline,
        "version": session.version,
        "parameters": dict(session.parameters),
        "status": session.status.value,
        "total": session.total,
        "finished": session.finished,
        "failed": session.failed,
        "running": session.running,
        "created_at": session.created_at,
        "ended_at": session.ended_at,
        "reason": session.reason,
    }


def session_from_dict(data: dict[str, Any]) -> Session:
    return Session(
        id=data["id"],
        pipeline=data["pipeline"],
        version=int(data["version"]),
        parameters=dict(data.get("parameters") or {}),
        status=SessionStatus(data.get("status", SessionStatus.RUNNING.value)),
        total=int(data.get("total", 0)),
        finished=int(data.get("finished", 0)),
        failed=int(data.get("failed", 0)),
        running=int(data.get("running", 0)),
        created_at=data.get("created_at"),
        ended_at=data.get("ended_at"),
        reason=data.get("reason"),
    )


def run_to_dict(run: JobRun) -> dict[str, Any]:
    return {
        "session_id": run.session_id,
        "key": run.key,
        "job_id": run.job_id,
        "index": run.index,
        "status": run.status.value,
        "attempt": run.attempt,
        "base_attempt": run.base_attempt,
        "parents_done": {edge: outcome.value for edge, outcome in run.parents_done.items()},
        "expected": run.expected,
        "done": run.done,
        "item": run.item,
        "inputs": run.inputs,
        "output": run.output,
        "error": run.error,
        "handle": run.handle,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "updated_at": run.updated_at,
        "reason": run.reason,
    }


def run_from_dict(data: dict[str, Any]) -> JobRun:
    index = data.get("index")
    return JobRun(
        session_id=data["session_id"],
        key=data["key"],
        job_id=data["job_id"],
        index=None if index is None else int(index),
        status=JobStatus(data.get("status", JobStatus.WAITING.value)),
        attempt=int(data.get("attempt", 0)),
        base_attempt=int(data.get("base_attempt", 0)),
        parents_done={
            edge: Outcome(outcome) for edge, outcome in (data.get("parents_done") or {}).items()
        },
        expected=int(data.get("expected", 0)),
        done=int(data.get("done", 0)),
        item=data.get("item"),
        inputs=data.get("inputs"),
        output=data.get("output"),
        error=data.get("error"),
        handle=data.get("handle"),
        started_at=data.get("started_at"),
        ended_at=data.get("ended_at"),
        updated_at=data.get("updated_at"),
        reason=data.get("reason"),
    )


def entry_to_dict(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "session_id": entry.session_id,
        "at": entry.at,
        "kind": entry.kind,
        "key": entry.key,
        "attempt": entry.attempt,
        "detail": entry.detail,
    }


def entry_from_dict(data: dict[str, Any]) -> HistoryEntry:
    attempt = data.get("attempt")
    return HistoryEntry(
        session_id=data["session_id"],
        at=data["at"],
        kind=data["kind"],
        key=data.get("key"),
        attempt=None if attempt is None else int(attempt),
        detail=data.get("detail"),
    )
