"""Lambda and ECS as the harness plays them: the jobs' own code runs here, results go on the bus.

moto keeps ECS tasks but runs no container, and its Lambda ``Invoke`` needs
Docker; neither sends the EventBridge events a finished job produces. These
players fill the gap with the local backend's resolver
(:class:`engine.local.resolve.LocalResolver`): the code that runs a function
or a task definition locally is the code that runs here.

- :class:`LambdaPlayer` answers the dispatcher's asynchronous ``Invoke``
  itself (202, nothing sent to moto), runs the function's handler later (in
  this process, or in a fresh interpreter through
  :mod:`engine.local.lambda_host`), and returns the destination record AWS
  would put on the account's default bus:
  ``Lambda Function Invocation Result - Success`` / ``- Failure`` with
  ``requestContext``, ``requestPayload``, ``responseContext`` and
  ``responsePayload``.
- :class:`EcsPlayer` watches ``RunTask`` replies (moto records the task),
  later runs the task's command with the task definition's and the
  overrides' environment (``BUNSUI_OUTPUT`` is an ``s3://`` URI on moto's S3,
  written by the job itself), stops the task in moto with the exit code, and
  returns the ``ECS Task State Change`` event (``lastStatus`` STOPPED). A task
  that ``StopTask`` stopped before it ran (or while held) ends with stop code
  ``UserInitiated``.

A job can be *held*: started but never finished (a hung container, a function
that outlives its timer), until :meth:`release`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from engine.errors import DispatchFailed
from engine.local import lambda_host
from engine.local.resolve import CommandTarget, HandlerTarget, LocalResolver, lambda_name
from engine.ports import Dispatch
from tests.e2e.aws.calls import Request, acting, decode
from tests.e2e.aws.stack import arn

Event = dict[str, Any]
"""A PutEvents entry (``Source``, ``DetailType``, ``Detail``, ``Resources``, ``Time``)."""

LAMBDA_SUCCESS = "Lambda Function Invocation Result - Success"
LAMBDA_FAILURE = "Lambda Function Invocation Result - Failure"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.isoformat()))


@dataclass
class JobCode:
    """Where the harness finds the code of users' functions and tasks.

    Args:
        folder: The project folder (its ``template.yaml``/``template.yml`` and
            ``bunsui.local.yaml``, as ``bunsui run`` finds them).
        template: A template elsewhere.
        drop_env: Variables of the local mapping that must not reach the jobs
            here (the ML example's ``ML_LOCAL_S3_ROOT``: on this stack S3 is moto's).
        lambda_mode: ``inline`` calls a function's handler in this process (fast:
            a 1,000-job fan-out); ``process`` runs each invocation in a fresh
            interpreter, as a cold Lambda would, with the function's timeout.
    """

    folder: Path
    template: Path | None = None
    drop_env: Sequence[str] = ()
    lambda_mode: str = "inline"
    resolver: LocalResolver = field(init=False)

    def __post_init__(self) -> None:
        if self.lambda_mode not in ("inline", "process"):
            raise ValueError(f"lambda_mode is inline or process, not {self.lambda_mode!r}")
        self.resolver = LocalResolver(self.folder, self.template)


def _first(sources: Sequence[JobCode], find: Any) -> tuple[JobCode, Any] | None:
    for source in sources:
        try:
            return source, find(source.resolver)
        except DispatchFailed:
            continue
    return None


def _without(environment: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    return {k: v for k, v in environment.items() if k not in names}


# ---------------------------------------------------------------- Lambda


@dataclass
class Invocation:
    """One asynchronous invocation the dispatcher asked for."""

    function: str
    payload: Any
    request_id: str
    source: JobCode
    target: HandlerTarget


class LambdaPlayer:
    """Plays Lambda's asynchronous invoke and destinations (see the module docstring).

    Args:
        sources: Where functions are found, first match wins; each says how its
            functions run (:attr:`JobCode.lambda_mode`).
        logs: A CloudWatch Logs client to write each invocation's lines to
            ``/aws/lambda/<function>`` (process mode), or None.
    """

    def __init__(self, sources: Sequence[JobCode], logs: Any = None) -> None:
        self.sources = list(sources)
        self.logs = logs
        self.pending: list[Invocation] = []
        self.held: list[Invocation] = []
        self.holds: set[str] = set()
        self.invoked: list[Invocation] = []
        self._lock = threading.Lock()
        self._groups: set[str] = set()

    # ------------------------------------------------------------ the Invoke interceptor

    def invoke(self, request: Request) -> dict[str, Any]:
        """Accept an ``Invoke`` as Lambda does (202), to run later.

        Raises:
            ClientError: ResourceNotFoundException for a function no source has, as
                Lambda answers; InvalidParameterValueException for a synchronous invoke.
        """
        params = request.params
        name = lambda_name(str(params["FunctionName"]))
        if params.get("InvocationType", "RequestResponse") != "Event":
            raise _client_error(
                "InvalidParameterValueException",
                "the harness plays asynchronous invocations only",
                "Invoke",
            )
        found = _first(self.sources, lambda resolver: resolver.function(name))
        if found is None:
            raise _client_error(
                "ResourceNotFoundException",
                f"Function not found: {arn('lambda', f'function:{name}')}",
                "Invoke",
                404,
            )
        source, target = found
        invocation = Invocation(
            name, decode(params.get("Payload")), str(uuid.uuid4()), source, target
        )
        with self._lock:
            self.invoked.append(invocation)
            (self.held if name in self.holds else self.pending).append(invocation)
        return {"StatusCode": 202, "Payload": StreamingBody(_Empty(), 0)}

    # ------------------------------------------------------------ running

    def take(self) -> list[Invocation]:
        with self._lock:
            taken, self.pending = self.pending, []
        return taken

    def release(self, function: str) -> int:
        """Let the held invocations of ``function`` run (they end at the next round)."""
        with self._lock:
            self.holds.discard(function)
            freed = [i for i in self.held if i.function == function]
            self.held = [i for i in self.held if i.function != function]
            self.pending.extend(freed)
        return len(freed)

    def run(self, invocation: Invocation, now: datetime) -> Event:
        """Run one invocation; the destination record for the default bus."""
        runner = self._inline if invocation.source.lambda_mode == "inline" else self._process
        outcome = runner(invocation)
        return self.record(invocation, outcome, now)

    def record(self, invocation: Invocation, outcome: Mapping[str, Any], now: datetime) -> Event:
        """The destination event of an invocation whose result document is ``outcome``."""
        function_arn = arn("lambda", f"function:{invocation.function}:$LATEST")
        failed = "error" in outcome
        response_context: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if failed:
            error = outcome["error"]
            response_context["functionError"] = "Unhandled"
            response = {
                "errorMessage": error["message"],
                "errorType": error["type"],
                "requestId": invocation.request_id,
                "stackTrace": error.get("trace") or [],
            }
        else:
            response = outcome["result"]
        detail = {
            "version": "1.0",
            "timestamp": _iso(now),
            "requestContext": {
                "requestId": invocation.request_id,
                "functionArn": function_arn,
                "condition": "RetriesExhausted" if failed else "Success",
                "approximateInvokeCount": 1,
            },
            "requestPayload": invocation.payload,
            "responseContext": response_context,
            "responsePayload": response,
        }
        return {
            "Source": "lambda",
            "DetailType": LAMBDA_FAILURE if failed else LAMBDA_SUCCESS,
            "Detail": json.dumps(_json_safe(detail)),
            "Resources": [arn("events", "event-bus/default"), function_arn],
            "EventBusName": "default",
            "Time": now,
        }

    def _inline(self, invocation: Invocation) -> dict[str, Any]:
        target = invocation.target
        context = lambda_host.LambdaContext(
            target.name, target.memory, invocation.request_id, time.time() + (target.timeout or 900)
        )
        with acting("job"), _environment(_without(target.environment, invocation.source.drop_env)):
            try:
                handler = _handler(target)
                result = handler(invocation.payload, context)
                json.dumps(result)
            except Exception as exc:  # the function failed: Lambda reports it, nothing more
                trace = traceback.format_tb(exc.__traceback__)[1:]
                return {"error": {"type": type(exc).__name__, "message": str(exc), "trace": trace}}
        return {"result": result}

    def _process(self, invocation: Invocation) -> dict[str, Any]:
        target = invocation.target
        spec = {
            "code_dir": str(target.code_dir.resolve()),
            "handler": target.handler,
            "event": invocation.payload,
            "function_name": target.name,
            "memory": target.memory,
            "deadline": time.time() + (target.timeout or 900),
            "request_id": invocation.request_id,
            "environment": _without(target.environment, invocation.source.drop_env),
        }
        with tempfile.TemporaryDirectory(prefix="harness-lambda-") as folder:
            spec_path, result_path = Path(folder, "spec.json"), Path(folder, "result.json")
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            started = time.monotonic()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "engine.local.lambda_host", spec_path, result_path],
                    cwd=target.code_dir,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    capture_output=True,
                    text=True,
                    timeout=target.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                message = f"Task timed out after {target.timeout:.2f} seconds"
                self._log(invocation, _text(exc.stdout) + _text(exc.stderr), started)
                return {"error": {"type": "Sandbox.Timedout", "message": message}}
            self._log(invocation, done.stdout + done.stderr, started)
            if not result_path.is_file():
                message = f"RequestId: {invocation.request_id} Error: Runtime exited"
                return {"error": {"type": "Runtime.ExitError", "message": message}}
            return json.loads(result_path.read_text(encoding="utf-8"))

    def _log(self, invocation: Invocation, text: str, started: float) -> None:
        """The invocation's lines in its log group, between START and REPORT, as Lambda writes."""
        if self.logs is None:
            return
        group = f"/aws/lambda/{invocation.function}"
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        stream = f"{day}/[$LATEST]{invocation.request_id.replace('-', '')}"
        rid = invocation.request_id
        lines = [f"START RequestId: {rid} Version: $LATEST", *text.splitlines()]
        seconds = time.monotonic() - started
        lines += [
            f"END RequestId: {rid}",
            f"REPORT RequestId: {rid}\tDuration: {seconds * 1000:.2f} ms",
        ]
        write_log(self.logs, self._groups, group, stream, lines)


