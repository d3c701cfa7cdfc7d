"""The AWS application (engine.aws.service) on moto: pipelines, sessions, requests, retry,
schedules, and the reducer's entry point, with the product's ML pipeline.

:class:`AwsWorld` is the stack these tests (and test_api_handler, test_aws_handlers)
run on: the table, the bus with a queue that sees every Bunsui event, the
Scheduler group, the key and the output bucket, on moto. The job services are
answered in-process: Lambda's asynchronous Invoke and ECS RunTask go to
``before-call`` hooks that record what was asked (moto runs neither without Docker
or container instances), and the tests send the completion events AWS would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from moto import mock_aws

from engine.aws.schedules import PREFIX, Schedule, ScheduleInvalid, ScheduleNotFound
from engine.aws.service import (
    RETRY_REQUESTED,
    AwsEngine,
    RunNotFound,
    lambda_engine,
    scheduled_session_id,
    utc_now,
)
from engine.aws.settings import Clients, Settings
from engine.aws.table import create_table
from engine.errors import (
    Conflict,
    ParameterInvalid,
    PipelineInvalid,
    PipelineNotFound,
    SessionNotFound,
)
from engine.parameters import REDACTED
from engine.reducer import later
from engine.state import JobStatus, SessionStatus
from tests.conftest import PRODUCT_PIPELINE, ROOT

ACCOUNT = "123456789012"
REGION = "us-east-1"
EVENTS = ROOT / "events"
PIPELINE = "ML Training Pipeline"
PRODUCT_TEXT = PRODUCT_PIPELINE.read_text()
# The product document's `bunsui session start --parameters`, as the CLI sends them.
PRODUCT_PARAMETER_TEXT = {
    "model_name": "customer-churn-model",
    "training_data_path": "s3://ml-data-bucket/customer-data.csv",
    "hyperparameters": '{"max_depth": 10, "n_estimators": 100}',
    "evaluation_threshold": "0.85",
}


@dataclass
class Context:
    """What a Lambda handler is given as its context."""

    function_name: str = "bunsui-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:bunsui-test"
    aws_request_id: str = "7c1f3b2a-request"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def sample(name: str) -> dict[str, Any]:
    """One of events/*.json."""
    return json.loads((EVENTS / name).read_text())


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


def intercept(client: Any, operation: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Answer ``operation`` of ``client`` in-process; the parameters of every call."""
    calls: list[dict[str, Any]] = []
    event = client.meta.service_model.service_id.hyphenize()

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    def respond(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("", 200, {}, None), answer

    client.meta.events.register(f"before-parameter-build.{event}.{operation}", record)
    client.meta.events.register(f"before-call.{event}.{operation}", respond)
    return calls


# One boto3 session for every test: each loads the services' models once, not per test.
BOTO = boto3.session.Session()


class AwsWorld:
    """A Bunsui stack on moto, and the parts of AWS moto does not play."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        clients = Clients(session=BOTO)
        self.sqs = clients._client("sqs")
        self.table = "bunsui-test"
        # The table as template.yaml defines it (engine.aws.table keeps a copy that a
        # test holds equal to the template's, so the template is not parsed per test).
        create_table(clients.dynamodb, self.table, template=ROOT / "no-such-template.yaml")
        bus_arn = clients.events.create_event_bus(Name="bunsui-test")["EventBusArn"]
        queue = self.sqs.create_queue(QueueName="bunsui-events")["QueueUrl"]
        self.queue = queue
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        clients.events.put_rule(
            Name="see-bunsui",
            EventBusName="bunsui-test",
            EventPattern=json.dumps({"source": ["bunsui"]}),
        )
        clients.events.put_targets(
            Rule="see-bunsui", EventBusName="bunsui-test", Targets=[{"Id": "q", "Arn": queue_arn}]
        )
        clients.scheduler.create_schedule_group(Name="bunsui-test")
        key = clients.kms.create_key()["KeyMetadata"]["Arn"]
        clients.s3.create_bucket(Bucket="bunsui-outputs")
        clients.ecs.create_cluster(clusterName="ml-cluster")
        definition = clients.ecs.register_task_definition(
            family="ml-training-task",
            containerDefinitions=[{"name": "train", "image": "train:1", "memory": 512}],
        )
        self.task_definition = definition["taskDefinition"]["taskDefinitionArn"]
        env = {
            "BUNSUI_TABLE": self.table,
            "BUNSUI_BUS": "bunsui-test",
            "BUNSUI_BUS_ARN": bus_arn,
            "BUNSUI_SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/bunsui-scheduler",
            "BUNSUI_SCHEDULE_GROUP": "bunsui-test",
            "BUNSUI_OUTPUT_BUCKET": "bunsui-outputs",
            "BUNSUI_KMS_KEY": key,
            "BUNSUI_START_FUNCTION_ARN": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:start",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        self.settings = Settings.from_env()
        self.engine = AwsEngine(self.settings, clients)
        self.clients = clients
        self.invokes = intercept(clients.lambda_, "Invoke", {"StatusCode": 202})
        self.tasks = intercept(
            clients.ecs,
            "RunTask",
            {"tasks": [{"taskArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/ml-cluster/t1"}]},
        )

    # -- what went on the bus

    def bus_events(self) -> list[dict[str, Any]]:
        """Every Bunsui event put since the last call, in order."""
        found = []
        while True:
            answer = self.sqs.receive_message(
                QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = answer.get("Messages", [])
            if not messages:
                return found
            for message in messages:
                event = json.loads(message["Body"])
                event.setdefault("account", ACCOUNT)  # EventBridge sets it; moto leaves it out
                found.append(event)
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])

    # -- what the services were asked

    def invoked(self) -> list[dict[str, Any]]:
        """The payloads of every Lambda job invoked, in order."""
        return [json.loads(call["Payload"]) for call in self.invokes]

    # -- what the services answer

    def lambda_result(self, payload: dict[str, Any], response: Any) -> dict[str, Any]:
        """The destination event of a Lambda job's successful invocation."""
        event = sample("lambda-destination-success.json")
        event["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event["detail"]["requestPayload"] = payload
        event["detail"]["responsePayload"] = response
        return event

    def task_stopped(self, request: dict[str, Any], exit_code: int = 0) -> dict[str, Any]:
        """The ECS Task State Change of a task Bunsui ran, stopped."""
        event = sample("ecs-task-stopped.json")
        event["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        detail = event["detail"]
        detail["overrides"] = request["overrides"]
        detail["startedBy"] = request["startedBy"]
        detail["taskDefinitionArn"] = self.task_definition
        detail["clusterArn"] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/ml-cluster"
        detail["containers"][0]["name"] = "train"
        detail["containers"][0]["exitCode"] = exit_code
        return event


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsWorld]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "BunsuiTest",
        "POWERTOOLS_SERVICE_NAME": "bunsui",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield AwsWorld(monkeypatch)


def started(world: AwsWorld, **text: str) -> Any:
    world.engine.create_pipeline(PRODUCT_TEXT, "ml-pipeline.yaml")
    return world.engine.start_session(PIPELINE, None, {**PRODUCT_PARAMETER_TEXT, **text})


def deliver_bus(world: AwsWorld) -> list[str]:
    """Hand every Bunsui event on the bus to the reducer; their detail-types."""
    kinds = []
    for event in world.bus_events():
        kinds.append(event["detail-type"])
        world.engine.handle(event)
    return kinds


# ---------------------------------------------------------------------- pipelines


def test_a_pipeline_is_stored_as_versions_and_the_same_text_is_no_new_one(world: AwsWorld):
    engine = world.engine
    first = engine.create_pipeline(PRODUCT_TEXT, "ml-pipeline.yaml")
    assert (first.name, first.version, first.jobs, first.created) == (PIPELINE, 1, 6, True)
    again = engine.create_pipeline(PRODUCT_TEXT, "ml-pipeline.yaml")
    assert (again.version, again.created) == (1, False)
    changed = engine.create_pipeline(PRODUCT_TEXT.replace("0.8", "0.75"), "ml-pipeline.yaml")
    assert (changed.version, changed.created) == (2, True)
    assert [(n, v) for n, v, _ in engine.pipelines()] == [(PIPELINE, 2)]
    shown = engine.pipeline_document(PIPELINE, 1)
    assert shown.document == PRODUCT_TEXT and shown.created_at
    assert [v for v, _ in engine.pipeline_versions(PIPELINE)] == [1, 2]
    engine.delete_pipeline(PIPELINE)
    assert engine.pipelines() == []
    assert engine.pipeline_document(PIPELINE, 1).document == PRODUCT_TEXT  # pinned stays
    with pytest.raises(PipelineNotFound, match=r"pipeline 'ML Training Pipeline' not found\."):
        engine.pipeline_document(PIPELINE)


def test_an_invalid_pipeline_reports_every_problem_located(world: AwsWorld):
    broken = PRODUCT_TEXT.replace("[prepare_data]", "[prepare_dat]").replace(
        "type: ecs", "type: ec2"
    )
    with pytest.raises(PipelineInvalid) as caught:
        world.engine.create_pipeline(broken, "ml-pipeline.yaml")
    assert [p.path for p in caught.value.problems] == ["jobs[1].depends_on[0]", "jobs[2].type"]
    assert str(caught.value).startswith("ml-pipeline.yaml:52:18: jobs[1].depends_on[0]")
    assert world.engine.pipelines() == []


# ---------------------------------------------------------------------- sessions


def test_a_session_starts_with_the_products_parameters_coerced_as_the_cli_does(world: AwsWorld):
    session = started(world)
    assert session.status is SessionStatus.RUNNING and session.total == 6
    assert session.parameters == {
        "model_name": "customer-churn-model",
        "training_data_path": "s3://ml-data-bucket/customer-data.csv",
        "model_version": "v1.0",
        "hyperparameters": {"max_depth": 10, "n_estimators": 100},
        "evaluation_threshold": 0.85,
    }
    [event] = world.bus_events()
    assert (event["source"], event["detail-type"]) == ("bunsui", "Session Started")
    assert event["detail"] == {"session_id": session.id}
    assert world.invokes == []  # nothing runs until the reducer has the event
    world.engine.handle(event)
    [payload] = world.invoked()
    assert payload["training_data_path"] == "s3://ml-data-bucket/customer-data.csv"
    assert payload["bunsui"]["dispatch_id"] == f"{session.id}/prepare_data/1"
    assert world.invokes[0]["InvocationType"] == "Event"
    assert world.invokes[0]["FunctionName"] == "data-preparation-function"


def test_a_bad_parameter_is_refused_with_the_clis_message_and_nothing_is_written(
    world: AwsWorld,
):
    world.engine.create_pipeline(PRODUCT_TEXT)
    with pytest.raises(ParameterInvalid) as caught:
        world.engine.start_session(
            PIPELINE, None, {**PRODUCT_PARAMETER_TEXT, "evaluation_threshold": "1.5"}
        )
    assert str(caught.value).startswith("parameter 'evaluation_threshold': 1.5 is above")
    with pytest.raises(ParameterInvalid, match="parameter 'model_nme': the pipeline has no"):
        world.engine.start_session(PIPELINE, {"model_nme": "x"}, PRODUCT_PARAMETER_TEXT)
    assert world.engine.sessions() == [] and world.bus_events() == []


def test_a_lambda_function_builds_its_engine_from_its_environment(world: AwsWorld):
    lambda_engine.cache_clear()
    try:
        built = lambda_engine()
        assert built is lambda_engine()  # once per container
        assert built.settings == world.settings
    finally:
        lambda_engine.cache_clear()


def test_sessions_list_by_pipeline_and_status(world: AwsWorld):
    first = started(world)
    second = world.engine.start_session(PIPELINE, None, PRODUCT_PARAMETER_TEXT)
    assert {s.id for s in world.engine.sessions(PIPELINE)} == {first.id, second.id}
    assert world.engine.sessions(statuses={SessionStatus.FAILED}) == []
    assert len(world.engine.sessions(limit=1)) == 1
    with pytest.raises(SessionNotFound, match=r"session 'nope' not found\."):
        world.engine.session("nope")


def test_runs_come_in_pages_and_a_missing_run_is_its_own_error(world: AwsWorld):
    session = started(world)
    deliver_bus(world)
    page = world.engine.runs(session.id, limit=1)
    assert [r.key for r in page.runs] == ["prepare_data"] and page.next == "prepare_data"
    rest = world.engine.runs(session.id, limit=1, after=page.next)
    assert rest.runs == [] and rest.next is None
    assert world.engine.runs(session.id, statuses={JobStatus.FAILED}).runs == []
    assert world.engine.run(session.id, "prepare_data").status is JobStatus.RUNNING
    with pytest.raises(RunNotFound, match="has no job run 'deploy_model'"):
        world.engine.run(session.id, "deploy_model")
    with pytest.raises(SessionNotFound):
        world.engine.runs("nope")


def test_cancel_pause_and_resume_are_events_for_the_reducer(world: AwsWorld):
    session = started(world)
    deliver_bus(world)
    world.engine.request(session.id, "pause")
    world.engine.request(session.id, "resume")
    world.engine.request(session.id, "cancel", "wrong data")
    kinds = [(e["detail-type"], e["detail"]) for e in world.bus_events()]
    assert kinds == [
        ("Session Pause Requested", {"session_id": session.id}),
        ("Session Resume Requested", {"session_id": session.id}),
        ("Session Cancel Requested", {"session_id": session.id, "reason": "wrong data"}),
    ]
    assert world.engine.session(session.id).status is SessionStatus.RUNNING  # not yet applied


def test_an_ended_session_refuses_requests_with_the_clis_message(world: AwsWorld):
    session = started(world)
    world.engine.request(session.id, "cancel")
    assert deliver_bus(world) == ["Session Started", "Session Cancel Requested"]
    assert world.engine.session(session.id).status is SessionStatus.CANCELLED
    with pytest.raises(Conflict, match=rf"^session '{session.id}' has ended \(cancelled\).$"):
        world.engine.request(session.id, "pause")
    running = started(world)
    with pytest.raises(Conflict, match="is running; only a failed or cancelled session can be"):
        world.engine.retry(running.id)


def test_retry_is_a_bus_event_the_reducer_applies_once(world: AwsWorld):
    session = started(world)
    world.engine.request(session.id, "cancel")
    deliver_bus(world)
    world.engine.retry(session.id, None, {"evaluation_threshold": "0.9"})
    [retry] = world.bus_events()
    assert retry["detail-type"] == RETRY_REQUESTED
    assert retry["detail"]["parameters"]["evaluation_threshold"] == 0.9
    handled = world.engine.handle(retry)
    assert handled.ignored is None
    after = world.engine.session(session.id)
    assert after.status is SessionStatus.RUNNING
    assert after.parameters["evaluation_threshold"] == 0.9
    # Attempt numbers go on: the retry's dispatch id is new.
    assert [p["bunsui"]["dispatch_id"] for p in world.invoked()] == [
        f"{session.id}/prepare_data/1",
        f"{session.id}/prepare_data/2",
    ]
    again = world.engine.handle(retry)  # delivered twice
    assert again.ignored == "retried already"


def test_a_retry_with_a_bad_value_is_refused_before_anything_is_put(world: AwsWorld):
    session = started(world)
    world.engine.request(session.id, "cancel")
    deliver_bus(world)
    with pytest.raises(ParameterInvalid, match="parameter 'evaluation_threshold'"):
        world.engine.retry(session.id, None, {"evaluation_threshold": "high"})
    assert world.bus_events() == []


SECRET_PIPELINE = """
version: "1.1"
name: with-secret
parameters:
  - {name: token, type: string, secret: true, required: true, validation: {pattern: "t-.+"}}
  - {name: size, type: integer, default: 1}
  - {name: note, type: string}
jobs:
  - id: call
    type: lambda
    parameters: {function_name: caller, payload: {token: "${token}", size: "${size}"}}
"""


def test_secrets_are_kept_aside_on_start_and_retry(world: AwsWorld):
    engine = world.engine
    engine.create_pipeline(SECRET_PIPELINE)
    session = engine.start_session("with-secret", {"token": "t-one"})
    assert session.parameters == {"token": REDACTED, "size": 1, "note": None}
    assert engine.secrets.get(session.id) == {"token": "t-one"}
    item = world.clients.dynamodb.get_item(
        TableName=world.table, Key={"pk": {"S": f"SESSION#{session.id}"}, "sk": {"S": "SECRETS"}}
    )["Item"]
    assert b"t-one" not in item["ciphertext"]["B"]
    engine.request(session.id, "cancel")
    deliver_bus(world)
    engine.retry(session.id, {"size": 2})  # the kept secret is not checked again
    [retry] = world.bus_events()
    assert retry["detail"]["parameters"] == {"token": REDACTED, "size": 2, "note": None}
    engine.handle(retry)
    assert engine.secrets.get(session.id) == {"token": "t-one"}
    assert world.invoked()[-1]["token"] == "t-one"  # the job gets the value, nothing else does


# ---------------------------------------------------------------------- the reducer's events


def test_events_that_are_not_bunsuis_are_ignored_with_a_reason(world: AwsWorld):
    foreign = sample("lambda-destination-success.json")
    del foreign["detail"]["requestPayload"]["bunsui"]
    assert "no Bunsui dispatch id" in (world.engine.handle(foreign).ignored or "")
    assert world.engine.handle({"source": "aws.s3", "detail-type": "Object Created"}).ignored
    assert world.engine.handle(["not", "an", "event"]).ignored
    unknown = sample("bunsui-session-started.json")  # its session is not in this table
    assert world.engine.handle(unknown).ignored == "no such session"


def test_a_throttled_dispatch_is_a_failed_attempt_not_a_lost_claim(world: AwsWorld):
    session = started(world)
    world.invokes.clear()
    client = world.clients.lambda_

    def throttle(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}, "Invoke"
        )

    client.meta.events.register_first("before-call.lambda.Invoke", throttle)
    deliver_bus(world)
    run = world.engine.run(session.id, "prepare_data")
    assert run.status is JobStatus.FAILED  # no retries declared: the attempt decides the job
    assert "TooManyRequestsException" in (run.error or "")
    assert world.engine.session(session.id).status is SessionStatus.FAILED


def test_lost_conditional_writes_are_counted_for_the_conflicts_metric(world: AwsWorld):
    session = started(world)
    [start] = world.bus_events()
    world.engine.handle(start)
    world.engine.take_conflicts()
    payload = world.invoked()[0]
    result = world.lambda_result(payload, {"train_samples": 4000})
    world.engine.handle(result)
    assert world.engine.take_conflicts() == 0
    world.engine.handle(result)  # a duplicate delivery changes nothing
    assert world.engine.run(session.id, "validate_data").attempt == 1
    assert world.engine.take_conflicts() == 0  # a duplicate stops before any write
    world.engine.store.transition(session.id, "prepare_data", {JobStatus.RUNNING}, {})
    assert world.engine.take_conflicts() == 1


def test_a_job_ended_by_an_event_reports_its_type_and_duration(world: AwsWorld):
    session = started(world)
    deliver_bus(world)
    handled = world.engine.handle(world.lambda_result(world.invoked()[0], {"rows": 1}))
    assert (handled.session_id, handled.key) == (session.id, "prepare_data")
    [(job_type, seconds)] = handled.durations
    assert job_type == "lambda" and seconds >= 0


# ---------------------------------------------------------------------- the sweeper


def test_the_sweeper_starts_a_session_whose_start_event_was_lost(world: AwsWorld):
    session = started(world)
    world.bus_events()  # Session Started never reaches the reducer
    assert world.engine.sweep(grace_seconds=3600)[0].actions == []
    world.engine.clock = lambda: later(utc_now(), 10)  # ten seconds on
    [swept] = world.engine.sweep(grace_seconds=5)
    assert (swept.session_id, swept.actions) == (session.id, ["decided prepare_data: running"])
    assert [p["bunsui"]["job_id"] for p in world.invoked()] == ["prepare_data"]
    assert world.engine.sweep(grace_seconds=5)[0].actions == []


# ---------------------------------------------------------------------- schedules


def test_scheduled_sessions_are_schedules_that_invoke_the_start_function(world: AwsWorld):
    engine = world.engine
    engine.create_pipeline(SECRET_PIPELINE)
    created = engine.create_schedule(
        Schedule("nightly", "with-secret", "0 2 * * ? *", {"token": "t-x"}, {"size": "3"})
    )
    assert (created.cron, created.parameters) == ("cron(0 2 * * ? *)", {"token": REDACTED})
    raw = world.clients.scheduler.get_schedule(Name=PREFIX + "nightly", GroupName="bunsui-test")
    assert raw["Target"]["Arn"] == world.settings.start_function_arn
    assert raw["Target"]["RoleArn"] == world.settings.scheduler_role_arn
    start = json.loads(raw["Target"]["Input"])
    assert start["scheduled_time"] == "<aws.scheduler.scheduled-time>"
    assert (start["pipeline"], start["parameters"], start["parameter_text"]) == (
        "with-secret",
        {"token": "t-x"},
        {"size": "3"},
    )
    [listed] = engine.list_schedules()
    assert (listed.name, listed.pipeline, listed.parameters) == (
        "nightly",
        "with-secret",
        {"token": REDACTED},
    )
    with pytest.raises(Conflict, match="schedule 'nightly' already exists"):
        engine.create_schedule(Schedule("nightly", "with-secret", "0 3 * * ? *", {"token": "t-y"}))
    engine.delete_schedule("nightly")
    assert engine.list_schedules() == []
    with pytest.raises(ScheduleNotFound, match=r"schedule 'nightly' not found\."):
        engine.delete_schedule("nightly")


def test_a_schedule_is_checked_before_it_is_created(world: AwsWorld):
    engine = world.engine
    engine.create_pipeline(SECRET_PIPELINE)
    with pytest.raises(ScheduleInvalid, match="has 4 fields; EventBridge Scheduler's has 6"):
        engine.create_schedule(Schedule("n", "with-secret", "0 2 * *", {"token": "t-1"}))
    with pytest.raises(ParameterInvalid, match="parameter 'token'"):
        engine.create_schedule(Schedule("n", "with-secret", "rate(1 day)", {"token": "x"}))
    with pytest.raises(PipelineNotFound):
        engine.create_schedule(Schedule("n", "nothing", "rate(1 day)"))
    assert engine.list_schedules() == []


def test_a_scheduled_start_delivered_twice_is_one_session(world: AwsWorld):
    world.engine.create_pipeline(PRODUCT_TEXT)
    session_id = scheduled_session_id("nightly", "2026-01-15T02:00:00Z")
    assert session_id.startswith("20260115-")
    first = world.engine.start_session(PIPELINE, None, PRODUCT_PARAMETER_TEXT, session_id)
    again = world.engine.start_session(PIPELINE, None, PRODUCT_PARAMETER_TEXT, session_id)
    assert first.id == again.id == session_id
    assert len(world.engine.sessions()) == 1
    assert [e["detail-type"] for e in world.bus_events()] == ["Session Started"] * 2
    assert deliver_bus(world) == []
