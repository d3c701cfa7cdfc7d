"""Faults from the services, through the real Lambda handlers on moto: each is handled as
documented, and none makes the reducer fail in a loop.

What is documented (handlers/reducer.py, engine/aws/dispatch.py, engine/aws/service.py,
engine/aws/correlate.py, docs/architecture.md):

- DynamoDB throttling is raised: the invocation fails, Lambda tries the event again
  (EventInvokeConfig's retries), then sends it to the reducer's dead-letter queue; the
  sweeper drives on what a write throttled half-way through an event left;
- a start the service throttles or refuses (TooManyRequests, AccessDenied,
  InvalidParameter, ResourceNotFound, a RunTask that starts no task) fails the attempt,
  with one line naming the service, the call and the error; the job's retries apply;
- a completion that never comes: the job's timeout stops the work where the service
  allows it and fails the attempt; a late completion changes nothing;
- an event for a session that does not exist, or has ended, and a malformed event are
  acknowledged with a log line, never raised (raising would only bring them back).

AWS errors are raised where botocore hands them to Bunsui, after its own retries
(:func:`~tests.reliability.faults.refusing`); moto produces none of these faults.
``BUNSUI_FAULT_EXAMPLES`` sets how many mutated events the property test tries (50).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.aws.dispatch import execution_arn, execution_name, started_by
from engine.state import JobStatus, SessionStatus
from handlers import start
from tests.reliability.faults import (
    CLUSTER,
    STATE_MACHINE,
    T0,
    TASK_DEFINITION,
    Flow,
    LambdaContext,
    Stack,
    Started,
    answering,
    completion,
    dynamodb_writes,
    invoke_async,
    log_lines,
    moto_account,
    reducer_delivery,
    refusing,
    sample,
    stack,
)

__all__ = ["log_lines", "moto_account", "stack"]

LAMBDA_RETRIES, RULE_RETRIES = reducer_delivery()
EXAMPLES = int(os.environ.get("BUNSUI_FAULT_EXAMPLES", "50"))
PARAMETERS = {
    "lambda": "{function_name: work, payload: {}}",
    "ecs": f"{{task_definition: '{TASK_DEFINITION}', cluster: jobs, container_name: main}}",
    "step_function": f"{{state_machine_arn: '{STATE_MACHINE}', input: {{}}}}",
}
START_CALLS = {
    "lambda": ("lambda_", "Invoke"),
    "ecs": ("ecs", "RunTask"),
    "step_function": ("stepfunctions", "StartExecution"),
}
LogLines = Callable[[], list[dict[str, Any]]]


def pipeline(a: str = "lambda", b: str | None = "ecs", limits: str = "retries: 1") -> str:
    """``a`` (then ``b``), each with ``limits`` and a 5 s retry delay."""
    lines = ['version: "1.1"', "name: faults", "jobs:"]
    lines.append(f"  - {{id: a, type: {a}, {limits}, retry_delay: 5, parameters: {PARAMETERS[a]}}}")
    if b is not None:
        lines.append(
            f"  - {{id: b, type: {b}, depends_on: [a], {limits}, retry_delay: 5, "
            f"parameters: {PARAMETERS[b]}}}"
        )
    return "\n".join(lines) + "\n"


def sort_key_is(sk: str) -> Callable[[dict[str, Any]], bool]:
    return lambda params: params.get("Key", {}).get("sk", {}).get("S") == sk


def messages(lines: list[dict[str, Any]]) -> list[str]:
    return [line.get("message", "") for line in lines]


# ---------------------------------------------------------------------- the template


def test_the_template_retries_a_failed_reducer_then_dead_letters_the_event():
    """What the tests below assume of delivery: a function error is tried again twice by
    Lambda, then the event goes to the reducer's dead-letter queue."""
    assert (LAMBDA_RETRIES, RULE_RETRIES) == (2, 185)