class _Empty:
    def read(self, *_: Any) -> bytes:
        return b""


_handlers: dict[tuple[str, str], Any] = {}


def _handler(target: HandlerTarget) -> Any:
    """The handler function, imported once per (code folder, handler)."""
    key = (str(target.code_dir.resolve()), target.handler)
    if key not in _handlers:
        if key[0] not in sys.path:
            sys.path.insert(0, key[0])
        module_name, _, function = target.handler.rpartition(".")
        _handlers[key] = getattr(importlib.import_module(module_name), function)
    return _handlers[key]


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """The function's variables for the length of one inline call (the harness is one thread)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def _client_error(code: str, message: str, operation: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


def write_log(client: Any, groups: set[str], group: str, stream: str, lines: list[str]) -> None:
    """Append ``lines`` to a CloudWatch Logs stream (creating group and stream as needed)."""
    if group not in groups:
        with contextlib.suppress(ClientError):
            client.create_log_group(logGroupName=group)
        groups.add(group)
    with contextlib.suppress(ClientError):
        client.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now, "message": line} for line in lines if line] or [
        {"timestamp": now, "message": "(no output)"}
    ]
    client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


# ---------------------------------------------------------------- ECS


@dataclass
class Task:
    """A task moto recorded at ``RunTask``, as its reply described it."""

    arn: str
    cluster_arn: str
    family: str
    reply: dict[str, Any]
    stopped: str | None = None
    """``StopTask``'s reason when Bunsui stopped it."""


