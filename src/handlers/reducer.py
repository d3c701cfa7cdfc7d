"""Lambda entry point of the reducer: one EventBridge event per invocation.

The rules of template.yaml deliver the services' completion events (Lambda
destinations, ECS, Step Functions, Glue, Batch, EMR) and Bunsui's own (a
session started, a timer due, a user's request). The event's envelope is
parsed with Powertools' ``EventBridgeModel``; the engine reads it into an
engine event and the reducer applies it.

What may be raised, and what may not: EventBridge delivers an event again when
the function fails. So an event that is not Bunsui's, or is malformed, is
logged and acknowledged (delivering it again would change nothing), while
throttling and other transient AWS errors are raised, to be delivered again.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

# The pipeline language and the reducer load here, in the init phase: this function's first
# event runs them (engine.aws.service imports them where it uses them, for the history
# projector's sake, which never does).
from engine import loader, reducer  # noqa: F401
from engine.aws.service import AwsEngine, Handled, Ignored, lambda_engine

logger = Logger(service="bunsui")
tracer = Tracer(service="bunsui")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Bunsui"))


def engine() -> AwsEngine:
    """The container's engine (tests replace it)."""
    return lambda_engine()


def _job_id(key: str | None) -> str | None:
    """The job of a run key (``train`` of ``train[3]``)."""
    return None if key is None else key.split("[", 1)[0]


def _record(handled: Handled, conflicts: int) -> None:
    for job_type, seconds in handled.durations:
        # Its own EMF document: the job type is a dimension of this metric alone.
        with single_metric(
            name="JobDuration", unit=MetricUnit.Seconds, value=seconds, namespace=metrics.namespace
        ) as metric:
            metric.add_dimension(name="job_type", value=job_type)
    metrics.add_metric(name="ReducerConflicts", unit=MetricUnit.Count, value=conflicts)


@logger.inject_lambda_context(log_event=False, clear_state=True)  # events may hold secrets
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    metrics.add_metric(name="ReducerEvents", unit=MetricUnit.Count, value=1)
    try:
        envelope = parse(event=event, model=EventBridgeModel)
    except (ValidationError, ValueError, TypeError) as exc:
        logger.warning("not an EventBridge event: acknowledged", extra={"problem": str(exc)[:500]})
        metrics.add_metric(name="ReducerEventsIgnored", unit=MetricUnit.Count, value=1)
        return {"handled": False, "ignored": "not an EventBridge event"}
    kind = envelope.detail_type
    logger.append_keys(detail_type=kind, source=envelope.source, event_id=envelope.id)
    app = engine()
    found = app.read(event)  # Throttled, CorrelationFailed: raised, delivered again
    if not isinstance(found, Ignored):
        logger.append_keys(session_id=found.session_id, job_id=_job_id(getattr(found, "key", None)))
    handled = app.apply(kind, found)
    _record(handled, app.take_conflicts())
    if handled.ignored is not None:
        logger.info("event ignored", extra={"reason": handled.ignored})
        metrics.add_metric(name="ReducerEventsIgnored", unit=MetricUnit.Count, value=1)
        return {"handled": False, "ignored": handled.ignored}
    logger.info("event handled", extra={"key": handled.key, "ended": len(handled.durations)})
    return {"handled": True, "session_id": handled.session_id, "key": handled.key}
