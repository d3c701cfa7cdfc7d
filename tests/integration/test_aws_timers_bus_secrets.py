"""SchedulerTimers, BunsuiBus and KmsSecrets against moto.

Timers and the bus are checked end to end with the correlation: what a
schedule would put on the bus, and what a rule delivers from it, reads back
into the very engine event that was scheduled or put.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from engine.aws.bus import BunsuiBus, EventNotPut, event_detail, event_from_detail, parse_detail
from engine.aws.correlate import Correlator
from engine.aws.dispatch import Throttled
from engine.aws.secrets import KmsSecrets
from engine.aws.settings import Clients, Settings
from engine.aws.timers import SchedulerTimers, TimerNotScheduled, at_expression, schedule_name
from engine.errors import InputTooLarge
from engine.events import (
    AttemptFinished,
    AttemptTimedOut,
    CancelRequested,
    PauseRequested,
    ResumeRequested,
    RetryDue,
    SessionStarted,
    SessionTimedOut,
)
from engine.state import Session, SessionStatus

S = "20240115-5d1c9b2e7a40"
NOW = datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC)
ACCOUNT = "123456789012"
SETTINGS = Settings(
    table="bunsui",
    bus="bunsui",
    bus_arn=f"arn:aws:events:us-east-1:{ACCOUNT}:event-bus/bunsui",
    scheduler_role_arn=f"arn:aws:iam::{ACCOUNT}:role/bunsui-scheduler",
    schedule_group="bunsui",
)

EVERY_KIND = [
    SessionStarted(S, "2024-01-15T10:30:00+00:00"),
    RetryDue(S, "fetch", 1, "2024-01-15T10:33:02+00:00"),
    AttemptTimedOut(S, "score[3]", 2, "2024-01-15T12:00:00.250000+00:00"),
    SessionTimedOut(S, "2024-01-15T16:30:00+00:00"),
    CancelRequested(S, "2024-01-15T10:40:00+00:00", "wrong input data"),
    PauseRequested(S, "2024-01-15T10:41:00+00:00"),
    ResumeRequested(S, "2024-01-15T10:42:00+00:00"),
]


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield Clients()


def envelope(detail_type: str, detail: Any, time: str = "2024-01-15T10:34:00Z") -> dict[str, Any]:
    """What EventBridge delivers for an event put with source ``bunsui``."""
    return {
        "version": "0",
        "id": "7f2d3c4b-5a69-4e8f-9d0c-1b2a3c4d5e6f",
        "detail-type": detail_type,
        "source": "bunsui",
        "account": ACCOUNT,
        "time": time,
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


# ---------------------------------------------------------------- details


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_every_bunsui_event_survives_detail_and_back(event: Any) -> None:
    detail_type, detail = event_detail(event)
    parsed = parse_detail(detail_type, json.loads(json.dumps(detail)))
    assert event_from_detail(detail_type, parsed, event.now) == event


def test_attempt_finished_is_not_a_bunsui_event() -> None:
    with pytest.raises(TypeError, match="AttemptFinished"):
        event_detail(AttemptFinished(S, "fetch", 1, "2024-01-15T10:30:00+00:00"))


# ---------------------------------------------------------------- timers


@pytest.fixture
def timers(clients: Clients) -> SchedulerTimers:
    clients.scheduler.create_schedule_group(Name="bunsui")
    return SchedulerTimers(SETTINGS, clients, clock=lambda: NOW)


def test_timer_is_a_one_time_schedule_that_puts_the_detail_on_the_bus(
    timers: SchedulerTimers, clients: Clients
) -> None:
    event = RetryDue(S, "fetch", 1, "2024-01-15T10:33:02.400000+00:00")
    timers.schedule(event, event.now)
    found = clients.scheduler.get_schedule(Name=schedule_name(event), GroupName="bunsui")
    assert found["ScheduleExpression"] == "at(2024-01-15T10:33:03)"  # rounded up, never early
    assert found["ScheduleExpressionTimezone"] == "UTC"
    assert found["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert found["ActionAfterCompletion"] == "DELETE"
    target = found["Target"]
    assert target["Arn"] == SETTINGS.bus_arn
    assert target["RoleArn"] == SETTINGS.scheduler_role_arn
    assert target["EventBridgeParameters"] == {"DetailType": "Job Retry Due", "Source": "bunsui"}
    assert json.loads(target["Input"]) == {
        "session_id": S,
        "key": "fetch",
        "attempt": 1,
        "due": event.now,
    }


def test_scheduling_the_same_timer_twice_keeps_one_schedule(
    timers: SchedulerTimers, clients: Clients
) -> None:
    event = AttemptTimedOut(S, "train", 1, "2024-01-15T12:00:00+00:00")
    timers.schedule(event, event.now)
    timers.schedule(event, event.now)
    assert len(clients.scheduler.list_schedules(GroupName="bunsui")["Schedules"]) == 1
    timers.schedule(AttemptTimedOut(S, "train", 2, event.now), event.now)
    assert len(clients.scheduler.list_schedules(GroupName="bunsui")["Schedules"]) == 2


@pytest.mark.parametrize(
    ("at", "expression"),
    [
        ("2024-01-15T09:00:00+00:00", "at(2024-01-15T10:31:00)"),  # past: a minute ahead
        ("2024-01-15T10:30:20+00:00", "at(2024-01-15T10:31:00)"),  # sooner than a minute
        ("2024-01-15T14:00:00+02:00", "at(2024-01-15T12:00:00)"),  # another offset: UTC
        ("2024-01-15T11:00:00", "at(2024-01-15T11:00:00)"),  # no offset: UTC
    ],
)
def test_at_expression_is_utc_and_never_in_the_past(at: str, expression: str) -> None:
    assert at_expression(at, NOW) == expression


def test_schedule_names_are_short_deterministic_and_distinct() -> None:
    names = [schedule_name(event) for event in EVERY_KIND]
    names.append(schedule_name(RetryDue(S, "fetch", 2, "2024-01-15T10:33:02+00:00")))
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[0-9a-zA-Z_.-]{1,64}", name) for name in names)
    again = schedule_name(RetryDue(S, "fetch", 1, "2030-01-01T00:00:00+00:00"))
    assert again == schedule_name(EVERY_KIND[1])  # the due time is not part of the name


def test_refused_and_throttled_schedules(timers: SchedulerTimers, clients: Clients) -> None:
    event = SessionTimedOut(S, "2024-01-15T16:30:00+00:00")
    with Stubber(clients.scheduler) as stub:
        stub.add_client_error("create_schedule", "ValidationException", "Invalid RoleArn", 400)
        with pytest.raises(TimerNotScheduled, match="ValidationException: Invalid RoleArn"):
            timers.schedule(event, event.now)
        stub.add_client_error("create_schedule", "ThrottlingException", "Rate exceeded", 400)
        with pytest.raises(Throttled):
            timers.schedule(event, event.now)


@pytest.mark.parametrize("event", EVERY_KIND[1:4], ids=lambda e: type(e).__name__)
def test_what_a_timer_fires_reads_back_into_its_event(
    timers: SchedulerTimers, clients: Clients, event: Any
) -> None:
    target = timers.request(event, event.now)["Target"]
    fired = envelope(
        target["EventBridgeParameters"]["DetailType"],
        json.loads(target["Input"]),
        time="2024-01-15T18:00:41Z",  # Scheduler runs late: the event keeps its due time
    )
    assert Correlator(clients).engine_event(fired) == event


# ---------------------------------------------------------------- bus


@pytest.fixture
def delivered(clients: Clients) -> Iterator[Any]:
    """A queue that a rule on Bunsui's bus fills with every ``bunsui`` event."""
    clients.events.create_event_bus(Name="bunsui")
    sqs = clients.session.client("sqs")
    url = sqs.create_queue(QueueName="seen")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    clients.events.put_rule(
        Name="all", EventBusName="bunsui", EventPattern=json.dumps({"source": ["bunsui"]})
    )
    clients.events.put_targets(
        Rule="all", EventBusName="bunsui", Targets=[{"Id": "q", "Arn": arn["QueueArn"]}]
    )

    def received() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        return [json.loads(m["Body"]) for m in messages.get("Messages", [])]

    yield received


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_a_put_event_is_delivered_as_the_same_engine_event(
    clients: Clients, delivered: Any, event: Any
) -> None:
    BunsuiBus(SETTINGS, clients).put(event)
    [raw] = delivered()
    assert raw["source"] == "bunsui"
    assert Correlator(clients).engine_event(raw) == event


