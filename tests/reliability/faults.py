"""Faults for the reliability suites: a reducer that dies at a chosen step, AWS answering
with the errors its services give, and a lean Bunsui stack on moto driven through the
Lambda handlers.

The stack is the one the functions assemble (DynamoDB store with its history left to the
stream, AwsDispatcher, the correlation of the services' events, Scheduler timers) with
three parts kept in-process: the job services (Invoke, RunTask, StartExecution and their
stops are answered by ``before-call`` hooks and recorded, as moto runs no container),
the timers (each CreateSchedule request is kept and later fired as Scheduler would put
it on the bus) and Bunsui's bus (each PutEvents entry is kept and delivered as
EventBridge would).
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from cfnlint.decode import decode_str
from moto import mock_aws

from engine.aws.bus import BunsuiBus
from engine.aws.service import AwsEngine
from engine.aws.settings import Clients, Settings
from engine.aws.store import DynamoStore
from engine.aws.table import create_table
from engine.aws.timers import SchedulerTimers
from engine.events import Event
from engine.scope import MemorySecrets
from engine.state import JobRun, Session, SessionStatus
from handlers import reducer, start, sweeper
from tests.conftest import ROOT

REGION = "us-east-1"
ACCOUNT = "123456789012"
EVENTS = ROOT / "events"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STATE_MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:crunch"
TASK_DEFINITION = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/work:1"
CLUSTER = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/jobs"
HANDLERS = (reducer, start, sweeper)

# One boto3 session for every stack: the services' models are loaded once. Made after moto
# is imported, so that its clients carry moto's hook.
BOTO = boto3.session.Session(region_name=REGION)
_tables = itertools.count()


class Crash(BaseException):
    """The reducer's process died (a Lambda timeout, an out-of-memory kill, ``kill -9``).

    A BaseException, so that no ``except Exception`` of the engine or of its handlers
    takes it for an error it could handle: the steps after it never run.
    """


# ---------------------------------------------------------------------- dying at a step


@dataclass(frozen=True)
class Trap:
    """Die at the first call of ``method`` that ``when`` picks: before the call is made,
    or just after it returned (its write is durable, nothing after it happened)."""

    method: str
    after: bool
    when: Callable[[tuple[Any, ...], dict[str, Any], Any], bool]


class Tripwire:
    """A store, dispatcher or timers whose armed :class:`Trap` raises :class:`Crash`, once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.trap: Trap | None = None
        self.fired: str | None = None

    def arm(self, trap: Trap) -> None:
        self.trap = trap

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        trap = self.trap
        if trap is None or trap.method != name:
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            if not trap.after and self.trap is trap and trap.when(args, kwargs, None):
                self._fire(name, "before")
            result = found(*args, **kwargs)
            if trap.after and self.trap is trap and trap.when(args, kwargs, result):
                self._fire(name, "after")
            return result

        return call

    def _fire(self, name: str, moment: str) -> None:
        self.trap = None
        self.fired = f"{moment} {name}"
        raise Crash(f"the reducer died {moment} {name}")


# ---------------------------------------------------------------------- AWS refusing


