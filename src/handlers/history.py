"""Lambda entry point of the history projector: a batch of the table's stream records.

Each record of a run or session item becomes the history entry the reducer
would have written (:func:`engine.aws.history.entries_from_stream`); the batch's
entries are written together (:func:`engine.aws.history.write_history`, 25 to
a request). A session item whose status turns terminal is where a session's
end is seen, once per end: ``Session Completed`` goes on the bus and the
sessions-ended metrics are counted here.

Records are processed with Powertools' batch processor and partial failure
reporting: a record that fails is reported, so the stream is retried from it
and one bad record does not block its shard. Writing an entry again is
harmless (its key is its record's), so a retried batch repeats no history.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from engine.aws.history import entries_from_stream, write_history
from engine.aws.service import AwsEngine, ended_session, lambda_engine
from engine.events import HistoryEntry
from engine.state import SessionStatus

logger = Logger(service="bunsui")
tracer = Tracer(service="bunsui")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Bunsui"))
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)

ENDED_METRICS = {
    SessionStatus.SUCCEEDED: "SessionsSucceeded",
    SessionStatus.FAILED: "SessionsFailed",
    SessionStatus.CANCELLED: "SessionsCancelled",
}


def engine() -> AwsEngine:
    """The container's engine (tests replace it)."""
    return lambda_engine()


class Projection:
    """What one batch's records add up to: their entries, and the sessions that ended."""

    def __init__(self, app: AwsEngine) -> None:
        self.app = app
        self.entries: list[HistoryEntry] = []

    def record(self, record: DynamoDBRecord) -> None:
        raw = record.raw_event
        # The record's shape is checked; the images are read as the stream sends them
        # (typed attribute values), as the table's own code reads items.
        DynamoDBStreamRecordModel.model_validate(raw)
        entries = entries_from_stream([raw])
        session = ended_session(raw)
        if session is not None:
            self.app.bus.session_completed(session)
            metrics.add_metric(name=ENDED_METRICS[session.status], unit=MetricUnit.Count, value=1)
            logger.info(
                "session completed",
                extra={"session_id": session.id, "status": session.status.value},
            )
        self.entries.extend(entries)


@logger.inject_lambda_context(log_event=False, clear_state=True)  # images hold parameters
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    app = engine()
    projection = Projection(app)
    answer = process_partial_response(
        event=event, record_handler=projection.record, processor=processor, context=context
    )
    settings = app.settings
    # Raised if it fails: the whole batch comes again, and its entries are written again.
    write_history(app.clients.dynamodb, settings.table, projection.entries, settings.history_days)
    failures = answer.get("batchItemFailures", [])
    logger.info(
        "history written", extra={"entries": len(projection.entries), "failed": len(failures)}
    )
    if metrics.metric_set:  # sessions ended in this batch
        metrics.flush_metrics()
    return answer