# ---------------------------------------------------------------------- DynamoDB throttling


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ThrottlingException"])
def test_dynamodb_throttling_is_raised_and_the_retry_handles_the_event(stack: Stack, code: str):
    flow = Flow(stack, pipeline())
    started = flow.create()
    with (
        refusing(stack.clients.dynamodb, "GetItem", code, times=1) as refused,
        dynamodb_writes(stack.clients.dynamodb) as writes,
    ):
        invocation = invoke_async(flow.deliver, started, LAMBDA_RETRIES)
    assert len(refused) == 1
    [error] = invocation.errors
    assert isinstance(error, ClientError) and error.response["Error"]["Code"] == code
    assert invocation.reply == {"handled": True, "session_id": flow.session_id, "key": None}
    assert flow.starts() == [("a", 1)]  # the first try wrote nothing, started nothing
    assert writes == ["UpdateItem"]  # the claim, by the second try
    assert flow.run() is SessionStatus.SUCCEEDED


def test_dynamodb_throttling_that_lasts_dead_letters_the_event_and_the_sweeper_starts_it(
    stack: Stack,
):
    flow = Flow(stack, pipeline())
    started = flow.create()
    with (
        refusing(stack.clients.dynamodb, "GetItem", "ThrottlingException") as refused,
        dynamodb_writes(stack.clients.dynamodb) as writes,
    ):
        invocation = invoke_async(flow.deliver, started, LAMBDA_RETRIES)
    assert invocation.dead_lettered and len(invocation.errors) == len(refused) == 3
    assert writes == [] and flow.starts() == []
    reply = flow.sweep()  # Session Started was lost: the roots start once the grace passed
    assert reply == {"looked_at": 1, "repaired": 1, "failed": 0}
    assert flow.run() is SessionStatus.SUCCEEDED
    assert flow.starts() == [("a", 1), ("b", 1)]


def test_a_write_throttled_half_way_through_an_event_is_finished_by_the_sweeper(stack: Stack):
    """a's end is written, then counting the edge a -> b is throttled: the handler raises;
    the event's retries find a ended and do nothing more; the sweeper counts the edge."""
    flow = Flow(stack, pipeline())
    flow.start()
    finished = flow.next_event()
    with refusing(
        stack.clients.dynamodb, "UpdateItem", "ThrottlingException", when=sort_key_is("RUN#b#-")
    ) as refused:
        invocation = invoke_async(flow.deliver, finished, LAMBDA_RETRIES)
    assert len(refused) == 1 and len(invocation.errors) == 1
    assert invocation.reply is not None and invocation.reply["handled"] is True
    assert flow.run_of("a").status is JobStatus.SUCCEEDED
    assert flow.stack.engine.store.get_run(flow.session_id, "b") is None
    assert flow.run() is SessionStatus.RUNNING  # nothing more moves it
    assert flow.sweep() == {"looked_at": 1, "repaired": 1, "failed": 0}
    assert flow.run() is SessionStatus.SUCCEEDED
    assert flow.starts() == [("a", 1), ("b", 1)]
    session = flow.session()
    assert (session.finished, session.failed) == (2, 0)


def test_a_sweep_throttled_on_one_session_is_logged_and_the_sweeper_returns(
    stack: Stack, log_lines: LogLines
):
    flow = Flow(stack, pipeline())
    flow.start()
    with refusing(stack.clients.dynamodb, "GetItem", "ProvisionedThroughputExceededException"):
        reply = flow.sweep()
    assert reply == {"looked_at": 1, "repaired": 0, "failed": 1}
    [failed] = [line for line in log_lines() if line.get("message") == "sweep failed"]
    assert failed["session_id"] == flow.session_id
    assert "ProvisionedThroughputExceededException" in failed["error"]


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_sweep_whose_listing_is_throttled_raises_for_the_next_schedule(stack: Stack):
    Flow(stack, pipeline()).start()
    with (
        refusing(stack.clients.dynamodb, "Query", "ThrottlingException"),
        pytest.raises(ClientError, match="ThrottlingException"),
    ):
        stack.sweep()


# ---------------------------------------------------------------------- starting work


@pytest.mark.parametrize(
    ("job_type", "code"),
    [("lambda", "TooManyRequestsException"), ("ecs", "ThrottlingException")],
)
def test_a_throttled_start_fails_the_attempt_and_its_retry_starts_it(
    stack: Stack, job_type: str, code: str
):
    """Throttling after the claim is not raised: the event's retry would find the attempt
    claimed and start nothing. The attempt fails, and the job's retry starts the work."""
    flow = Flow(stack, pipeline(a=job_type, b=None))
    name, operation = START_CALLS[job_type]
    with refusing(getattr(stack.clients, name), operation, code, times=1, status=429):
        reply = flow.start()
    assert reply["handled"] is True
    run = flow.run_of("a")
    assert run.status is JobStatus.RETRYING
    assert run.error == (
        f"job 'a': {name.rstrip('_')} {operation} was throttled ({code}: refused) "
        "(the service was busy; the attempt failed)"
    )
    assert stack.timers.kept  # the retry's timer
    assert flow.run() is SessionStatus.SUCCEEDED
    assert flow.starts() == [("a", 2)]