def test_session_completed_is_announced_for_users_not_the_reducer(
    clients: Clients, delivered: Any
) -> None:
    session = Session(
        S,
        "ml-pipeline",
        3,
        {},
        status=SessionStatus.SUCCEEDED,
        ended_at="2024-01-15T11:05:13+00:00",
    )
    BunsuiBus(SETTINGS, clients).session_completed(session)
    [raw] = delivered()
    assert raw["detail-type"] == "Session Completed"
    assert raw["detail"] == {"session_id": S, "pipeline": "ml-pipeline", "status": "succeeded"}
    assert raw["time"] == "2024-01-15T11:05:13Z"
    assert Correlator(clients).engine_event(raw) is None


def test_failed_entries_raise(clients: Clients) -> None:
    bus = BunsuiBus(SETTINGS, clients)
    event = PauseRequested(S, "2024-01-15T10:41:00+00:00")
    refused = {"ErrorCode": "InvalidArgument", "ErrorMessage": "Parameter Detail is not valid."}
    with Stubber(clients.events) as stub:
        stub.add_response("put_events", {"FailedEntryCount": 1, "Entries": [refused]})
        with pytest.raises(EventNotPut, match="InvalidArgument: Parameter Detail is not valid"):
            bus.put(event)
        throttled = {"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"}
        stub.add_response("put_events", {"FailedEntryCount": 1, "Entries": [throttled]})
        with pytest.raises(Throttled):
            bus.put(event)
        stub.add_client_error("put_events", "AccessDeniedException", "not authorized", 400)
        with pytest.raises(EventNotPut, match="AccessDeniedException"):
            bus.put(event)
    with pytest.raises(TypeError):
        bus.put(AttemptFinished(S, "fetch", 1, "2024-01-15T10:30:00+00:00"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- secrets


@pytest.fixture
def secrets(clients: Clients) -> KmsSecrets:
    clients.dynamodb.create_table(
        TableName="bunsui",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    key = clients.kms.create_key(Description="bunsui secrets")["KeyMetadata"]["KeyId"]
    return KmsSecrets(Settings(table="bunsui", kms_key=key), clients)


def test_secrets_merge_and_come_back(secrets: KmsSecrets) -> None:
    secrets.put(S, {"db_password": "hunter2"})
    secrets.put(S, {"api_token": "t0k3n", "db_password": "hunter3"})
    assert secrets.get(S) == {"db_password": "hunter3", "api_token": "t0k3n"}
    assert secrets.get("another-session") == {}


def test_nothing_is_in_the_clear_in_the_table(secrets: KmsSecrets, clients: Clients) -> None:
    secrets.put(S, {"db_password": "hunter2"})
    [item] = clients.dynamodb.scan(TableName="bunsui")["Items"]
    assert set(item) == {"pk", "sk", "ciphertext"}
    assert item["pk"] == {"S": f"SESSION#{S}"} and item["sk"] == {"S": "SECRETS"}
    assert b"hunter2" not in item["ciphertext"]["B"]
    assert "hunter2" not in json.dumps(item, default=repr)


def test_ciphertext_is_bound_to_its_session(secrets: KmsSecrets, clients: Clients) -> None:
    secrets.put(S, {"db_password": "hunter2"})
    [item] = clients.dynamodb.scan(TableName="bunsui")["Items"]
    copied = {**item, "pk": {"S": "SESSION#thief"}}
    clients.dynamodb.put_item(TableName="bunsui", Item=copied)
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        secrets.get("thief")


def test_too_many_secret_bytes_are_refused_before_anything_is_written(
    secrets: KmsSecrets, clients: Clients
) -> None:
    with pytest.raises(InputTooLarge, match="4096"):
        secrets.put(S, {"blob": "x" * 5000})
    assert clients.dynamodb.scan(TableName="bunsui")["Items"] == []


def test_secrets_throttling_is_retriable(secrets: KmsSecrets, clients: Clients) -> None:
    with Stubber(clients.dynamodb) as stub:
        stub.add_client_error(
            "get_item", "ProvisionedThroughputExceededException", "Rate exceeded", 400
        )
        with pytest.raises(Throttled):
            secrets.get(S)
