"""EventBridge events -> engine events: which run an event is about, and how it ended.

Every event the reducer's rule delivers is parsed with the pydantic model of
its shape (plain ``BaseModel``\\ s with EventBridge's envelope fields, so
Powertools' ``parse(event, model=...)`` takes them too) and led back to
``(session, key, attempt)`` through the dispatch id the start carried
(:mod:`engine.aws.dispatch`), without a scan and without a write:

- Lambda destination records: the request payload's ``bunsui.dispatch_id``;
- ECS task state changes: the container overrides' ``BUNSUI_DISPATCH_ID``;
- Step Functions status changes: the execution input's ``bunsui.dispatch_id``
  (read with ``DescribeExecution`` when the event left the input out);
- Glue job state changes: the run's ``--bunsui-dispatch-id`` (``GetJobRun``);
- Batch job state changes: the ``bunsui:dispatch-id`` tag (or the environment);
- EMR step status changes: the step name ``bunsui:<dispatch id>``;
- Bunsui's own detail-types (:mod:`engine.aws.bus`).

Not ours: :meth:`Correlator.read` returns :class:`Ignored` with a reason for
anything that is not a finished attempt of Bunsui or one of Bunsui's own
events (another source, an unknown detail-type, no dispatch id, a state that
is not an end, a malformed envelope); :func:`engine_event` logs that reason
and returns None. Neither raises for a malformed event. Two errors do
escape, both for events that are ours and could not be read *now*, so the
caller lets the Lambda fail and EventBridge delivers the event again:
:class:`~engine.aws.dispatch.Throttled`, and :class:`CorrelationFailed`
(AWS refused a lookup the event needs, e.g. ``GetJobRun`` without permission).

A container job's output (ecs, batch, glue, emr) is the JSON object at its
``BUNSUI_OUTPUT`` URI, read when the job succeeded: a missing object is an
empty output (None); an unreadable object, or one that is not JSON, fails the
attempt with an error naming the URI.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from engine.aws import bus
from engine.aws.dispatch import (
    BATCH_TAG,
    DISPATCH_ARGUMENT,
    OUTPUT_ARGUMENT,
    Throttled,
    emr_dispatch_id,
    error_line,
    is_throttling,
    output_uri,
)
from engine.aws.settings import Clients, Settings
from engine.errors import BunsuiError
from engine.events import AttemptFinished, Event

_log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 1024 * 1024
"""The largest output object read from S3 (a store keeps far less inline)."""

_DISPATCH_ID = re.compile(r"([^/\s]+)/([^/\s]+)/([1-9][0-9]{0,8})")


class CorrelationFailed(BunsuiError):
    """AWS refused a lookup that an event of Bunsui's needs; delivering it again may work."""


@dataclass(frozen=True)
class Ignored:
    """An event that is not for the reducer, and why (for the caller's log)."""

    reason: str


def parse_dispatch_id(text: str) -> tuple[str, str, int]:
    """``session/key/attempt`` -> ``(session, key, attempt)``.

    Raises:
        ValueError: not exactly three non-empty parts without spaces, or an attempt
            that is not a positive number.
    """
    match = _DISPATCH_ID.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a dispatch id (session/key/attempt): {text!r}")
    return match[1], match[2], int(match[3])


# ---------------------------------------------------------------- models

# Each model builds its validator on first use (``defer_build``): a container sees the
# events of the services its pipelines use, and building every service's at import is
# a cold-start cost the others never repay.


class Envelope(BaseModel):
    """EventBridge's envelope, as Powertools' ``EventBridgeModel`` has it.

    Only what the reducer reads is required (``source``, ``detail-type``, ``time``,
    ``detail``): moto's bus, for one, leaves ``account`` out.
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True, defer_build=True)

    version: str = "0"
    id: str = ""
    source: str
    account: str = ""
    time: datetime
    region: str = ""
    resources: list[str] = Field(default_factory=list)
    detail_type: str = Field(alias="detail-type")
    detail: Any
    replay_name: str | None = Field(default=None, alias="replay-name")


class ServiceDetail(BaseModel):
    """Base of the services' details: camelCase on the wire, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        defer_build=True,
    )


class LambdaRequestContext(ServiceDetail):
    request_id: str
    function_arn: str | None = None
    condition: str | None = None
    """``Success``, ``RetriesExhausted``, ``EventAgeExceeded``..."""
    approximate_invoke_count: int | None = None


