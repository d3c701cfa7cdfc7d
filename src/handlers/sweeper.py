"""Lambda entry point of the sweeper: on a rate schedule, drive on half-done sessions.

A reducer that dies mid-event (a timeout, a throttled write) can leave a
session with work counted but never decided, a retry whose timer was lost, a
fan-out never finished, a session never closed. The sweeper looks at the live
sessions (the ``ByStatus`` index), oldest first and as many as its time allows,
and has the reducer take the steps it missed (:meth:`engine.recovery.Recovery.sweep`).
A healthy session costs reads alone. A missed sweep is made good by the next.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

# The pipeline language and the reducer load here, in the init phase: this function's first
# event runs them (engine.aws.service imports them where it uses them, for the history
# projector's sake, which never does).
from engine import loader, reducer  # noqa: F401
from engine.aws.service import SWEEP_GRACE_SECONDS, SWEEP_LIMIT, AwsEngine, lambda_engine
from handlers.models import SweepEvent

logger = Logger(service="bunsui")
tracer = Tracer(service="bunsui")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Bunsui"))

RESERVE_MILLIS = 30_000
"""Time kept back from the function's timeout: one session's sweep must fit in it."""


def engine() -> AwsEngine:
    """The container's engine (tests replace it)."""
    return lambda_engine()


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = SweepEvent.model_validate(event if isinstance(event, dict) else {})
    except ValidationError as exc:
        logger.warning("sweep event not understood: defaults used", extra={"problem": str(exc)})
        request = SweepEvent()
    swept = engine().sweep(
        request.limit or SWEEP_LIMIT,
        SWEEP_GRACE_SECONDS if request.grace_seconds is None else request.grace_seconds,
        time_left=lambda: context.get_remaining_time_in_millis() > RESERVE_MILLIS,
    )
    repaired = [s for s in swept if s.actions]
    failed = [s for s in swept if s.error]
    for done in repaired:
        logger.info("session swept", extra={"session_id": done.session_id, "did": done.actions})
    for done in failed:
        logger.error("sweep failed", extra={"session_id": done.session_id, "error": done.error})
    metrics.add_metric(name="SessionsSwept", unit=MetricUnit.Count, value=len(repaired))
    metrics.add_metric(name="SweepFailures", unit=MetricUnit.Count, value=len(failed))
    logger.info("sweep done", extra={"looked_at": len(swept), "repaired": len(repaired)})
    return {"looked_at": len(swept), "repaired": len(repaired), "failed": len(failed)}
