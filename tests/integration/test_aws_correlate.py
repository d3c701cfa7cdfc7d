"""Correlation: every sample event in events/ read into its engine event, against moto.

The samples are EventBridge envelopes as the services document them; the
Glue samples' run ids are swapped for runs Bunsui started on moto (a Glue
event names only the run). Round trips check that what the dispatcher
starts is what the correlation finds again, and a property test feeds
mutilated envelopes: only None or engine events may come out.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from engine.aws.correlate import (
    MAX_OUTPUT_BYTES,
    CorrelationFailed,
    Correlator,
    Ignored,
    engine_event,
    parse_dispatch_id,
)
from engine.aws.dispatch import AwsDispatcher, Throttled, execution_arn, execution_name
from engine.aws.settings import Clients, Settings
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
from engine.ports import Dispatch

EVENTS = Path(__file__).resolve().parents[2] / "events"
SERVICES = ("lambda-", "ecs-", "sfn-", "glue-", "batch-", "emr-", "bunsui-")
"""The samples of bus events (events/ holds other handlers' fixtures too)."""
SAMPLES = sorted(p.stem for p in EVENTS.glob("*.json") if p.stem.startswith(SERVICES))
S, S2 = "20240115-5d1c9b2e7a40", "20240116-0a9b8c7d6e5f"
BUCKET = "bunsui-outputs-123456789012"
SETTINGS = Settings(table="bunsui", output_bucket=BUCKET)
ECS_TASK = "arn:aws:ecs:us-east-1:123456789012:task/bunsui-jobs/8f0c7e4a9b2d4e61a3c5f7d9e1b3a5c7"
BATCH_JOB = "arn:aws:batch:us-east-1:123456789012:job/"


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text(encoding="utf-8"))


def finished(session: str, key: str, attempt: int, now: str, **rest: Any) -> AttemptFinished:
    return AttemptFinished(session, key, attempt, now, **rest)