class LambdaResponseContext(ServiceDetail):
    status_code: int | None = None
    executed_version: str | None = None
    function_error: str | None = None
    """``Handled`` or ``Unhandled`` when the function failed."""


class LambdaDestinationDetail(ServiceDetail):
    """A Lambda destination's invocation record."""

    version: str | None = None
    timestamp: str | None = None
    request_context: LambdaRequestContext
    request_payload: Any = None
    response_context: LambdaResponseContext | None = None
    response_payload: Any = None


class LambdaSuccessEvent(Envelope):
    """``Lambda Function Invocation Result - Success`` (source ``lambda``)."""

    detail: LambdaDestinationDetail


class LambdaFailureEvent(Envelope):
    """``Lambda Function Invocation Result - Failure`` (source ``lambda``)."""

    detail: LambdaDestinationDetail


class EnvironmentVariable(ServiceDetail):
    name: str
    value: str | None = None


class EcsContainerOverride(ServiceDetail):
    name: str | None = None
    environment: list[EnvironmentVariable] = Field(default_factory=list)


class EcsOverrides(ServiceDetail):
    container_overrides: list[EcsContainerOverride] = Field(default_factory=list)


class EcsContainer(ServiceDetail):
    name: str
    exit_code: int | None = None
    reason: str | None = None
    last_status: str | None = None


class EcsTaskDetail(ServiceDetail):
    """An ECS task as DescribeTasks shows it (the fields Bunsui reads)."""

    task_arn: str
    cluster_arn: str | None = None
    task_definition_arn: str | None = None
    last_status: str
    desired_status: str | None = None
    stop_code: str | None = None
    stopped_reason: str | None = None
    started_by: str | None = None
    containers: list[EcsContainer] = Field(default_factory=list)
    overrides: EcsOverrides = Field(default_factory=EcsOverrides)


class EcsTaskStateChangeEvent(Envelope):
    """``ECS Task State Change`` (source ``aws.ecs``)."""

    detail: EcsTaskDetail


class DataDetails(ServiceDetail):
    included: bool = True


class SfnExecutionDetail(ServiceDetail):
    execution_arn: str
    state_machine_arn: str | None = None
    name: str | None = None
    status: str
    input: str | None = None
    output: str | None = None
    input_details: DataDetails | None = None
    output_details: DataDetails | None = None
    error: str | None = None
    cause: str | None = None


class SfnExecutionStatusChangeEvent(Envelope):
    """``Step Functions Execution Status Change`` (source ``aws.states``)."""

    detail: SfnExecutionDetail


class GlueJobDetail(ServiceDetail):
    job_name: str
    job_run_id: str
    state: str
    severity: str | None = None
    message: str | None = None


class GlueJobStateChangeEvent(Envelope):
    """``Glue Job State Change`` (source ``aws.glue``)."""

    detail: GlueJobDetail


class BatchContainer(ServiceDetail):
    exit_code: int | None = None
    reason: str | None = None
    environment: list[EnvironmentVariable] = Field(default_factory=list)


class BatchArrayProperties(ServiceDetail):
    size: int | None = None
    index: int | None = None
    """Set on a child of an array job: its parent's event speaks for the job."""


class BatchJobDetail(ServiceDetail):
    """A Batch job as DescribeJobs shows it (the fields Bunsui reads)."""

    job_arn: str | None = None
    job_name: str
    job_id: str
    job_queue: str | None = None
    status: str
    status_reason: str | None = None
    container: BatchContainer | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    array_properties: BatchArrayProperties | None = None


class BatchJobStateChangeEvent(Envelope):
    """``Batch Job State Change`` (source ``aws.batch``)."""

    detail: BatchJobDetail


class EmrStepDetail(ServiceDetail):
    step_id: str
    cluster_id: str
    name: str
    state: str
    action_on_failure: str | None = None
    severity: str | None = None
    message: str | None = None


class EmrStepStatusChangeEvent(Envelope):
    """``EMR Step Status Change`` (source ``aws.emr``)."""

    detail: EmrStepDetail


class SessionStartedEvent(Envelope):
    detail: bus.SessionDetail


class JobRetryDueEvent(Envelope):
    detail: bus.JobTimerDetail


class JobTimedOutEvent(Envelope):
    detail: bus.JobTimerDetail


class SessionTimedOutEvent(Envelope):
    detail: bus.SessionTimerDetail


