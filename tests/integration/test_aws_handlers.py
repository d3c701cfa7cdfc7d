"""The Lambda handlers end to end, in-process, on moto: the product's ML pipeline goes from
the API through the bus to the reducer, its jobs report back as their services would,
the stream projector writes its history and announces its end; and the reducer, history,
sweeper and start handlers each with their sample events."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from engine.aws.dispatch import Throttled
from engine.aws.service import scheduled_session_id, utc_now
from engine.reducer import later
from engine.state import SessionStatus
from handlers import api, history, reducer, start, sweeper
from tests.integration.test_aws_service import (
    EVENTS,
    REGION,
    AwsWorld,
    Context,
    sample,
)
from tests.integration.test_aws_service import world as aws_world

__all__ = ["aws_world"]

ANSWERS: dict[str, Any] = {
    # A Lambda-style response: its body is the job's output.
    "data-preparation-function": {
        "statusCode": 200,
        "body": json.dumps({"train_samples": 4000, "test_samples": 1000}),
    },
    "data-validation-function": {"valid": True},
    "model-evaluation-function": {
        "evaluation_passed": True,
        "evaluation_accuracy": 0.91,
        "evaluation_metrics": {"accuracy": 0.91, "f1": 0.88},
    },
    "model-deployment-function": {"endpoint": "churn-endpoint"},
    "model-registry-function": {"registered": True},
}
MODEL = {"model_path": "s3://ml-bucket/models/customer-churn-model/v1.0/model.tar.gz"}


@pytest.fixture
def world(aws_world: AwsWorld, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsWorld]:
    for module in (api, reducer, history, sweeper, start):
        monkeypatch.setattr(module, "engine", lambda: aws_world.engine)
        # The modules were imported before the fixture set the namespace.
        monkeypatch.setattr(module.metrics, "namespace", os.environ["POWERTOOLS_METRICS_NAMESPACE"])
    yield aws_world


def api_call(name: str, session_id: str | None = None) -> tuple[int, Any]:
    text = (EVENTS / f"{name}.json").read_text()
    if session_id is not None:
        text = text.replace("20260115-5d1c9b2e7a40", session_id)
    reply = api.handler(json.loads(text), Context())
    return reply["statusCode"], json.loads(reply["body"]) if reply.get("body") else None


class Services:
    """The job services' side: each invocation or task Bunsui started ends, once."""

    def __init__(self, world: AwsWorld) -> None:
        self.world = world
        self.invokes = 0
        self.tasks = 0
        self.reduced: list[dict[str, Any]] = []

    def reduce(self, event: dict[str, Any]) -> dict[str, Any]:
        reply = reducer.handler(event, Context())
        self.reduced.append(reply)
        return reply

    def step(self) -> bool:
        """Deliver what is on the bus, then end what runs; whether anything happened."""
        moved = False
        for event in self.world.bus_events():
            self.reduce(event)
            moved = True
        while self.invokes < len(self.world.invokes):
            call = self.world.invokes[self.invokes]
            self.invokes += 1
            payload = json.loads(call["Payload"])
            answer = ANSWERS[call["FunctionName"]]
            self.reduce(self.world.lambda_result(payload, answer))
            moved = True
        while self.tasks < len(self.world.tasks):
            request = self.world.tasks[self.tasks]
            self.tasks += 1
            environment = request["overrides"]["containerOverrides"][0]["environment"]
            output = next(v["value"] for v in environment if v["name"] == "BUNSUI_OUTPUT")
            bucket, key = output.removeprefix("s3://").split("/", 1)
            self.world.clients.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(MODEL))
            self.reduce(self.world.task_stopped(request))
            moved = True
        return moved

    def run_to_end(self, session_id: str) -> str:
        for _ in range(50):
            if not self.step():
                break
        return self.world.engine.session(session_id).status.value


