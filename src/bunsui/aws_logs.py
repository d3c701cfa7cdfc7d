"""The jobs' own output on AWS: their lines in CloudWatch Logs, found from each run.

Bunsui records the service's handle of an attempt with its outcome, so a
job's lines are found once the attempt has ended:

- ``lambda``: the handle is the invocation's request id. The function's log
  group is its LoggingConfig group (``/aws/lambda/<function>`` by default,
  from ``GetFunctionConfiguration``). The request's START, END and REPORT
  lines carry the id and name the stream; an execution environment serves
  one request at a time, so the stream's lines from its START to its REPORT
  are the attempt's, ``print`` output included. A function deleted since
  keeps its logs: its default group is read.
- ``ecs``: the handle is the task ARN. A container that logs with the
  ``awslogs`` driver writes to ``<awslogs-stream-prefix>/<container>/<task id>``
  in its ``awslogs-group`` (from the task's task definition).

Other job types keep their output in their own service (Step Functions
execution history, Glue, Batch and EMR logs); ``logs`` shows their history.
Every line counts as ``stdout`` (CloudWatch does not keep the stream), so its
level is the one the line names, else INFO.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bunsui.aws_access import AwsAccess
from engine.local.runners import LogLine
from engine.state import JobRun, JobStatus, Session

if TYPE_CHECKING:
    from bunsui.remote import RemoteStore

FOLLOW_SECONDS = 2.0
"""How often ``--follow`` looks for attempts that ended (each look lists the runs)."""
WINDOW_SECONDS = 300
"""How far before a run's start and after its end the request's lines are searched."""
LATE_SECONDS = 60
"""How long after an attempt's end ``--follow`` still looks for more of its lines."""
_GONE = {"ResourceNotFoundException", "ClientException", "InvalidParameterException"}


def _ms(at: str | None, default: float) -> int:
    if not at:
        return int(default * 1000)
    moment = datetime.fromisoformat(at)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _reports(message: str, request_id: str) -> bool:
    """Whether a line is a request's last: ``REPORT RequestId: <id>`` (or, in Lambda's JSON
    log format, its ``platform.report`` record)."""
    return message.startswith(f"REPORT RequestId: {request_id}") or (
        "platform.report" in message and request_id in message
    )


def _request(events: list[dict[str, Any]], request_id: str) -> Iterator[dict[str, Any]]:
    """The events of one request in its stream: from its first line to its REPORT line (or
    the next request's START)."""
    inside = False
    for event in events:
        message = str(event["message"])
        if not inside:
            inside = request_id in message
        elif message.startswith("START RequestId: ") or '"platform.start"' in message:
            return
        if inside:
            yield event
            if _reports(message, request_id):
                return