class CancelRequestedEvent(Envelope):
    detail: bus.CancelDetail


class PauseRequestedEvent(Envelope):
    detail: bus.SessionDetail


class ResumeRequestedEvent(Envelope):
    detail: bus.SessionDetail


LAMBDA_SUCCESS = "Lambda Function Invocation Result - Success"
LAMBDA_FAILURE = "Lambda Function Invocation Result - Failure"

MODELS: dict[tuple[str, str], type[Envelope]] = {
    ("lambda", LAMBDA_SUCCESS): LambdaSuccessEvent,
    ("lambda", LAMBDA_FAILURE): LambdaFailureEvent,
    ("aws.ecs", "ECS Task State Change"): EcsTaskStateChangeEvent,
    ("aws.states", "Step Functions Execution Status Change"): SfnExecutionStatusChangeEvent,
    ("aws.glue", "Glue Job State Change"): GlueJobStateChangeEvent,
    ("aws.batch", "Batch Job State Change"): BatchJobStateChangeEvent,
    ("aws.emr", "EMR Step Status Change"): EmrStepStatusChangeEvent,
    (bus.SOURCE, bus.SESSION_STARTED): SessionStartedEvent,
    (bus.SOURCE, bus.JOB_RETRY_DUE): JobRetryDueEvent,
    (bus.SOURCE, bus.JOB_TIMED_OUT): JobTimedOutEvent,
    (bus.SOURCE, bus.SESSION_TIMED_OUT): SessionTimedOutEvent,
    (bus.SOURCE, bus.CANCEL_REQUESTED): CancelRequestedEvent,
    (bus.SOURCE, bus.PAUSE_REQUESTED): PauseRequestedEvent,
    (bus.SOURCE, bus.RESUME_REQUESTED): ResumeRequestedEvent,
}
"""The model of each (source, detail-type) the reducer takes."""


# ---------------------------------------------------------------- correlating


