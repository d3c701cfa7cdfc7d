"""Lambda entry point of scheduled sessions: EventBridge Scheduler starts a session.

A scheduled session's schedule (:mod:`engine.aws.schedules`) invokes this
function with ``{schedule, scheduled_time, pipeline, parameters, parameter_text}``.
The session's id comes from (schedule, scheduled time), so a start Scheduler
delivers twice is one session.

A start the request itself makes impossible (no such pipeline, a parameter the
pipeline's latest version refuses) is logged as an error with the CLI's
message and not raised: trying it again would fail the same way. AWS's own
failures are raised, and Scheduler tries again.
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
from engine.aws.service import AwsEngine, lambda_engine, scheduled_session_id
from engine.errors import ParameterInvalid, PipelineInvalid, PipelineNotFound
from handlers.models import StartEvent

logger = Logger(service="bunsui")
tracer = Tracer(service="bunsui")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Bunsui"))


def engine() -> AwsEngine:
    """The container's engine (tests replace it)."""
    return lambda_engine()


@logger.inject_lambda_context(log_event=False, clear_state=True)  # parameters may be secret
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = StartEvent.model_validate(event)
    except ValidationError as exc:
        problems = [".".join(map(str, e["loc"])) + ": " + e["msg"] for e in exc.errors()]
        logger.error("not a session start: not started", extra={"problems": problems})
        metrics.add_metric(name="ScheduledStartsRefused", unit=MetricUnit.Count, value=1)
        return {"started": False, "error": "; ".join(problems)}
    logger.append_keys(pipeline=request.pipeline, schedule=request.schedule)
    session_id = None
    if request.schedule and request.scheduled_time:
        session_id = scheduled_session_id(request.schedule, request.scheduled_time)
    try:
        session = engine().start_session(
            request.pipeline, request.parameters, request.parameter_text, session_id
        )
    except (PipelineNotFound, PipelineInvalid, ParameterInvalid) as exc:
        logger.error(
            "session not started", extra={"error": type(exc).__name__, "problem": str(exc)}
        )
        metrics.add_metric(name="ScheduledStartsRefused", unit=MetricUnit.Count, value=1)
        return {"started": False, "error": str(exc)}
    logger.append_keys(session_id=session.id)
    logger.info("session started", extra={"version": session.version})
    metrics.add_metric(name="SessionsStarted", unit=MetricUnit.Count, value=1)
    return {"started": True, "session_id": session.id}