EXPECTED: dict[str, Any] = {
    "lambda-destination-success": finished(
        S,
        "fetch",
        1,
        "2024-01-15T10:31:02+00:00",
        result={"rows": 1204, "path": "s3://data-bucket/orders/2024-01-14.parquet"},
        handle="c2a6f2ae-7dbb-4d22-8782-d0485c9877e2",
    ),
    "lambda-destination-failure": finished(
        S,
        "fetch",
        2,
        "2024-01-15T10:36:40+00:00",
        error="ValueError: no orders for 2024-01-14",
        handle="e4b46cbf-b738-500f-bb5a-4b1d7e8a3c01",
    ),
    "ecs-task-stopped": finished(
        S, "train", 1, "2024-01-15T10:44:20+00:00", result={"auc": 0.93}, handle=ECS_TASK
    ),
    "ecs-task-failed-to-start": finished(
        S,
        "train",
        2,
        "2024-01-15T10:52:31+00:00",
        error="task stopped (TaskFailedToStart: CannotPullContainerError: pull image manifest "
        "has been retried 5 time(s): failed to resolve ref "
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1.5: not found)",
        handle=ECS_TASK.replace(
            "8f0c7e4a9b2d4e61a3c5f7d9e1b3a5c7", "1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6"
        ),
    ),
    "sfn-execution-succeeded": finished(
        S,
        "evaluate",
        1,
        "2024-01-15T11:02:21+00:00",
        result={"accuracy": 0.91, "passed": True},
        handle=execution_arn(
            "arn:aws:states:us-east-1:123456789012:stateMachine:evaluate-model",
            execution_name(f"{S}/evaluate/1"),
        ),
    ),
    "sfn-execution-failed": finished(
        S,
        "evaluate",
        2,
        "2024-01-15T11:20:05+00:00",
        error="execution FAILED: States.TaskFailed: accuracy 0.79 is below the threshold 0.85",
        handle=execution_arn(
            "arn:aws:states:us-east-1:123456789012:stateMachine:evaluate-model",
            execution_name(f"{S}/evaluate/2"),
        ),
    ),
    "glue-job-succeeded": finished(
        S, "prepare", 1, "2024-01-15T11:40:12+00:00", result={"features": 42}, handle="<run 1>"
    ),
    "glue-job-failed": finished(
        S,
        "prepare",
        2,
        "2024-01-15T11:58:47+00:00",
        error="Glue job run FAILED: AnalysisException: Path does not exist: "
        "s3://data-bucket/features/2024-01-14",
        handle="<run 2>",
    ),
    "batch-job-succeeded": finished(
        S2,
        "score[0]",
        1,
        "2024-01-16T11:41:52+00:00",
        result={"scored": 5000},
        handle=BATCH_JOB + "26242c7e-3d49-4e41-9387-74fcaf9630bb",
    ),
    "batch-job-failed": finished(
        S2,
        "score[2]",
        1,
        "2024-01-16T11:41:37+00:00",
        error="Batch job FAILED: Essential container in task exited: exit code 3",
        handle=BATCH_JOB + "4c7599ae-0a82-49aa-ba5a-4727fcce14a8",
    ),
    "emr-step-completed": finished(
        S2,
        "aggregate",
        1,
        "2024-01-16T12:20:09+00:00",
        result={"rows": 77},
        handle="j-1YONHTCP3YZKC/s-2PZOH669N5LUO",
    ),
    "emr-step-failed": finished(
        S2,
        "aggregate",
        2,
        "2024-01-16T12:53:09+00:00",
        error="EMR step FAILED: Step s-36ZWOFMZ19IUZ (bunsui:20240116-0a9b8c7d6e5f/aggregate/2 "
        "aggregate-orders) in Amazon EMR cluster j-1YONHTCP3YZKC (analytics) failed at "
        "2024-01-16 12:53 UTC.",
        handle="j-1YONHTCP3YZKC/s-36ZWOFMZ19IUZ",
    ),
    "bunsui-session-started": SessionStarted(S, "2024-01-15T10:30:58+00:00"),
    "bunsui-job-retry-due": RetryDue(S, "fetch", 1, "2024-01-15T10:33:02+00:00"),
    "bunsui-job-timed-out": AttemptTimedOut(S, "train", 1, "2024-01-15T12:31:01.873000+00:00"),
    "bunsui-session-timed-out": SessionTimedOut(S, "2024-01-15T16:30:58+00:00"),
    "bunsui-cancel-requested": CancelRequested(S, "2024-01-15T10:40:00+00:00", "wrong input data"),
    "bunsui-pause-requested": PauseRequested(S, "2024-01-15T10:35:00+00:00"),
    "bunsui-resume-requested": ResumeRequested(S, "2024-01-15T10:38:00+00:00"),
    "bunsui-session-completed": None,  # for users' own rules, not the reducer
}