@pytest.mark.parametrize(
    ("job_type", "code"),
    [
        ("ecs", "AccessDeniedException"),
        ("ecs", "InvalidParameterException"),
        ("lambda", "ResourceNotFoundException"),
        ("step_function", "StateMachineDoesNotExist"),
    ],
)
def test_a_refused_start_fails_the_attempt_and_not_the_handler(
    stack: Stack, job_type: str, code: str
):
    flow = Flow(stack, pipeline(a=job_type))
    name, operation = START_CALLS[job_type]
    with refusing(getattr(stack.clients, name), operation, code) as refused:
        first = flow.start()
        assert first["handled"] is True
        line = f"job 'a': {name.rstrip('_')} {operation} failed: {code}: refused"
        assert flow.run_of("a").status is JobStatus.RETRYING
        assert flow.run_of("a").error == line
        assert flow.run() is SessionStatus.FAILED  # the retry is refused too
    assert len(refused) == 2 and flow.starts() == []
    assert flow.run_of("a").error == line
    assert flow.run_of("b").status is JobStatus.UPSTREAM_FAILED
    assert all(reply["handled"] is True for reply in flow.replies)


def test_a_run_task_that_starts_no_task_fails_the_attempt(stack: Stack):
    flow = Flow(stack, pipeline(a="ecs", b=None, limits="retries: 0"))
    failure = {"tasks": [], "failures": [{"reason": "RESOURCE:MEMORY", "arn": "x"}]}
    with answering(stack.clients.ecs, "RunTask", failure):
        assert flow.start()["handled"] is True
    assert flow.session().status is SessionStatus.FAILED
    assert flow.run_of("a").error == "job 'a': ecs RunTask started no task: RESOURCE:MEMORY"


# ---------------------------------------------------------------------- a completion lost


@pytest.mark.parametrize("job_type", ["lambda", "ecs", "step_function"])
def test_a_completion_that_never_comes_ends_the_attempt_at_its_timeout(stack: Stack, job_type: str):
    flow = Flow(stack, pipeline(a=job_type, b=None, limits="timeout: 60, retries: 1"))
    flow.start()
    [first] = stack.services.started
    late = flow.completions.pop()  # the completion never comes
    assert flow.step()  # the only thing left: the attempt's timeout
    run = flow.run_of("a")
    assert (run.status, run.error) == (JobStatus.RETRYING, "timed out after 60s")
    stopped = stack.services.stopped
    if job_type == "ecs":
        task = {"cluster": "jobs", "task": f"{CLUSTER}/task/{first.token}"}
        assert stopped == [("StopTask", task | {"reason": "stopped by Bunsui"})]
        assert first.request["startedBy"] == started_by(first.dispatch_id)
    elif job_type == "step_function":
        arn = execution_arn(STATE_MACHINE, execution_name(first.dispatch_id))
        assert stopped == [
            (
                "StopExecution",
                {"executionArn": arn, "error": "Bunsui.Stopped", "cause": "stopped by Bunsui"},
            )
        ]
    else:
        assert stopped == []  # a Lambda invocation cannot be stopped
    assert flow.run() is SessionStatus.SUCCEEDED
    assert flow.starts() == [("a", 1), ("a", 2)]
    with dynamodb_writes(stack.clients.dynamodb) as writes:
        late["time"] = "2026-03-01T13:00:00Z"
        reply = flow.deliver(late)  # attempt 1's result, after all
    assert reply.get("handled") is not None and writes == []
    assert flow.run_of("a").attempt == 2 and flow.session().status is SessionStatus.SUCCEEDED


# ---------------------------------------------------------------------- not for a live session


def _completion_of(dispatch_id: str) -> dict[str, Any]:
    payload = json.dumps({"bunsui": {"dispatch_id": dispatch_id}})
    return completion(Started("lambda", {"Payload": payload}, dispatch_id, None), T0, ok=True)