def stream_records(world: AwsWorld) -> list[dict[str, Any]]:
    """The table's stream as Lambda hands it to the history function."""
    streams = boto3.client(
        "dynamodbstreams",
        region_name=REGION,
        # botocore names an account endpoint for a stream ARN; moto answers the regional one.
        endpoint_url=f"https://streams.dynamodb.{REGION}.amazonaws.com",
    )
    arn = world.clients.dynamodb.describe_table(TableName=world.table)["Table"]["LatestStreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator)
            records += page["Records"]
            iterator = page.get("NextShardIterator") if page["Records"] else None
    for record in records:
        record["eventSourceARN"] = arn
        change = record["dynamodb"]
        moment = change.get("ApproximateCreationDateTime")
        change["ApproximateCreationDateTime"] = (
            moment.timestamp() if isinstance(moment, datetime) else datetime.now().timestamp()
        )
    return records


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Where the handlers' Powertools log lines go (their handler holds the stdout it
    found at import, before pytest's capture)."""
    buffer = io.StringIO()
    for handler in logging.getLogger("bunsui").handlers:
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", buffer)
    return buffer


def logged(logs: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    logs.seek(0)
    logs.truncate()
    return lines


def printed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON lines the handlers printed: their EMF metrics."""
    found = []
    for line in capsys.readouterr().out.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def metric_values(lines: list[dict[str, Any]], name: str) -> list[float]:
    """Every value of a metric in these EMF documents (one value, or a list of them)."""
    found: list[float] = []
    for line in lines:
        if "_aws" in line and name in line:
            value = line[name]
            found += value if isinstance(value, list) else [value]
    return found


# ---------------------------------------------------------------------- the whole flow


def test_the_ml_pipeline_runs_from_the_api_to_its_end(
    world: AwsWorld, capsys: pytest.CaptureFixture[str], logs: io.StringIO
):
    assert api_call("api-create-pipeline")[0] == 201
    status, body = api_call("api-start-session")
    assert status == 201
    session_id = body["session"]["id"]
    services = Services(world)
    assert services.run_to_end(session_id) == "succeeded"
    assert [p["bunsui"]["job_id"] for p in world.invoked()] == [
        "prepare_data",
        "validate_data",
        "evaluate_model",
        "deploy_model",
        "update_registry",
    ]
    [task] = world.tasks
    environment = {
        v["name"]: v["value"] for v in task["overrides"]["containerOverrides"][0]["environment"]
    }
    assert environment["HYPERPARAMETERS"] == '{"max_depth": 10, "n_estimators": 100}'
    assert environment["MODEL_NAME"] == "customer-churn-model"
    assert environment["BUNSUI_DISPATCH_ID"] == f"{session_id}/train_model/1"
    evaluate = next(p for p in world.invoked() if p["bunsui"]["job_id"] == "evaluate_model")
    assert evaluate["threshold"] == 0.85  # a float stays a float
    registry = world.invoked()[-1]
    assert registry["metrics"] == {"accuracy": 0.91, "f1": 0.88}  # two jobs up, typed
    status, body = api_call("api-show-run", session_id)
    assert body["run"]["output"] == {"train_samples": 4000, "test_samples": 1000}
    assert body["run"]["handle"] == "c2a6f2ae-7dbb-4d22-8782-d0485c9877e2"  # with the outcome
    assert all(reply["handled"] for reply in services.reduced)

    lines = printed(capsys)
    durations = [line for line in lines if "JobDuration" in line]
    assert sorted(line["job_type"] for line in durations) == ["ecs"] + ["lambda"] * 5
    assert all(
        line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "BunsuiTest" for line in durations
    )
    assert sum(metric_values(lines, "ReducerConflicts")) == 0
    handled = [line for line in logged(logs) if line.get("message") == "event handled"]
    assert handled and all(line["session_id"] == session_id for line in handled)
    assert {line.get("job_id") for line in handled} >= {"prepare_data", "train_model"}
    assert metric_values(lines, "SessionsStarted") == [1.0]

    # The stream projector writes the history, and sees the session's end once.
    records = stream_records(world)
    answer = history.handler({"Records": records}, Context())
    assert answer == {"batchItemFailures": []}
    status, body = api_call("api-session-history", session_id)
    kinds = [(entry["kind"], entry["key"]) for _, entry in body["entries"]]
    assert kinds[0] == ("session_started", None)
    assert kinds[-1] == ("session_succeeded", None)
    assert ("job_dispatched", "train_model") in kinds and ("job_succeeded", "deploy_model") in kinds
    [completed] = [e for e in world.bus_events() if e["detail-type"] == "Session Completed"]
    assert completed["detail"] == {
        "session_id": session_id,
        "pipeline": "ML Training Pipeline",
        "status": "succeeded",
    }
    assert metric_values(printed(capsys), "SessionsSucceeded") == [1.0]
    history.handler({"Records": records}, Context())  # a batch delivered again
    assert api_call("api-session-history", session_id)[1]["entries"] == body["entries"]


def test_a_retry_through_the_api_is_applied_by_the_reducer(world: AwsWorld):
    api_call("api-create-pipeline")
    session_id = api_call("api-start-session")[1]["session"]["id"]
    assert api_call("api-cancel-session", session_id)[0] == 202
    services = Services(world)
    services.step()
    assert world.engine.session(session_id).status is SessionStatus.CANCELLED
    assert api_call("api-retry-session", session_id)[0] == 202
    assert services.run_to_end(session_id) == "succeeded"
    evaluate = [p for p in world.invoked() if p["bunsui"]["job_id"] == "evaluate_model"]
    assert [p["threshold"] for p in evaluate] == [0.8]  # the retry's new value


# ---------------------------------------------------------------------- the reducer


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"source": "bunsui", "detail-type": "Session Started"},
        sample("bunsui-session-started.json") | {"time": "not a time"},
        sample("bunsui-session-started.json") | {"detail": {"session_id": ""}},
        sample("glue-job-succeeded.json") | {"source": "aws.s3"},
        sample("bunsui-session-completed.json"),
    ],
    ids=["empty", "no envelope", "bad time", "bad detail", "foreign", "completed"],
)
def test_the_reducer_acknowledges_events_that_are_not_for_it(world: AwsWorld, event: Any):
    reply = reducer.handler(copy.deepcopy(event), Context())
    assert reply["handled"] is False and reply["ignored"]


def test_the_reducer_takes_bunsuis_sample_events_for_a_live_session(world: AwsWorld):
    api_call("api-create-pipeline")
    session_id = api_call("api-start-session")[1]["session"]["id"]
    Services(world).step()
    for name in ("pause-requested", "resume-requested", "cancel-requested"):
        text = (EVENTS / f"bunsui-{name}.json").read_text()
        event = json.loads(text.replace("20240115-5d1c9b2e7a40", session_id))
        assert reducer.handler(event, Context())["handled"] is True
    assert world.engine.session(session_id).status is SessionStatus.CANCELLED


def test_throttling_is_raised_so_eventbridge_delivers_the_event_again(world: AwsWorld):
    api_call("api-create-pipeline")
    session_id = api_call("api-start-session")[1]["session"]["id"]
    [started] = world.bus_events()

    def throttled(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
            "GetItem",
        )

    world.clients.dynamodb.meta.events.register_first("before-call.dynamodb.GetItem", throttled)
    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        reducer.handler(started, Context())
    world.clients.dynamodb.meta.events.unregister("before-call.dynamodb.GetItem", throttled)
    assert reducer.handler(started, Context())["handled"] is True  # delivered again
    assert [p["bunsui"]["dispatch_id"] for p in world.invoked()] == [f"{session_id}/prepare_data/1"]

    glue = sample("glue-job-succeeded.json")

    def glue_throttled(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "x"}}, "GetJobRun")

    world.clients.glue.meta.events.register_first("before-call.glue.GetJobRun", glue_throttled)
    with pytest.raises(Throttled):
        reducer.handler(glue, Context())


# ---------------------------------------------------------------------- history


def test_the_history_projector_reports_only_the_record_that_failed(
    world: AwsWorld, capsys: pytest.CaptureFixture[str]
):
    event = sample("dynamodb-stream.json")
    broken = copy.deepcopy(event["Records"][0])
    broken["eventID"] = "broken"
    broken["dynamodb"]["SequenceNumber"] = "111100000000000000000003"
    broken["dynamodb"]["NewImage"]["status"] = {"S": "exploded"}
    event["Records"].append(broken)
    answer = history.handler(event, Context())
    assert answer == {"batchItemFailures": [{"itemIdentifier": "111100000000000000000003"}]}
    entries = world.engine.store.history("20260115-5d1c9b2e7a40")
    assert [(e.kind, e.key) for _, e in entries] == [
        ("job_succeeded", "update_registry"),
        ("session_succeeded", None),
    ]
    [completed] = world.bus_events()
    assert completed["detail"]["status"] == "succeeded"
    assert metric_values(printed(capsys), "SessionsSucceeded") == [1.0]


# ---------------------------------------------------------------------- the sweeper


def test_the_sweeper_drives_on_a_session_whose_start_was_lost(world: AwsWorld, logs: io.StringIO):
    api_call("api-create-pipeline")
    session_id = api_call("api-start-session")[1]["session"]["id"]
    world.bus_events()  # Session Started is lost
    assert sweeper.handler(sample("sweeper.json"), Context()) == {
        "looked_at": 1,
        "repaired": 0,  # within the grace period: a reducer may be at work
        "failed": 0,
    }
    world.engine.clock = lambda: later(utc_now(), 10)  # ten seconds on
    reply = sweeper.handler(sample("sweeper.json") | {"grace_seconds": 5}, Context())
    assert reply == {"looked_at": 1, "repaired": 1, "failed": 0}
    assert [p["bunsui"]["job_id"] for p in world.invoked()] == ["prepare_data"]
    swept = [line for line in logged(logs) if line.get("message") == "session swept"]
    assert [(line["session_id"], line["did"]) for line in swept] == [
        (session_id, ["decided prepare_data: running"])
    ]


# ---------------------------------------------------------------------- scheduled sessions


def test_a_scheduled_start_starts_one_session_however_often_it_is_delivered(world: AwsWorld):
    api_call("api-create-pipeline")
    event = sample("scheduled-session.json")
    reply = start.handler(event, Context())
    expected = scheduled_session_id("nightly-churn", "2026-01-16T02:00:00Z")
    assert reply == {"started": True, "session_id": expected}
    assert start.handler(event, Context()) == reply
    assert [s.id for s in world.engine.sessions()] == [expected]
    assert world.engine.session(expected).parameters["model_name"] == "customer-churn-model"
    assert {e["detail-type"] for e in world.bus_events()} == {"Session Started"}


def test_a_scheduled_start_with_a_bad_parameter_is_logged_not_retried(
    world: AwsWorld, logs: io.StringIO
):
    api_call("api-create-pipeline")
    event = sample("scheduled-session.json")
    event["parameter_text"]["evaluation_threshold"] = "1.5"
    reply = start.handler(event, Context())
    assert reply["started"] is False
    assert reply["error"].startswith("parameter 'evaluation_threshold': 1.5 is above")
    [error] = [line for line in logged(logs) if line.get("level") == "ERROR"]
    assert error["message"] == "session not started"
    assert error["error"] == "ParameterInvalid" and error["schedule"] == "nightly-churn"
    assert error["problem"] == reply["error"]
    assert world.engine.sessions() == []
    assert start.handler({"pipeline": 3}, Context())["started"] is False
    gone = sample("scheduled-session.json") | {"pipeline": "deleted pipeline"}
    assert start.handler(gone, Context())["error"] == "pipeline 'deleted pipeline' not found."