def _function_name(function: str) -> str:
    """The name in a function name, ``name:alias``, or a full or partial ARN."""
    parts = function.split(":")
    if "function" in parts:
        return parts[parts.index("function") + 1]
    return parts[0]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class CloudWatchLogBook:
    """The ``lines`` and ``follow`` of the local LogBook, read from CloudWatch Logs.

    Args:
        job_type: The type of a job of a session (``lambda``, ``ecs``...).
    """

    def __init__(
        self,
        access: AwsAccess,
        store: RemoteStore,
        job_type: Callable[[Session, str], str],
    ) -> None:
        self.access = access
        self.store = store
        self.job_type = job_type
        self._groups: dict[tuple[str, str | None], str] = {}

    # ------------------------------------------------------------------ the LogBook surface

    def lines(self, session_id: str, job: str | None = None) -> list[LogLine]:
        """Every line of the session's ended attempts (or one job's), in time order."""
        session = self.store.get_session(session_id)
        found: list[LogLine] = []
        for run in self._runs(session, job):
            found += self.attempt_lines(session, run)
        return sorted(found, key=lambda line: line.at)

    def follow(
        self,
        session_id: str,
        job: str | None = None,
        until: Callable[[], bool] | None = None,
        interval: float = FOLLOW_SECONDS,
    ) -> Iterator[LogLine]:
        """The lines of attempts as they end, until ``until`` says so (then one last look).

        Args:
            interval: Seconds between looks (at least FOLLOW_SECONDS: each one lists runs).
        """
        session = self.store.get_session(session_id)
        shown: dict[tuple[str, int], int] = {}
        complete: set[tuple[str, int]] = set()
        while True:
            done = until is not None and until()
            fresh: list[LogLine] = []
            for run in self._runs(session, job):
                attempt = (run.key, run.attempt)
                if attempt in complete:
                    continue
                lines = self.attempt_lines(session, run)
                fresh += lines[shown.get(attempt, 0) :]
                shown[attempt] = len(lines)
                # Lines reach CloudWatch a little after the attempt's end: look again until
                # the last one is there (or LATE_SECONDS have passed).
                if self._complete(session, run, lines):
                    complete.add(attempt)
            yield from sorted(fresh, key=lambda line: line.at)
            if done:
                return
            time.sleep(max(interval, FOLLOW_SECONDS))

    def _complete(self, session: Session, run: JobRun, lines: list[LogLine]) -> bool:
        """Whether an attempt's lines are all in: a Lambda request's REPORT line is, or the
        attempt ended LATE_SECONDS ago (an ECS task's awslogs lines are sent before it stops)."""
        ended = _ms(run.ended_at or run.updated_at, time.time()) / 1000
        if time.time() - ended > LATE_SECONDS or self.job_type(session, run.job_id) != "lambda":
            return True
        return any(_reports(line.message, str(run.handle)) for line in lines)

    # ------------------------------------------------------------------ runs

    def _runs(self, session: Session, job: str | None) -> list[JobRun]:
        """Runs whose attempt has ended with a handle (the service's id of the work)."""
        job_id = None if job is None else job.split("[", 1)[0]
        keep = []
        for run in self.store.runs(session.id, job_id=job_id):
            if job is not None and run.key != job and not run.key.startswith(f"{job}["):
                continue
            ended = run.status.terminal or run.status is JobStatus.RETRYING
            if run.handle and ended:
                keep.append(run)
        return keep

    def attempt_lines(self, session: Session, run: JobRun) -> list[LogLine]:
        """The lines of a run's last ended attempt ([] for a job type without CloudWatch
        logs, or when the logs are gone)."""
        kind = self.job_type(session, run.job_id)
        if kind == "lambda":
            return self._lambda(run)
        if kind == "ecs":
            return self._ecs(run)
        return []

    # ------------------------------------------------------------------ lambda

    def _lambda(self, run: JobRun) -> list[LogLine]:
        inputs = run.inputs or {}
        function = inputs.get("function_name")
        if not isinstance(function, str) or not run.handle:
            return []
        group = self._lambda_group(function, inputs.get("qualifier"))
        logs = self.access.client("logs")
        request_id = run.handle
        now = time.time()
        hits = self._pages(
            "logs:FilterLogEvents",
            logs.filter_log_events,
            "nextToken",
            logGroupName=group,
            filterPattern=f'"{request_id}"',
            startTime=_ms(run.started_at, now) - WINDOW_SECONDS * 1000,
            endTime=_ms(run.ended_at, now) + WINDOW_SECONDS * 1000,
        )
        if not hits:
            return []
        stream = hits[0]["logStreamName"]
        mine = [hit for hit in hits if hit["logStreamName"] == stream]
        # Until its REPORT line is in, the request's lines run to the stream's end (or to
        # the next request's START).
        reported = any(_reports(hit["message"], request_id) for hit in mine)
        end = max(hit["timestamp"] for hit in mine) + 1 if reported else None
        events = self._stream(logs, group, stream, min(hit["timestamp"] for hit in mine), end)
        return [self._line(run, event) for event in _request(events, request_id)]

    def _lambda_group(self, function: str, qualifier: Any) -> str:
        key = (function, qualifier if isinstance(qualifier, str) else None)
        if key not in self._groups:
            client = self.access.client("lambda")
            options = {"FunctionName": function}
            if key[1]:
                options["Qualifier"] = key[1]
            found = self.access.call(
                "lambda:GetFunctionConfiguration",
                lambda: client.get_function_configuration(**options),
                _GONE,
            )
            # A function deleted since keeps its logs, in the default group.
            logging = (found or {}).get("LoggingConfig") or {}
            name = (found or {}).get("FunctionName") or _function_name(function)
            self._groups[key] = logging.get("LogGroup") or f"/aws/lambda/{name}"
        return self._groups[key]

    # ------------------------------------------------------------------ ecs

    def _ecs(self, run: JobRun) -> list[LogLine]:
        inputs = run.inputs or {}
        arn = run.handle or ""
        task_id = arn.rsplit("/", 1)[-1]
        definition = self._task_definition(arn, inputs)
        if definition is None:
            return []
        containers = []
        for container in definition.get("containerDefinitions", []):
            config = container.get("logConfiguration") or {}
            options = config.get("options") or {}
            if config.get("logDriver") == "awslogs" and options.get("awslogs-stream-prefix"):
                containers.append((container["name"], options))
        found: list[LogLine] = []
        for name, options in containers:
            logs = self.access.client("logs", options.get("awslogs-region"))
            stream = f"{options['awslogs-stream-prefix']}/{name}/{task_id}"
            prefix = f"[{name}] " if len(containers) > 1 else ""
            events = self._stream(logs, options["awslogs-group"], stream)
            found += [self._line(run, event, prefix) for event in events]
        return found

    def _task_definition(self, arn: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """The task's own task definition (its exact revision while ECS still describes the
        task, about an hour after it stopped), else the one the job names."""
        ecs = self.access.client("ecs")
        cluster = inputs.get("cluster") or (arn.split("/")[1] if arn.count("/") >= 2 else None)
        name = inputs.get("task_definition")
        if cluster:
            tasks = self.access.call(
                "ecs:DescribeTasks",
                lambda: ecs.describe_tasks(cluster=cluster, tasks=[arn]).get("tasks", []),
                _GONE | {"ClusterNotFoundException"},
            )
            if tasks:
                name = tasks[0].get("taskDefinitionArn", name)
        if not isinstance(name, str):
            return None
        return self.access.call(
            "ecs:DescribeTaskDefinition",
            lambda: ecs.describe_task_definition(taskDefinition=name)["taskDefinition"],
            _GONE,
        )

    # ------------------------------------------------------------------ reading

    def _stream(
        self, logs: Any, group: str, stream: str, start: int | None = None, end: int | None = None
    ) -> list[dict[str, Any]]:
        """Every event of a stream (between ``start`` and ``end`` ms), oldest first."""
        options: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        if start is not None:
            options["startTime"] = start
        if end is not None:
            options["endTime"] = end
        events: list[dict[str, Any]] = []
        token = None
        while True:
            extra = {"nextToken": token} if token else {}
            page = self.access.call(
                "logs:GetLogEvents",
                lambda extra=extra: logs.get_log_events(**options, **extra),
                _GONE,
            )
            if page is None:
                return events
            events += page.get("events", [])
            following = page.get("nextForwardToken")
            if not page.get("events") or following in (None, token):
                return events
            token = following

    def _pages(
        self, action: str, request: Callable[..., Any], token_name: str, **options: Any
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = None
        while True:
            extra = {token_name: token} if token else {}
            page = self.access.call(action, lambda extra=extra: request(**options, **extra), _GONE)
            if page is None:
                return found
            found += page.get("events", [])
            token = page.get(token_name)
            if not token:
                return found

    @staticmethod
    def _line(run: JobRun, event: dict[str, Any], prefix: str = "") -> LogLine:
        return LogLine(
            at=_iso(int(event["timestamp"])),
            stream="stdout",
            message=prefix + str(event["message"]).rstrip("\n"),
            key=run.key,
            attempt=run.attempt,
        )