@contextmanager
def _aws() -> Iterator[Clients]:
    """moto for everything, with a fake region and keys."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            yield Clients()


@pytest.fixture
def clients() -> Iterator[Clients]:
    with _aws() as made:
        yield made


def _glue_order(attempt: int) -> Dispatch:
    inputs = {"job_name": "prepare-features"}
    return Dispatch(
        S, "prepare", "prepare", "glue", attempt, inputs, None, f"{S}/prepare/{attempt}"
    )


def _build_world(clients: Clients) -> dict[str, str]:
    """Outputs in S3, and Glue runs started by Bunsui: the sample name -> its run id."""
    clients.s3.create_bucket(Bucket=BUCKET)
    outputs = {
        f"outputs/{S}/train/1.json": {"auc": 0.93},
        f"outputs/{S}/prepare/1.json": {"features": 42},
        f"outputs/{S2}/score[0]/1.json": {"scored": 5000},
        f"outputs/{S2}/aggregate/1.json": {"rows": 77},
    }
    for key, value in outputs.items():
        clients.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(value).encode())
    clients.glue.create_job(
        Name="prepare-features", Role="r", Command={"Name": "glueetl", "ScriptLocation": "s3://x"}
    )
    dispatcher = AwsDispatcher(SETTINGS, clients)
    runs = {}
    for attempt, sample in ((1, "glue-job-succeeded"), (2, "glue-job-failed")):
        dispatcher.dispatch(_glue_order(attempt))
        listed = clients.glue.get_job_runs(JobName="prepare-features")["JobRuns"]
        runs[sample] = next(
            r["Id"]
            for r in listed
            if r["Arguments"]["--bunsui-dispatch-id"] == f"{S}/prepare/{attempt}"
        )
    return runs


@pytest.fixture
def world(clients: Clients) -> dict[str, str]:
    return _build_world(clients)


@pytest.fixture
def correlator(clients: Clients) -> Correlator:
    return Correlator(clients, SETTINGS)


def test_every_sample_has_an_expectation() -> None:
    assert set(SAMPLES) == set(EXPECTED), "add the new sample's engine event to EXPECTED"


@pytest.fixture(scope="class")
def shared() -> Iterator[tuple[Correlator, dict[str, str]]]:
    """One world for a class of tests that only read it (moto's models load once)."""
    with _aws() as made:
        yield Correlator(made, SETTINGS), _build_world(made)


class TestSamples:
    """Each sample in events/ reads into its engine event."""

    @pytest.mark.parametrize("sample", SAMPLES)
    def test_sample_event_reads_into_its_engine_event(
        self, sample: str, shared: tuple[Correlator, dict[str, str]]
    ) -> None:
        correlator, runs = shared
        raw = load(sample)
        expected = EXPECTED[sample]
        if sample in runs:
            raw["detail"]["jobRunId"] = runs[sample]
            expected = replace(expected, handle=runs[sample])
        assert correlator.engine_event(raw) == expected


# ---------------------------------------------------------------- dispatch ids


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("s1/train/1", ("s1", "train", 1)),
        ("20240115-5d1c/score[12]/37", ("20240115-5d1c", "score[12]", 37)),
    ],
)
def test_parse_dispatch_id(text: str, parts: tuple[str, str, int]) -> None:
    assert parse_dispatch_id(text) == parts


@pytest.mark.parametrize(
    "text", ["", "s/k", "s/k/0", "s/k/01", "s/k/x", "s/k/1/2", "/k/1", "s//1", "s /k/1", "s/k/-1"]
)
def test_parse_dispatch_id_is_strict(text: str) -> None:
    with pytest.raises(ValueError, match="not a dispatch id"):
        parse_dispatch_id(text)


# ---------------------------------------------------------------- lambda


def test_lambda_dropped_before_running_fails_with_the_condition(correlator: Correlator) -> None:
    raw = load("lambda-destination-failure")
    raw["detail"]["requestContext"]["condition"] = "EventAgeExceeded"
    del raw["detail"]["responseContext"], raw["detail"]["responsePayload"]
    event = correlator.engine_event(raw)
    assert isinstance(event, AttemptFinished)
    assert "maximum event age" in (event.error or "")


def test_lambda_without_our_identity_is_not_ours(
    correlator: Correlator, caplog: pytest.LogCaptureFixture
) -> None:
    raw = load("lambda-destination-success")
    raw["detail"]["requestPayload"] = {"day": "2024-01-14"}
    with caplog.at_level(logging.INFO, logger="engine.aws.correlate"):
        assert correlator.engine_event(raw) is None
    assert "no Bunsui dispatch id" in caplog.text


# ---------------------------------------------------------------- ecs


def _stopped_task(*containers: dict[str, Any]) -> dict[str, Any]:
    raw = load("ecs-task-stopped")
    raw["detail"]["containers"] = list(containers)
    return raw


def test_ecs_essential_exit_code_fails_and_sidecars_do_not(
    clients: Clients, world: dict[str, str], correlator: Correlator
) -> None:
    for _ in range(3):  # the sample's task definition is revision 3
        clients.ecs.register_task_definition(
            family="bunsui-train",
            containerDefinitions=[
                {"name": "train", "image": "train:1", "memory": 256, "essential": True},
                {"name": "log-router", "image": "fb:1", "memory": 64, "essential": False},
            ],
        )
    sidecar_failed = _stopped_task(
        {"name": "train", "exitCode": 0}, {"name": "log-router", "exitCode": 1}
    )
    assert correlator.engine_event(sidecar_failed).result == {"auc": 0.93}  # type: ignore[union-attr]
    job_failed = _stopped_task(
        {"name": "train", "exitCode": 2, "reason": "OutOfMemoryError: Container killed"},
        {"name": "log-router", "exitCode": 0},
    )
    event = correlator.engine_event(job_failed)
    assert isinstance(event, AttemptFinished) and event.result is None
    assert event.error == "container 'train' exited with code 2: OutOfMemoryError: Container killed"


