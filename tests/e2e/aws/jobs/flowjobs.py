"""The Lambda functions of the AWS flow test's pipelines: trivial, so the engine is what is tested.

Each receives the job's payload plus ``bunsui`` (dispatch id, session, job,
attempt), as Bunsui's dispatcher sends it.
"""

from __future__ import annotations

from typing import Any


def noop(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Succeeds at once: echoes the item it was given and its attempt."""
    return {"item": event.get("item"), "attempt": event["bunsui"]["attempt"]}


def flaky(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fails its first ``fail_attempts`` attempts (default 1), then succeeds."""
    attempt = event["bunsui"]["attempt"]
    if attempt <= int(event.get("fail_attempts", 1)):
        raise RuntimeError(f"flaky: attempt {attempt} fails on purpose")
    return {"recovered_on": attempt}


def total(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The fan-in: how many results it was given."""
    return {"count": len(event.get("results") or [])}