def test_a_completion_for_an_unknown_session_is_ignored_with_a_log_line(
    stack: Stack, log_lines: LogLines
):
    with dynamodb_writes(stack.clients.dynamodb) as writes:
        reply = stack.reduce(_completion_of("20260301-000000000000/a/1"))
    assert reply == {"handled": False, "ignored": "no such session"}
    assert writes == []
    [line] = [line for line in log_lines() if line.get("message") == "event ignored"]
    assert line["reason"] == "no such session" and line["session_id"] == "20260301-000000000000"


def test_a_completion_for_a_finished_session_is_ignored_with_a_log_line(
    stack: Stack, log_lines: LogLines
):
    flow = Flow(stack, pipeline(b=None))
    flow.start()
    [first] = stack.services.started
    done = completion(first, stack.now, ok=True)
    flow.deliver(copy.deepcopy(done))
    assert flow.session().status is SessionStatus.SUCCEEDED
    before = (flow.session(), flow.runs())
    seen = len(log_lines())
    with dynamodb_writes(stack.clients.dynamodb) as writes:
        again = stack.reduce(copy.deepcopy(done))
        other = stack.reduce(_completion_of(f"{flow.session_id}/a/2"))
    assert writes == [] and (flow.session(), flow.runs()) == before
    logged = [line for line in log_lines()[seen:] if line.get("session_id") == flow.session_id]
    assert len(logged) == 2
    # Documented (Handled.ignored: "why nothing was done ... a duplicate"), not done: the
    # reply and the log say "handled" for an event that changed nothing.
    assert again["handled"] is False and other["handled"] is False, (again, other)
    assert messages(logged) == ["event ignored", "event ignored"]


# ---------------------------------------------------------------------- malformed events


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    where = changed
    for step in path[:-1]:
        where = where[step]
    del where[path[-1]]
    return changed