def test_ecs_without_a_readable_task_definition_judges_the_job_container(
    world: dict[str, str], correlator: Correlator
) -> None:
    raw = _stopped_task({"name": "train", "exitCode": 137}, {"name": "other", "exitCode": 0})
    event = correlator.engine_event(raw)
    assert isinstance(event, AttemptFinished)
    assert event.error == "container 'train' exited with code 137"


def test_ecs_output_missing_is_empty_and_invalid_is_an_error_naming_it(
    clients: Clients, world: dict[str, str], correlator: Correlator
) -> None:
    uri = f"s3://{BUCKET}/outputs/{S}/train/1.json"
    clients.s3.delete_object(Bucket=BUCKET, Key=f"outputs/{S}/train/1.json")
    event = correlator.engine_event(load("ecs-task-stopped"))
    assert isinstance(event, AttemptFinished) and (event.result, event.error) == (None, None)
    clients.s3.put_object(Bucket=BUCKET, Key=f"outputs/{S}/train/1.json", Body=b"{not json")
    event = correlator.engine_event(load("ecs-task-stopped"))
    assert isinstance(event, AttemptFinished) and event.result is None
    assert event.error is not None and uri in event.error and "not valid JSON" in event.error
    clients.s3.put_object(
        Bucket=BUCKET, Key=f"outputs/{S}/train/1.json", Body=b" " * (MAX_OUTPUT_BYTES + 1)
    )
    event = correlator.engine_event(load("ecs-task-stopped"))
    assert isinstance(event, AttemptFinished) and "at most" in (event.error or "")


def test_ecs_output_bucket_refusal_is_an_error_and_throttling_escapes(
    clients: Clients, correlator: Correlator
) -> None:
    with Stubber(clients.s3) as stub:
        stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403)
        event = correlator.engine_event(load("ecs-task-stopped"))
        assert isinstance(event, AttemptFinished)
        assert event.error == (
            f"cannot read the job's output s3://{BUCKET}/outputs/{S}/train/1.json: "
            "AccessDenied: Access Denied"
        )
        stub.add_client_error("get_object", "SlowDown", "Please reduce your request rate", 503)
        with pytest.raises(Throttled):
            correlator.engine_event(load("ecs-task-stopped"))


def test_ecs_task_not_yet_stopped_is_ignored(correlator: Correlator) -> None:
    raw = load("ecs-task-stopped")
    raw["detail"]["lastStatus"] = "RUNNING"
    found = correlator.read(raw)
    assert isinstance(found, Ignored) and "not STOPPED" in found.reason


# ---------------------------------------------------------------- step functions