def _iso(moment: datetime) -> str:
    """The engine's form of a time: ISO-8601 in UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).isoformat()
    except OverflowError:  # a time at the edge of the calendar: keep its own offset
        return moment.isoformat()


def _env(variables: list[EnvironmentVariable], name: str) -> str | None:
    return next((v.value for v in variables if v.name == name), None)


def _payload_dispatch_id(document: Any) -> str | None:
    """``bunsui.dispatch_id`` of a payload or execution input (an object)."""
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):
            return None
    ours = document.get("bunsui") if isinstance(document, Mapping) else None
    found = ours.get("dispatch_id") if isinstance(ours, Mapping) else None
    return found if isinstance(found, str) else None


def _clip(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _joined(*parts: Any) -> str:
    return ": ".join(str(p) for p in parts if p not in (None, ""))


class Correlator:
    """Reads EventBridge events into engine events; keep one per Lambda container.

    Args:
        clients: For the lookups some events need (Glue runs, ECS task
            definitions, Step Functions executions) and the outputs in S3.
        settings: Its ``output_bucket`` locates an EMR step's output; without
            settings, EMR outputs are not read.
    """

    def __init__(self, clients: Clients, settings: Settings | None = None) -> None:
        self.clients = clients
        self.settings = settings
        self._essential: dict[str, frozenset[str]] = {}
        self._readers: dict[type[Envelope], Callable[[Any], Event | Ignored]] = {
            LambdaSuccessEvent: self._lambda,
            LambdaFailureEvent: self._lambda,
            EcsTaskStateChangeEvent: self._ecs,
            SfnExecutionStatusChangeEvent: self._step_function,
            GlueJobStateChangeEvent: self._glue,
            BatchJobStateChangeEvent: self._batch,
            EmrStepStatusChangeEvent: self._emr,
        }

    def engine_event(self, raw: Any) -> Event | None:
        """The engine event of ``raw``, or None (the reason logged at INFO)."""
        found = self.read(raw)
        if isinstance(found, Ignored):
            _log.info("event ignored: %s", found.reason)
            return None
        return found

    def read(self, raw: Any) -> Event | Ignored:
        """The engine event of ``raw``, or why it is none.

        Raises:
            Throttled: a lookup or the output read was throttled.
            CorrelationFailed: AWS refused a lookup this event needs.
        """
        if not isinstance(raw, Mapping):
            return Ignored(f"not an EventBridge event: {type(raw).__name__}")
        source, detail_type = raw.get("source"), raw.get("detail-type")
        if not isinstance(source, str) or not isinstance(detail_type, str):
            return Ignored("not an EventBridge event: no source or detail-type")
        model = MODELS.get((source, detail_type))
        if model is None:
            return Ignored(f"not for the reducer: source {source!r}, detail-type {detail_type!r}")
        try:
            parsed = model.model_validate(raw)
        except ValidationError as exc:
            problem = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]
            )
            return Ignored(f"malformed {detail_type} event: {problem}")
        reader = self._readers.get(model)
        if reader is None:  # one of Bunsui's own
            return bus.event_from_detail(detail_type, parsed.detail, _iso(parsed.time))
        return reader(parsed)

    def _finished(
        self,
        dispatch_id: str | None,
        envelope: Envelope,
        what: str,
        *,
        result: Any = None,
        error: str | None = None,
        handle: str | None = None,
        output: str | None = None,
    ) -> AttemptFinished | Ignored:
        """The attempt's end; a succeeded container job's ``output`` URI read for its result
        (once the dispatch id is known to be Bunsui's)."""
        if dispatch_id is None:
            return Ignored(f"{what}: no Bunsui dispatch id (not started by Bunsui)")
        try:
            session_id, key, attempt = parse_dispatch_id(dispatch_id)
        except ValueError as exc:
            return Ignored(f"{what}: {exc}")
        if error is None and output is not None:
            result, error = self._output(output)
        return AttemptFinished(
            session_id,
            key,
            attempt,
            _iso(envelope.time),
            result=result,
            error=_clip(error) if error is not None else None,
            handle=handle,
        )

    # ------------------------------------------------------------ lambda

    def _lambda(self, event: LambdaSuccessEvent | LambdaFailureEvent) -> Event | Ignored:
        detail = event.detail
        context = detail.request_context
        what = f"Lambda request {context.request_id}"
        dispatch_id = _payload_dispatch_id(detail.request_payload)
        if event.detail_type == LAMBDA_SUCCESS:
            return self._finished(
                dispatch_id,
                event,
                what,
                result=detail.response_payload,
                handle=context.request_id,
            )
        return self._finished(
            dispatch_id, event, what, error=_lambda_error(detail), handle=context.request_id
        )

    # ------------------------------------------------------------ ecs

    def _ecs(self, event: EcsTaskStateChangeEvent) -> Event | Ignored:
        task = event.detail
        what = f"ECS task {task.task_arn}"
        if task.last_status != "STOPPED":
            return Ignored(f"{what} is {task.last_status}, not STOPPED")
        variables = [v for o in task.overrides.container_overrides for v in o.environment]
        dispatch_id = _env(variables, "BUNSUI_DISPATCH_ID")
        if dispatch_id is None:
            return Ignored(f"{what}: no Bunsui dispatch id (not started by Bunsui)")
        return self._finished(
            dispatch_id,
            event,
            what,
            error=self._ecs_error(task),
            handle=task.task_arn,
            output=_env(variables, "BUNSUI_OUTPUT"),
        )

    def _ecs_error(self, task: EcsTaskDetail) -> str | None:
        """Why a stopped task failed; None when its essential containers exited 0."""
        stopped = _joined(task.stop_code, task.stopped_reason) or "no reason given"
        if task.stop_code not in (None, "EssentialContainerExited"):
            return f"task stopped ({stopped})"
        ours = {o.name for o in task.overrides.container_overrides if o.name}
        essential = self._essential_containers(task.task_definition_arn) or ours
        judged = [c for c in task.containers if c.name in essential] or task.containers
        if not judged:
            return f"task stopped with no container ({stopped})"
        failures = []
        for container in judged:
            if container.exit_code == 0:
                continue
            text = f"container '{container.name}' " + (
                f"exited with code {container.exit_code}"
                if container.exit_code is not None
                else "did not run"
            )
            failures.append(text + (f": {container.reason}" if container.reason else ""))
        if not failures:
            return None
        never_ran = any(c.exit_code is None for c in judged)
        return "; ".join(failures) + (f" ({stopped})" if never_ran else "")

    def _essential_containers(self, arn: str | None) -> frozenset[str]:
        """The essential containers of a task definition revision (cached: revisions never
        change); empty when it cannot be read (the job's own container is judged then)."""
        if not arn:
            return frozenset()
        if arn not in self._essential:
            try:
                answer = self.clients.ecs.describe_task_definition(taskDefinition=arn)
            except (ClientError, BotoCoreError) as exc:
                _log.warning("cannot read task definition %s: %s", arn, exc)
                if isinstance(exc, ClientError) and not is_throttling(exc):
                    self._essential[arn] = frozenset()  # a refusal stays one: ask once
                return frozenset()
            containers = answer.get("taskDefinition", {}).get("containerDefinitions", [])
            self._essential[arn] = frozenset(
                c["name"] for c in containers if c.get("essential", True)
            )
        return self._essential[arn]

    # ------------------------------------------------------------ step functions

    def _step_function(self, event: SfnExecutionStatusChangeEvent) -> Event | Ignored:
        execution = event.detail
        what = f"execution {execution.execution_arn}"
        if execution.status not in ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"):
            return Ignored(f"{what} is {execution.status}, not ended")
        document, output = execution.input, execution.output
        left_out = (execution.input_details and not execution.input_details.included) or (
            execution.status == "SUCCEEDED"
            and execution.output_details is not None
            and not execution.output_details.included
        )
        if left_out:
            described = self._describe_execution(execution.execution_arn)
            if described is None:
                return Ignored(f"{what} no longer exists")
            document, output = described.get("input"), described.get("output")
        dispatch_id = _payload_dispatch_id(document)
        handle = execution.execution_arn
        if execution.status != "SUCCEEDED":
            error = _joined(f"execution {execution.status}", execution.error, execution.cause)
            return self._finished(dispatch_id, event, what, error=error, handle=handle)
        try:
            result = json.loads(output) if output is not None else None
        except (ValueError, RecursionError):
            error = f"the execution's output is not JSON: {_clip(output or '', 200)}"
            return self._finished(dispatch_id, event, what, error=error, handle=handle)
        return self._finished(dispatch_id, event, what, result=result, handle=handle)

    def _describe_execution(self, arn: str) -> dict[str, Any] | None:
        try:
            return self.clients.stepfunctions.describe_execution(executionArn=arn)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
                return None
            raise _lookup_failed("stepfunctions DescribeExecution", arn, exc) from exc
        except ParamValidationError:
            return None  # not an execution ARN: not one of ours

    # ------------------------------------------------------------ glue

    def _glue(self, event: GlueJobStateChangeEvent) -> Event | Ignored:
        change = event.detail
        what = f"Glue run {change.job_run_id} of {change.job_name}"
        if change.state not in ("SUCCEEDED", "FAILED", "TIMEOUT", "STOPPED", "ERROR"):
            return Ignored(f"{what} is {change.state}, not ended")
        try:
            answer = self.clients.glue.get_job_run(JobName=change.job_name, RunId=change.job_run_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "EntityNotFoundException":
                return Ignored(f"{what} not found")
            raise _lookup_failed("glue GetJobRun", change.job_run_id, exc) from exc
        except ParamValidationError as exc:
            return Ignored(f"{what}: not a Glue job run ({' '.join(str(exc).split())})")
        job_run = answer.get("JobRun", {})
        arguments = job_run.get("Arguments") or {}
        dispatch_id = arguments.get(DISPATCH_ARGUMENT)
        if dispatch_id is None:
            return Ignored(f"{what}: no Bunsui dispatch id (not started by Bunsui)")
        handle = change.job_run_id
        if change.state != "SUCCEEDED":
            why = job_run.get("ErrorMessage") or change.message
            error = _joined(f"Glue job run {change.state}", why)
            return self._finished(dispatch_id, event, what, error=error, handle=handle)
        output = arguments.get(OUTPUT_ARGUMENT)
        return self._finished(dispatch_id, event, what, handle=handle, output=output)

    # ------------------------------------------------------------ batch

    def _batch(self, event: BatchJobStateChangeEvent) -> Event | Ignored:
        job = event.detail
        what = f"Batch job {job.job_id}"
        if job.array_properties is not None and job.array_properties.index is not None:
            return Ignored(f"{what} is a child of an array job")
        if job.status not in ("SUCCEEDED", "FAILED"):
            return Ignored(f"{what} is {job.status}, not ended")
        variables = job.container.environment if job.container else []
        dispatch_id = job.tags.get(BATCH_TAG) or _env(variables, "BUNSUI_DISPATCH_ID")
        handle = job.job_arn or job.job_id
        if job.status == "FAILED":
            container = job.container or BatchContainer()
            code = f"exit code {container.exit_code}" if container.exit_code is not None else None
            error = _joined("Batch job FAILED", job.status_reason, code, container.reason)
            return self._finished(dispatch_id, event, what, error=error, handle=handle)
        output = _env(variables, "BUNSUI_OUTPUT")
        return self._finished(dispatch_id, event, what, handle=handle, output=output)

    # ------------------------------------------------------------ emr

    def _emr(self, event: EmrStepStatusChangeEvent) -> Event | Ignored:
        step = event.detail
        what = f"EMR step {step.step_id} of {step.cluster_id}"
        if step.state not in ("COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"):
            return Ignored(f"{what} is {step.state}, not ended")
        dispatch_id = emr_dispatch_id(step.name)
        handle = f"{step.cluster_id}/{step.step_id}"
        if step.state != "COMPLETED":
            error = _joined(f"EMR step {step.state}", step.message)
            return self._finished(dispatch_id, event, what, error=error, handle=handle)
        output = None
        if self.settings is not None and dispatch_id is not None and dispatch_id.count("/") >= 2:
            output = output_uri(self.settings.output_bucket, dispatch_id)
        return self._finished(dispatch_id, event, what, handle=handle, output=output)

    # ------------------------------------------------------------ outputs

    def _output(self, uri: str | None) -> tuple[Any, str | None]:
        """The JSON document at ``uri`` (None when there is none) or an error naming it.

        Raises:
            Throttled: S3 asked to slow down.
        """
        if not uri:
            return None, None
        match = re.fullmatch(r"s3://([^/]+)/(.+)", uri)
        if match is None:
            return None, f"BUNSUI_OUTPUT {uri!r} is not an s3:// URI"
        try:
            answer = self.clients.s3.get_object(Bucket=match[1], Key=match[2])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            if is_throttling(exc):
                raise Throttled(f"reading {uri}: {error_line(exc)}") from exc
            return None, f"cannot read the job's output {uri}: {error_line(exc)}"
        except ParamValidationError as exc:
            return None, f"cannot read the job's output {uri}: {' '.join(str(exc).split())}"
        body = answer["Body"]
        try:
            size = answer.get("ContentLength") or 0
            if size > MAX_OUTPUT_BYTES:
                return None, (
                    f"the job's output {uri} is {size} bytes; Bunsui reads at most "
                    f"{MAX_OUTPUT_BYTES} bytes: write a smaller document (or a reference to one)"
                )
            text = body.read(MAX_OUTPUT_BYTES + 1).decode("utf-8")
        except (BotoCoreError, OSError, UnicodeDecodeError) as exc:
            return None, f"cannot read the job's output {uri}: {exc}"
        finally:
            body.close()
        if not text.strip():
            return None, None
        try:
            return json.loads(text), None
        except (ValueError, RecursionError) as exc:
            return None, f"the job's output {uri} is not valid JSON ({exc}); write one document"


def _lambda_error(detail: LambdaDestinationDetail) -> str:
    """The error of a failed invocation: the function's error, or why Lambda gave up."""
    condition = detail.request_context.condition or "failure"
    payload = detail.response_payload
    response = detail.response_context
    if isinstance(payload, Mapping) and (payload.get("errorType") or payload.get("errorMessage")):
        return _joined(payload.get("errorType"), payload.get("errorMessage"))
    if response is not None and response.function_error:
        shown = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        return _joined(f"{response.function_error} function error", shown)
    if condition == "EventAgeExceeded":
        return "Lambda dropped the invocation: it waited longer than the maximum event age"
    if condition == "RetriesExhausted":
        return "Lambda gave up on the invocation after its retries (RetriesExhausted)"
    return f"Lambda invocation failed ({condition})"


def _lookup_failed(operation: str, subject: str, exc: ClientError) -> BunsuiError:
    if is_throttling(exc):
        return Throttled(f"{operation} {subject}: {error_line(exc)}")
    return CorrelationFailed(f"{operation} {subject}: {error_line(exc)}")


def engine_event(raw: Any, clients: Clients, settings: Settings | None = None) -> Event | None:
    """The engine event of an EventBridge event, or None when it is not for the reducer
    (the reason logged); see :class:`Correlator` (keep one to reuse its cache)."""
    return Correlator(clients, settings).engine_event(raw)