def _with(event: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    where = changed
    for step in path[:-1]:
        where = where[step]
    where[path[-1]] = value
    return changed


STARTED = sample("bunsui-session-started.json")
RETRY_DUE = sample("bunsui-job-retry-due.json")
LAMBDA = sample("lambda-destination-success.json")
ECS = sample("ecs-task-stopped.json")
SFN = sample("sfn-execution-succeeded.json")
SHAPES: dict[str, Any] = {
    "a list": [STARTED],
    "a string": json.dumps(STARTED),
    "null": None,
    "a number": 7,
    "empty": {},
    "no detail-type": _without(STARTED, "detail-type"),
    "detail-type not a string": _with(STARTED, ["Session Started"], "detail-type"),
    "unknown detail-type": _with(STARTED, "Session Exploded", "detail-type"),
    "foreign source": _with(STARTED, "aws.s3", "source"),
    "no detail": _without(STARTED, "detail"),
    "detail not an object": _with(STARTED, "s-1", "detail"),
    "session id empty": _with(STARTED, "", "detail", "session_id"),
    "time not a time": _with(STARTED, "yesterday", "time"),
    "timer without attempt": _without(RETRY_DUE, "detail", "attempt"),
    "timer attempt 0": _with(RETRY_DUE, 0, "detail", "attempt"),
    "timer due not a time": _with(RETRY_DUE, "soon", "detail", "due"),
    "lambda result without payload": _without(LAMBDA, "detail", "requestPayload"),
    "lambda dispatch id not one": _with(
        LAMBDA, "s/a", "detail", "requestPayload", "bunsui", "dispatch_id"
    ),
    "lambda attempt 0": _with(LAMBDA, "s/a/0", "detail", "requestPayload", "bunsui", "dispatch_id"),
    "ecs without overrides": _without(ECS, "detail", "overrides"),
    "ecs still running": _with(ECS, "RUNNING", "detail", "lastStatus"),
    "sfn input not JSON": _with(SFN, "{not json", "detail", "input"),
    "sfn output not JSON": _with(SFN, "{not json", "detail", "output"),
    "retry request without session": {
        **_without(STARTED, "detail"),
        "detail-type": "Session Retry Requested",
        "detail": {},
    },
}
DEPTH = 600
"""A detail nested this deep: the Lambda runtime parses events (json.loads) nested up to
Python's recursion limit (1000), so a deeper one never reaches the handler."""
MALFORMED = {name: json.dumps(shape) for name, shape in SHAPES.items()}
MALFORMED["deeply nested detail"] = json.dumps(_with(STARTED, "*", "detail", "extra")).replace(
    '"*"', '{"x": ' * DEPTH + "{}" + "}" * DEPTH
)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_event_is_acknowledged_with_a_log_line(
    stack: Stack, log_lines: LogLines, name: str
):
    with dynamodb_writes(stack.clients.dynamodb) as writes:
        reply = stack.reduce(json.loads(MALFORMED[name]))
    assert reply["handled"] is False and reply["ignored"], reply
    assert writes == [] and stack.services.started == []
    assert set(messages(log_lines())) & {"event ignored", "not an EventBridge event: acknowledged"}


REDUCER_SAMPLES = [
    sample(name)
    for name in (
        "bunsui-session-started.json",
        "bunsui-job-retry-due.json",
        "bunsui-job-timed-out.json",
        "bunsui-cancel-requested.json",
        "lambda-destination-success.json",
        "lambda-destination-failure.json",
        "ecs-task-stopped.json",
        "sfn-execution-succeeded.json",
        "sfn-execution-failed.json",
        "batch-job-succeeded.json",
        "emr-step-completed.json",
    )
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_events(draw: st.DrawFn) -> Any:
    """A sample event of a session that does not exist, with fields of its detail (or, one
    time in five, of its envelope) dropped or replaced by any JSON value."""
    event = copy.deepcopy(draw(st.sampled_from(REDUCER_SAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        where: Any = event if draw(st.integers(0, 4)) == 0 else event["detail"]
        while draw(st.booleans()):
            inner = [k for k, v in where.items() if isinstance(v, dict) and v]
            if not inner:
                break
            where = where[draw(st.sampled_from(sorted(inner)))]
        if not where:
            continue
        key = draw(st.sampled_from(sorted(where)))
        if draw(st.booleans()):
            del where[key]
        else:
            where[key] = draw(JSON)
    return event


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event=mutated_events())
def test_no_mutated_event_makes_the_reducer_fail(stack: Stack, event: Any):
    """Every reply is an acknowledgement: the event is malformed, or about a session that
    does not exist; nothing is written, nothing started, nothing raised."""
    with dynamodb_writes(stack.clients.dynamodb) as writes:
        reply = stack.reduce(event)
    assert reply["handled"] is False and reply["ignored"]
    assert writes == [] and stack.services.started == []


# ---------------------------------------------------------------------- start and sweeper


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"pipeline": 3},
        {"pipeline": "faults", "parameters": "not an object"},
        {"pipeline": "no such pipeline"},
        [1],
    ],
    ids=["empty", "pipeline not a name", "parameters not an object", "unknown pipeline", "list"],
)
def test_a_start_that_cannot_succeed_is_logged_and_not_retried(
    stack: Stack, log_lines: LogLines, event: Any
):
    Flow(stack, pipeline())
    reply = start.handler(event, LambdaContext())
    assert reply["started"] is False and reply["error"]
    assert [line["level"] for line in log_lines() if line.get("level") == "ERROR"] == ["ERROR"]
    assert stack.engine.sessions() == []


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_start_throttled_is_raised_for_scheduler_to_try_again(stack: Stack):
    Flow(stack, pipeline())
    event = {"pipeline": "faults", "schedule": "nightly", "scheduled_time": "2026-03-01T02:00:00Z"}
    with (
        refusing(stack.clients.dynamodb, "GetItem", "ThrottlingException", times=1),
        pytest.raises(ClientError, match="ThrottlingException"),
    ):
        start.handler(copy.deepcopy(event), LambdaContext())
    assert start.handler(copy.deepcopy(event), LambdaContext())["started"] is True
    assert len(stack.engine.sessions()) == 1


def test_a_malformed_sweep_event_sweeps_with_the_defaults(stack: Stack, log_lines: LogLines):
    flow = Flow(stack, pipeline())
    flow.create()  # its start is lost
    stack.tick(1000)
    assert stack.sweep({"limit": "many", "grace_seconds": -1}) == {
        "looked_at": 1,
        "repaired": 1,
        "failed": 0,
    }
    assert "sweep event not understood: defaults used" in messages(log_lines())
    assert flow.starts() == [("a", 1)]
