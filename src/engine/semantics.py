"""The rules of job semantics, as pure functions: trigger rules, retries, results, endings.

Nothing here reads a clock, draws a random number or touches a store: the
caller passes ``now`` and a uniform random number in, so every decision is
reproducible in a test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.pipeline import JobBase, RetryJitter, TriggerRule
from engine.state import JobStatus, Outcome


class Readiness(StrEnum):
    """What a job whose parents are all done does next."""

    RUN = "run"
    SKIP = "skip"
    UPSTREAM_FAILED = "upstream_failed"


def trigger(rule: TriggerRule, outcomes: Iterable[Outcome]) -> Readiness:
    """Apply a trigger rule to the outcomes of every parent (all terminal).

    A job without parents always runs. When the rule is not met, a failed
    parent makes the default rules report ``upstream_failed`` (so a failure
    is visible all the way down), anything else ``skip`` — as in Airflow.
    """
    seen = list(outcomes)
    if not seen:
        return Readiness.RUN
    ok = sum(o is Outcome.SUCCESS for o in seen)
    failed = sum(o is Outcome.FAILURE for o in seen)
    skipped = sum(o is Outcome.SKIPPED for o in seen)
    n = len(seen)
    met = {
        TriggerRule.ALL_SUCCESS: ok == n,
        TriggerRule.ALL_FAILED: failed == n,
        TriggerRule.ALL_DONE: True,
        TriggerRule.ALL_SKIPPED: skipped == n,
        TriggerRule.ONE_SUCCESS: ok >= 1,
        TriggerRule.ONE_FAILED: failed >= 1,
        TriggerRule.ONE_DONE: ok + failed >= 1,
        TriggerRule.NONE_FAILED: failed == 0,
        TriggerRule.NONE_SKIPPED: skipped == 0,
        TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS: failed == 0 and ok >= 1,
        TriggerRule.ALWAYS: True,
    }[rule]
    if met:
        return Readiness.RUN
    needs_success = rule in (
        TriggerRule.ALL_SUCCESS,
        TriggerRule.NONE_FAILED,
        TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        TriggerRule.ONE_SUCCESS,
    )
    if needs_success and failed:
        return Readiness.UPSTREAM_FAILED
    return Readiness.SKIP


def retry_delay(job: JobBase, failed_attempt: int, uniform: float) -> float | None:
    """Seconds to wait before the attempt after ``failed_attempt``; None when none is left.

    The n-th retry waits ``retry_delay * retry_backoff ** (n - 1)``, capped at
    ``retry_max_delay``; with ``retry_jitter: full`` a uniform draw in
    ``[0, delay]`` (Step Functions' FULL jitter).

    Args:
        job: The job definition.
        failed_attempt: The attempt that just failed (1 for the first).
        uniform: A number drawn uniformly from [0, 1), supplied by the caller.
    """
    if failed_attempt > job.retries:
        return None
    delay = job.retry_delay * job.retry_backoff ** (failed_attempt - 1)
    if job.retry_max_delay is not None:
        delay = min(delay, job.retry_max_delay)
    if job.retry_jitter is RetryJitter.FULL:
        delay *= uniform
    return delay


@dataclass(frozen=True)
class Result:
    """What an attempt produced, read the way users of Lambda expect."""

    succeeded: bool
    output: Any = None
    error: str | None = None


def read_result(raw: Any) -> Result:
    """Interpret a job's raw result.

    A Lambda-style response ``{"statusCode": n, "body": "<json>"}`` yields
    its parsed body as output (a body that is not JSON stays text), and a
    ``statusCode`` of 400 or more is a failure whose error names the code
    and the body. Anything else is the output as is.
    """
    if (
        isinstance(raw, dict)
        and "statusCode" in raw
        and set(raw)
        <= {
            "statusCode",
            "body",
            "headers",
            "multiValueHeaders",
            "isBase64Encoded",
            "cookies",
        }
    ):
        code = raw.get("statusCode")
        body = raw.get("body")
        if isinstance(body, str):
            with contextlib.suppress(ValueError):
                body = json.loads(body)
        if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
            detail = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
            return Result(False, body, f"statusCode {code}: {_clip(detail)}")
        return Result(True, body)
    return Result(True, raw)


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ends_session(status: JobStatus) -> bool:
    """Whether a run that ended so makes the session FAILED (a job failed on its own)."""
    return status is JobStatus.FAILED