def test_sfn_input_left_out_of_the_event_is_described(
    clients: Clients, correlator: Correlator
) -> None:
    machine = clients.stepfunctions.create_state_machine(
        name="evaluate-model",
        definition=json.dumps({"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]
    did = f"{S}/evaluate/2"
    order = Dispatch(
        S, "evaluate", "evaluate", "step_function", 2, {"state_machine_arn": machine}, None, did
    )
    AwsDispatcher(SETTINGS, clients).dispatch(order)
    raw = load("sfn-execution-failed")
    raw["detail"]["executionArn"] = execution_arn(machine, execution_name(did))
    raw["detail"]["input"] = None
    raw["detail"]["inputDetails"] = {"included": False}
    event = correlator.engine_event(raw)
    assert isinstance(event, AttemptFinished)
    assert (event.session_id, event.key, event.attempt) == (S, "evaluate", 2)
    raw["detail"]["executionArn"] = execution_arn(machine, "someone-else")
    assert correlator.engine_event(raw) is None


# ---------------------------------------------------------------- glue


def test_glue_lookup_refused_escapes_as_correlation_failed(
    clients: Clients, correlator: Correlator
) -> None:
    with Stubber(clients.glue) as stub:
        stub.add_client_error("get_job_run", "AccessDeniedException", "not authorized", 400)
        with pytest.raises(CorrelationFailed, match="glue GetJobRun"):
            correlator.read(load("glue-job-succeeded"))


def test_glue_run_not_started_by_bunsui_is_ignored(
    clients: Clients, correlator: Correlator
) -> None:
    clients.glue.create_job(
        Name="prepare-features", Role="r", Command={"Name": "glueetl", "ScriptLocation": "s3://x"}
    )
    run = clients.glue.start_job_run(JobName="prepare-features")["JobRunId"]
    raw = load("glue-job-succeeded")
    raw["detail"]["jobRunId"] = run
    found = correlator.read(raw)
    assert isinstance(found, Ignored) and "not started by Bunsui" in found.reason


# ---------------------------------------------------------------- batch


def test_batch_child_of_an_array_job_is_left_to_its_parent(correlator: Correlator) -> None:
    raw = load("batch-job-failed")
    raw["detail"]["arrayProperties"] = {"index": 3, "size": 4}
    found = correlator.read(raw)
    assert isinstance(found, Ignored) and "child of an array job" in found.reason


def test_batch_dispatch_id_from_the_environment_when_tags_are_gone(
    world: dict[str, str], correlator: Correlator
) -> None:
    raw = load("batch-job-succeeded")
    raw["detail"]["tags"] = {}
    event = correlator.engine_event(raw)
    assert event == EXPECTED["batch-job-succeeded"]


# ---------------------------------------------------------------- round trips


def test_what_the_dispatcher_starts_the_correlation_finds(
    clients: Clients, world: dict[str, str]
) -> None:
    """Each start's request, as its service reports it back, leads to the same attempt."""
    dispatcher = AwsDispatcher(SETTINGS, clients)
    did = f"{S2}/score[7]/3"
    order = Dispatch(
        S2, "score[7]", "score", "batch", 3, {"job_definition": "d", "job_queue": "q"}, None, did
    )
    request = dispatcher.batch_request(order)
    raw = load("batch-job-succeeded")
    raw["detail"]["tags"] = request["tags"]
    raw["detail"]["container"]["environment"] = request["containerOverrides"]["environment"]
    event = Correlator(clients).engine_event(raw)
    assert isinstance(event, AttemptFinished)
    assert (event.session_id, event.key, event.attempt) == (S2, "score[7]", 3)

    ecs_order = Dispatch(
        S2, "train", "train", "ecs", 4, {"task_definition": "t"}, None, f"{S2}/train/4"
    )
    overrides = dispatcher.ecs_request(ecs_order, "main")["overrides"]
    raw = load("ecs-task-stopped")
    raw["detail"]["overrides"] = overrides
    raw["detail"]["containers"] = [{"name": "main", "exitCode": 0}]
    event = Correlator(clients).engine_event(raw)
    assert isinstance(event, AttemptFinished) and event.attempt == 4 and event.error is None

    emr_order = Dispatch(
        S2,
        "aggregate",
        "aggregate",
        "emr",
        5,
        {"cluster_id": "j-1", "step_config": {"args": ["x"]}},
        None,
        f"{S2}/aggregate/5",
    )
    raw = load("emr-step-failed")
    raw["detail"]["name"] = dispatcher.emr_request(emr_order)["Steps"][0]["Name"]
    event = Correlator(clients).engine_event(raw)
    assert isinstance(event, AttemptFinished) and (event.key, event.attempt) == ("aggregate", 5)


# ---------------------------------------------------------------- hostile input

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutilated(draw: st.DrawFn) -> Any:
    """A sample with a few of its values replaced or removed, or any JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_JSON)
    raw = load(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(raw)))
        if not path:
            continue
        parent = raw
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(_JSON)
    return raw


EVENT_TYPES = (
    AttemptFinished,
    SessionStarted,
    RetryDue,
    AttemptTimedOut,
    SessionTimedOut,
    CancelRequested,
    PauseRequested,
    ResumeRequested,
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=mutilated())
def test_mutilated_events_give_none_or_an_engine_event(raw: Any, clients: Clients) -> None:
    snapshot = copy.deepcopy(raw)
    found = engine_event(raw, clients, SETTINGS)
    assert found is None or isinstance(found, EVENT_TYPES)
    assert raw == snapshot  # the caller's event is not changed