def client_error(code: str, operation: str, message: str = "refused", status: int = 400) -> Any:
    """The ClientError botocore raises for ``code`` (after its own retries, for throttling)."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@contextmanager
def refusing(
    client: Any,
    operation: str,
    code: str,
    *,
    times: int | None = None,
    when: Callable[[dict[str, Any]], bool] = lambda params: True,
    status: int = 400,
) -> Iterator[list[dict[str, Any]]]:
    """Make ``operation`` of ``client`` fail with ``code`` (``times`` times, or always while
    in the block) for the calls ``when`` picks; yields the parameters of each refused call.

    The error is raised where botocore would hand it to its caller, after its retries:
    what the engine sees once the client's own retry budget is spent.
    """
    refused: list[dict[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()
    event = f"before-parameter-build.{service}.{operation}"

    def refuse(params: dict[str, Any], **_: Any) -> None:
        if (times is None or len(refused) < times) and when(params):
            refused.append(copy.deepcopy(params))
            raise client_error(code, operation, status=status)

    client.meta.events.register_first(event, refuse)
    try:
        yield refused
    finally:
        client.meta.events.unregister(event, refuse)


@contextmanager
def answering(client: Any, operation: str, reply: dict[str, Any]) -> Iterator[None]:
    """Have ``operation`` of ``client`` answer ``reply`` while in the block."""
    service = client.meta.service_model.service_id.hyphenize()
    event = f"before-call.{service}.{operation}"

    def respond(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("", 200, {}, None), reply

    client.meta.events.register_first(event, respond)
    try:
        yield
    finally:
        client.meta.events.unregister(event, respond)


WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})


@contextmanager
def dynamodb_writes(client: Any) -> Iterator[list[str]]:
    """The DynamoDB write requests ``client`` sends while in the block (refused ones too)."""
    made: list[str] = []

    def note(model: Any, **_: Any) -> None:
        if model.name in WRITES:
            made.append(model.name)

    client.meta.events.register_first("before-parameter-build.dynamodb", note)
    try:
        yield made
    finally:
        client.meta.events.unregister("before-parameter-build.dynamodb", note)


@dataclass
class Invocation:
    """What Lambda's asynchronous invocation made of one event: the function's reply (None
    when every try failed), the errors of the tries that failed, and whether the event
    went to the on-failure destination (the dead-letter queue)."""

    reply: dict[str, Any] | None
    errors: list[BaseException]

    @property
    def dead_lettered(self) -> bool:
        return self.reply is None


def invoke_async(function: Callable[[Any], dict[str, Any]], event: Any, retries: int) -> Invocation:
    """Invoke as EventBridge's asynchronous invocation does: a function error is tried
    again ``retries`` times (EventInvokeConfig), then the event is dead-lettered."""
    errors: list[BaseException] = []
    for _ in range(1 + retries):
        try:
            return Invocation(function(copy.deepcopy(event)), errors)
        except Exception as exc:  # a function error, whatever its type
            errors.append(exc)
    return Invocation(None, errors)


# ---------------------------------------------------------------------- the services


@dataclass
class Started:
    """One start of work a service was asked for (Invoke, RunTask, StartExecution)."""

    job_type: str
    request: dict[str, Any]
    dispatch_id: str
    token: str | None

    @property
    def key(self) -> str:
        return self.dispatch_id.split("/")[1]

    @property
    def attempt(self) -> int:
        return int(self.dispatch_id.rsplit("/", 1)[1])


def _dispatch_id_of(job_type: str, params: Mapping[str, Any]) -> tuple[str, str | None]:
    """The dispatch id a start carries, and the idempotency token the service got."""
    if job_type == "lambda":
        return json.loads(params["Payload"])["bunsui"]["dispatch_id"], None
    if job_type == "ecs":
        environment = params["overrides"]["containerOverrides"][0]["environment"]
        found = {v["name"]: v["value"] for v in environment}
        return found["BUNSUI_DISPATCH_ID"], params["clientToken"]
    return json.loads(params["input"])["bunsui"]["dispatch_id"], params["name"]


class Services:
    """Lambda, ECS and Step Functions as a job sees them: every start and stop recorded,
    answered in-process (a RunTask that names its task, ListTasks that finds it)."""

    STARTS: ClassVar[dict[str, tuple[str, str]]] = {
        "lambda": ("lambda_", "Invoke"),
        "ecs": ("ecs", "RunTask"),
        "step_function": ("stepfunctions", "StartExecution"),
    }

    def __init__(self, clients: Clients) -> None:
        self.started: list[Started] = []
        self.stopped: list[tuple[str, dict[str, Any]]] = []
        for job_type, (name, operation) in self.STARTS.items():
            self._answer(getattr(clients, name), operation, self._starting(job_type))
        self._answer(clients.ecs, "ListTasks", self._tasks)
        self._answer(clients.stepfunctions, "DescribeExecution", self._execution)
        for name, operation in (("ecs", "StopTask"), ("stepfunctions", "StopExecution")):
            self._answer(getattr(clients, name), operation, self._stopping(operation))

    def _starting(self, job_type: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def start(params: dict[str, Any]) -> dict[str, Any]:
            dispatch_id, token = _dispatch_id_of(job_type, params)
            self.started.append(Started(job_type, copy.deepcopy(params), dispatch_id, token))
            if job_type == "ecs":
                return {"tasks": [{"taskArn": f"{CLUSTER}/task/{token}"}], "failures": []}
            return {"StatusCode": 202} if job_type == "lambda" else {"startDate": T0}

        return start

    def _tasks(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListTasks by ``startedBy``: the tasks started so (a stopped one too: ECS lists a
        task as RUNNING until it has stopped)."""
        return {
            "taskArns": [
                f"{CLUSTER}/task/{s.token}"
                for s in self.started
                if s.job_type == "ecs" and s.request["startedBy"] == params.get("startedBy")
            ]
        }

    def _execution(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeExecution: an execution started under that name (in any status), or
        Step Functions' ExecutionDoesNotExist."""
        name = params["executionArn"].rsplit(":", 1)[-1]
        if any(s.job_type == "step_function" and s.token == name for s in self.started):
            return {"executionArn": params["executionArn"], "status": "RUNNING"}
        raise ClientError(
            {"Error": {"Code": "ExecutionDoesNotExist", "Message": "Execution Does Not Exist"}},
            "DescribeExecution",
        )

    def _stopping(self, operation: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def stop(params: dict[str, Any]) -> dict[str, Any]:
            self.stopped.append((operation, dict(params)))
            return {}

        return stop

    @staticmethod
    def _answer(
        client: Any, operation: str, reply: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        service = client.meta.service_model.service_id.hyphenize()
        seen: list[dict[str, Any]] = []

        def before(params: dict[str, Any], **_: Any) -> None:
            seen.append(params)

        def respond(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
            # A call refused while its parameters were built never gets here.
            return AWSResponse("", 200, {}, None), reply(seen.pop())

        client.meta.events.register(f"before-parameter-build.{service}.{operation}", before)
        client.meta.events.register(f"before-call.{service}.{operation}", respond)

    def of(self, key: str) -> list[Started]:
        """The starts of one run, in order."""
        return [s for s in self.started if s.key == key]


def sample(name: str) -> dict[str, Any]:
    """One of events/*.json."""
    return json.loads((EVENTS / name).read_text())


def iso_z(moment: datetime) -> str:
    """EventBridge's ``time``: whole seconds, UTC, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def completion(started: Started, at: datetime, ok: bool) -> dict[str, Any]:
    """The event the service puts on the default bus when the work ends."""
    if started.job_type == "lambda":
        event = sample(
            "lambda-destination-success.json" if ok else "lambda-destination-failure.json"
        )
        event["detail"]["requestPayload"] = json.loads(started.request["Payload"])
        event["detail"]["requestContext"]["requestId"] = f"request-{started.dispatch_id}"
        if ok:
            event["detail"]["responsePayload"] = {"attempt": started.attempt}
    elif started.job_type == "ecs":
        event = sample("ecs-task-stopped.json")
        detail = event["detail"]
        detail["overrides"] = started.request["overrides"]
        detail["startedBy"] = started.request["startedBy"]
        detail["taskDefinitionArn"] = TASK_DEFINITION
        detail["taskArn"] = f"{CLUSTER}/task/{started.token}"
        detail["containers"][0]["name"] = "main"
        detail["containers"][0]["exitCode"] = 0 if ok else 1
    else:
        event = sample("sfn-execution-succeeded.json" if ok else "sfn-execution-failed.json")
        detail = event["detail"]
        name = started.request["name"]
        detail["name"] = name
        detail["executionArn"] = STATE_MACHINE.replace(":stateMachine:", ":execution:") + f":{name}"
        detail["stateMachineArn"] = STATE_MACHINE
        detail["input"] = started.request["input"]
        if ok:
            detail["output"] = json.dumps({"attempt": started.attempt})
    event["time"] = iso_z(at)
    return event


# ---------------------------------------------------------------------- timers and bus


class KeptTimers(SchedulerTimers):
    """Scheduler timers whose CreateSchedule requests are kept (one per name, as Scheduler
    keeps the first of a name), to be fired as the schedule would put them on the bus."""

    def __init__(self, settings: Settings, clients: Clients, clock: Callable[[], datetime]):
        super().__init__(settings, clients, clock)
        self.kept: dict[str, dict[str, Any]] = {}

    def schedule(self, event: Event, at: str) -> None:
        request = self.request(event, at)
        self.kept.setdefault(request["Name"], request)

    def next_due(self) -> tuple[datetime, dict[str, Any]] | None:
        """The schedule that fires first, taken off, and when it fires."""
        if not self.kept:
            return None
        name = min(self.kept, key=lambda n: (self.kept[n]["ScheduleExpression"], n))
        request = self.kept.pop(name)
        when = datetime.fromisoformat(request["ScheduleExpression"][3:-1]).replace(tzinfo=UTC)
        target = request["Target"]
        event = {
            "version": "0",
            "id": f"timer-{name}",
            "detail-type": target["EventBridgeParameters"]["DetailType"],
            "source": target["EventBridgeParameters"]["Source"],
            "account": ACCOUNT,
            "time": iso_z(when),
            "region": REGION,
            "resources": [],
            "detail": json.loads(target["Input"]),
        }
        return when, event


class KeptBus(BunsuiBus):
    """Bunsui's bus, whose entries are kept to be delivered as EventBridge would."""

    def __init__(self, settings: Settings, clients: Clients) -> None:
        super().__init__(settings, clients)
        self.kept: list[dict[str, Any]] = []

    def _put(self, entry: dict[str, Any]) -> None:
        moment = entry.get("Time") or T0
        self.kept.append(
            {
                "version": "0",
                "id": f"bus-{len(self.kept)}",
                "detail-type": entry["DetailType"],
                "source": entry["Source"],
                "account": ACCOUNT,
                "time": iso_z(moment),
                "region": REGION,
                "resources": [],
                "detail": json.loads(entry["Detail"]),
            }
        )


# ---------------------------------------------------------------------- the stack


@dataclass
class LambdaContext:
    """What a Lambda handler is given as its context."""

    function_name: str = "bunsui-reliability"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:bunsui"
    aws_request_id: str = "reliability-request"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


@dataclass
class Stack:
    """A Bunsui stack on moto (its own table), on a clock the test moves."""

    now: datetime = T0
    table: str = field(default_factory=lambda: f"bunsui-{next(_tables)}")

    def __post_init__(self) -> None:
        self.clients = Clients(session=BOTO)
        # The table as template.yaml defines it (the store's copy of the definition: a
        # test elsewhere holds it equal to the template's).
        create_table(self.clients.dynamodb, self.table, template=ROOT / "no-such-template")
        self.settings = Settings(
            table=self.table,
            bus="bunsui",
            bus_arn=f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/bunsui",
            scheduler_role_arn=f"arn:aws:iam::{ACCOUNT}:role/scheduler",
            schedule_group="bunsui",
        )
        self.services = Services(self.clients)
        self.timers = KeptTimers(self.settings, self.clients, lambda: self.now)
        self.bus = KeptBus(self.settings, self.clients)
        self.engine = AwsEngine(
            self.settings,
            self.clients,
            store=DynamoStore(self.table, self.clients.dynamodb, history="stream"),
            timers=self.timers,
            bus=self.bus,
            secrets=MemorySecrets(),
            clock=lambda: iso_z(self.now),
        )

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def reduce(self, event: Any) -> dict[str, Any]:
        """The reducer function, invoked with one event."""
        return reducer.handler(event, LambdaContext())

    def sweep(self, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sweeper function, invoked by its schedule."""
        return sweeper.handler(
            event if event is not None else sample("sweeper.json"), LambdaContext()
        )


FirstFails = Callable[[Started, list[Started]], bool]
"""Whether a start's work fails, given the starts before it."""


def never_fails(start: Started, before: list[Started]) -> bool:
    return False


class Flow:
    """One session on a stack, moved on as AWS would: each start the services got ends
    once (a completion event on the bus, one second later), timers fire in time order,
    and the sweeper runs when asked; every event goes through the reducer's handler.

    Args:
        stack: The stack.
        text: The pipeline document (stored as a new pipeline).
        fails: Which starts fail.
    """

    def __init__(self, stack: Stack, text: str, fails: FirstFails = never_fails) -> None:
        self.stack = stack
        self.fails = fails
        self.pipeline = stack.engine.create_pipeline(text).name
        self.session_id = ""
        self.answered = 0
        self.completions: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []

    def deliver(self, event: dict[str, Any]) -> dict[str, Any]:
        """The reducer's handler takes the event (what it raises escapes); then the work it
        started ends."""
        try:
            reply = self.stack.reduce(event)
        finally:
            self.answer()
        self.replies.append(reply)
        return reply

    def answer(self) -> None:
        """Queue the completion of every start not yet answered."""
        started = self.stack.services.started
        for number in range(self.answered, len(started)):
            start = started[number]
            ok = not self.fails(start, started[:number])
            self.completions.append(completion(start, self.stack.now, ok))
        self.answered = len(started)

    def create(self) -> dict[str, Any]:
        """Start a session through the engine: its ``Session Started`` event, not delivered."""
        self.session_id = self.stack.engine.start_session(self.pipeline).id
        return self.stack.bus.kept[-1]

    def start(self) -> dict[str, Any]:
        """Start a session and deliver its ``Session Started``."""
        return self.deliver(self.create())

    def next_event(self) -> dict[str, Any] | None:
        """The next completion (a second later), else the next timer (at its time)."""
        if self.completions:
            event = self.completions.pop(0)
            event["time"] = iso_z(self.stack.tick())
            return event
        due = self.stack.timers.next_due()
        if due is None:
            return None
        when, event = due
        self.stack.now = max(self.stack.now, when)
        return event

    def step(self) -> bool:
        event = self.next_event()
        if event is None:
            return False
        self.deliver(event)
        return True

    def run(self, limit: int = 100) -> SessionStatus:
        """Deliver events until the session ends or nothing moves."""
        for _ in range(limit):
            if self.session().status.terminal or not self.step():
                break
        return self.session().status

    def sweep(self, after: float = 1000.0) -> dict[str, Any]:
        """The sweeper's schedule fires ``after`` seconds on (past its grace period)."""
        self.stack.tick(after)
        reply = self.stack.sweep()
        self.answer()
        return reply

    def session(self) -> Session:
        return self.stack.engine.store.get_session(self.session_id)

    def run_of(self, key: str) -> JobRun:
        found = self.stack.engine.store.get_run(self.session_id, key)
        assert found is not None, key
        return found

    def runs(self) -> list[JobRun]:
        return self.stack.engine.store.runs(self.session_id)

    def starts(self) -> list[tuple[str, int]]:
        return [(s.key, s.attempt) for s in self.stack.services.started]


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    """The handlers' Powertools log lines (their handler holds the stdout it found at
    import, before pytest's capture): a function that returns those written so far."""
    buffer = io.StringIO()
    for handler in logging.getLogger("bunsui").handlers:
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", buffer)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line[:1] == "{"]

    return lines


@pytest.fixture(scope="module")
def moto_account() -> Iterator[None]:
    """One moto account for a module: each stack has a table of its own in it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
        with mock_aws():
            yield


@pytest.fixture
def stack(moto_account: None, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """A fresh stack, which the handlers' ``engine()`` gives."""
    made = Stack()
    for module in HANDLERS:
        monkeypatch.setattr(module, "engine", lambda: made.engine)
        monkeypatch.setattr(module.metrics, "namespace", "BunsuiReliability")
    return made


# ---------------------------------------------------------------------- the template


def reducer_delivery() -> tuple[int, int]:
    """How often an event that fails the reducer is tried, by the template: the
    asynchronous invocation's retries (EventInvokeConfig), and the rules' own."""
    template = decode_str((ROOT / "template.yaml").read_text())[0]
    assert template is not None
    function = template["Resources"]["ReducerFunction"]["Properties"]
    config = function["EventInvokeConfig"]
    assert "ReducerDeadLetterQueue" in json.dumps(config["DestinationConfig"]["OnFailure"])
    rules = [e["Properties"] for e in function["Events"].values()]
    assert all("ReducerDeadLetterQueue" in json.dumps(r["DeadLetterConfig"]) for r in rules)
    rule_retries = {r["RetryPolicy"]["MaximumRetryAttempts"] for r in rules}
    assert len(rule_retries) == 1
    return int(config["MaximumRetryAttempts"]), int(rule_retries.pop())