class EcsPlayer:
    """Plays ECS running tasks and their state-change events (see the module docstring).

    Args:
        sources: Where the tasks' commands are found (a mapping's ``tasks:``).
        ecs: The harness's ECS client (describe, stop).
        logs: A CloudWatch Logs client for the containers' awslogs streams, or None.
    """

    def __init__(self, sources: Sequence[JobCode], ecs: Any, logs: Any = None) -> None:
        self.sources = list(sources)
        self.ecs = ecs
        self.logs = logs
        self.pending: list[Task] = []
        self.held: list[Task] = []
        self.holds: set[str] = set()
        self.stopped: list[Task] = []
        self.started: list[Task] = []
        self.stop_requests: list[dict[str, Any]] = []
        self.outputs: dict[str, str] = {}
        self._lock = threading.Lock()
        self._groups: set[str] = set()
        self._definitions: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ observers

    def ran(self, request: Request, reply: Mapping[str, Any]) -> None:
        """A RunTask went through: remember each task it started."""
        for found in reply.get("tasks") or []:
            family = found["taskDefinitionArn"].rsplit("/", 1)[-1].split(":", 1)[0]
            task = Task(found["taskArn"], found["clusterArn"], family, _json_safe(found))
            with self._lock:
                self.started.append(task)
                (self.held if family in self.holds else self.pending).append(task)

    def stopping(self, request: Request, reply: Mapping[str, Any]) -> None:
        """A StopTask went through: a task that has not run (or is held) ends as stopped."""
        params = request.params
        self.stop_requests.append(dict(params))
        with self._lock:
            for task in [*self.pending, *self.held]:
                if task.arn == params["task"] or task.arn.endswith("/" + params["task"]):
                    task.stopped = params.get("reason") or "Task stopped by user"
                    self.stopped.append(task)
            self.pending = [t for t in self.pending if t.stopped is None]
            self.held = [t for t in self.held if t.stopped is None]

    # ------------------------------------------------------------ running

    def take(self) -> tuple[list[Task], list[Task]]:
        """Tasks to run now, and tasks Bunsui stopped whose events are still to put."""
        with self._lock:
            run, self.pending = self.pending, []
            stopped, self.stopped = self.stopped, []
        return run, stopped

    def release(self, family: str) -> int:
        with self._lock:
            self.holds.discard(family)
            freed = [t for t in self.held if t.family == family]
            self.held = [t for t in self.held if t.family != family]
            self.pending.extend(freed)
        return len(freed)

    def run(self, task: Task, now: datetime) -> Event:
        """Run the task's essential container's command; stop it in moto; its STOPPED event."""
        definition = self._definition(task.reply["taskDefinitionArn"])
        exit_codes: dict[str, int] = {}
        for container in definition["containerDefinitions"]:
            override = _override(task.reply, container["name"])
            environment = {e["name"]: e["value"] for e in container.get("environment", [])}
            environment.update({e["name"]: e["value"] for e in override.get("environment", [])})
            code, lines = self._container(task, override.get("command"), environment)
            exit_codes[container["name"]] = code
            self._log(task, container, lines)
        essential = [
            c["name"] for c in definition["containerDefinitions"] if c.get("essential", True)
        ]
        failed = [name for name in essential if exit_codes.get(name) != 0]
        reason = "Essential container in task exited"
        self.ecs.stop_task(cluster=task.cluster_arn, task=task.arn, reason=reason)
        return self.event(task, "EssentialContainerExited", reason, exit_codes, now, failed)

    def stopped_event(self, task: Task, now: datetime) -> Event:
        """The STOPPED event of a task Bunsui stopped (its containers killed: exit 137)."""
        definition = self._definition(task.reply["taskDefinitionArn"])
        codes = {c["name"]: 137 for c in definition["containerDefinitions"]}
        return self.event(task, "UserInitiated", task.stopped or "", codes, now, list(codes))

    def event(
        self,
        task: Task,
        stop_code: str,
        reason: str,
        exit_codes: Mapping[str, int],
        now: datetime,
        failed: list[str],
    ) -> Event:
        detail = dict(task.reply)
        stamp = _iso(now)
        detail.update(
            lastStatus="STOPPED",
            desiredStatus="STOPPED",
            stopCode=stop_code,
            stoppedReason=reason,
            stoppingAt=stamp,
            stoppedAt=stamp,
            executionStoppedAt=stamp,
            updatedAt=stamp,
            version=int(detail.get("version") or 1) + 2,
        )
        detail["containers"] = [
            {
                "containerArn": arn("ecs", f"container/{task.arn.rsplit('/', 1)[-1]}/{name}"),
                "name": name,
                "taskArn": task.arn,
                "lastStatus": "STOPPED",
                "exitCode": code,
                **({"reason": "Essential container exited"} if name in failed else {}),
            }
            for name, code in exit_codes.items()
        ]
        return {
            "Source": "aws.ecs",
            "DetailType": "ECS Task State Change",
            "Detail": json.dumps(detail),
            "Resources": [task.arn],
            "EventBusName": "default",
            "Time": now,
        }

    def _definition(self, task_definition: str) -> dict[str, Any]:
        if task_definition not in self._definitions:
            found = self.ecs.describe_task_definition(taskDefinition=task_definition)
            self._definitions[task_definition] = found["taskDefinition"]
        return self._definitions[task_definition]

    def _container(
        self, task: Task, command: list[str] | None, environment: dict[str, str]
    ) -> tuple[int, list[str]]:
        dispatch_id = environment.get("BUNSUI_DISPATCH_ID", "x/x/1")
        session, key, attempt = dispatch_id.rsplit("/", 2)
        order = Dispatch(
            session, key, key.split("[", 1)[0], "ecs", int(attempt),
            {"task_definition": task.family, "environment": environment, "command": command},
            None, dispatch_id,
        )  # fmt: skip
        found = _first(self.sources, lambda resolver: resolver.resolve(order))
        if found is None:
            return 1, [f"harness: no source maps ECS task definition {task.family}"]
        source, target = found
        assert isinstance(target, CommandTarget)
        argv = (
            ["/bin/sh", "-c", target.command]
            if isinstance(target.command, str)
            else list(target.command)
        )
        env = {
            **os.environ,
            **_without(target.environment, source.drop_env),
            "PYTHONUNBUFFERED": "1",
        }
        done = subprocess.run(
            argv, cwd=target.cwd, env=env, capture_output=True, text=True, check=False
        )
        self.outputs[task.arn] = done.stdout + done.stderr
        return done.returncode, (done.stdout + done.stderr).splitlines()

    def _log(self, task: Task, container: Mapping[str, Any], lines: list[str]) -> None:
        config = container.get("logConfiguration") or {}
        options = config.get("options") or {}
        if (
            self.logs is None
            or config.get("logDriver") != "awslogs"
            or "awslogs-group" not in options
        ):
            return
        prefix = options.get("awslogs-stream-prefix", "ecs")
        stream = f"{prefix}/{container['name']}/{task.arn.rsplit('/', 1)[-1]}"
        write_log(self.logs, self._groups, options["awslogs-group"], stream, lines)


def _override(reply: Mapping[str, Any], container: str) -> dict[str, Any]:
    overrides = (reply.get("overrides") or {}).get("containerOverrides") or []
    return next((o for o in overrides if o.get("name") == container), {})
