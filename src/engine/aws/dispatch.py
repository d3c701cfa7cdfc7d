"""The Dispatcher port on AWS: each job type started through its service's API.

Nothing is written at dispatch (the per-job write budget): every start carries
the dispatch id ``session/key/attempt`` where the completion event brings it
back (:mod:`engine.aws.correlate`), and every name Bunsui gives the work is
derived from it, so :meth:`AwsDispatcher.stop` finds the work again without a
recorded handle:

========== ======================================= ===================================
type       carries the dispatch id in              derived name
========== ======================================= ===================================
lambda     the payload's ``bunsui`` object         (none: Lambda cannot be stopped)
ecs        the container's ``BUNSUI_*`` variables  ``startedBy``, ``clientToken``
step_...   the input's ``bunsui`` object           the execution ``name``
glue       argument ``--bunsui-dispatch-id``       (found by its arguments)
batch      tag ``bunsui:dispatch-id`` and env      ``jobName``
emr        the step name ``bunsui:<dispatch id>``  the step name
========== ======================================= ===================================

A job whose service gives no idempotency token (lambda, glue, batch, emr)
relies on the reducer claiming each attempt once before it dispatches; ECS
takes ``clientToken`` and Step Functions the execution name, so a re-sent
order starts nothing twice there.

Container-like jobs (ecs, batch, glue, emr) are told where they may write one
JSON document that becomes the job's output:
``s3://<output bucket>/outputs/<session>/<key>/<attempt>.json`` (the
``BUNSUI_OUTPUT`` variable, ``--bunsui-output`` argument, ``bunsui.output``
step property).

A lambda payload and a step_function input must therefore be JSON objects
without a ``bunsui`` key of their own (the local backend is laxer: it passes
other values through); anything else fails the dispatch with a clear line.

Errors: a service refusing the request is :class:`~engine.errors.DispatchFailed`
(the attempt fails with one line naming the service, the job, the error code
and message). Throttling is not the job's fault: it raises :class:`Throttled`
and the caller chooses. A start comes after its attempt is claimed, so an
event delivered again would find the attempt claimed and start nothing: the
reducer's caller should rather fail the attempt (its retries apply), while
:meth:`AwsDispatcher.stop`, the timers, the bus and the correlation, which
change nothing before they call AWS, can let it escape for a redelivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from engine.aws.settings import Clients, Settings
from engine.errors import BunsuiError, DispatchFailed
from engine.ports import Dispatch
from engine.state import JobRun

_log = logging.getLogger(__name__)

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
"""Error codes that mean "slow down" (botocore's standard retry list, minus codes some
services use for quotas); HTTP 429 counts too."""

DISPATCH_ARGUMENT = "--bunsui-dispatch-id"
OUTPUT_ARGUMENT = "--bunsui-output"
BATCH_TAG = "bunsui:dispatch-id"
EMR_PREFIX = "bunsui:"
STOP_REASON = "stopped by Bunsui"


class Throttled(BunsuiError):
    """An AWS API asked Bunsui to slow down, after botocore's own retries.

    Retriable, not a failure of the job: a handler that lets it escape makes
    its Lambda fail, and EventBridge delivers the event again later (its
    retry policy backs off). Raised by the dispatcher, its ``stop``, the
    timers, the bus, the secrets and the correlation.
    """


def is_throttling(exc: ClientError) -> bool:
    """Whether a ClientError means "slow down" rather than "no"."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in THROTTLING_CODES or status == 429


def error_line(exc: ClientError) -> str:
    """``Code: message`` of a ClientError."""
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Unknown')}: {error.get('Message', str(exc))}"


# ---------------------------------------------------------------- names


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def dispatch_id_of(run: JobRun) -> str:
    """The dispatch id of a run's current attempt (as the reducer built it)."""
    return f"{run.session_id}/{run.key}/{run.attempt}"


def started_by(dispatch_id: str) -> str:
    """ECS ``startedBy`` of an attempt (36 characters; ECS allows 128)."""
    return "bunsui-" + _digest(dispatch_id, 29)


def client_token(dispatch_id: str) -> str:
    """ECS ``clientToken`` of an attempt (64 characters, the maximum)."""
    return _digest(dispatch_id, 64)


def execution_name(dispatch_id: str) -> str:
    """The Step Functions execution name of an attempt (71 characters; 80 allowed)."""
    return "bunsui-" + _digest(dispatch_id, 64)


def batch_job_name(dispatch_id: str) -> str:
    """The AWS Batch job name of an attempt (71 characters; 128 allowed)."""
    return "bunsui-" + _digest(dispatch_id, 64)


def emr_step_name(dispatch_id: str, name: str | None = None) -> str:
    """The EMR step name: ``bunsui:<dispatch id>``, then the user's name after a space."""
    return f"{EMR_PREFIX}{dispatch_id}" + (f" {name}" if name else "")


def emr_dispatch_id(step_name: str) -> str | None:
    """The dispatch id in an EMR step name Bunsui gave, else None."""
    if not step_name.startswith(EMR_PREFIX):
        return None
    return step_name[len(EMR_PREFIX) :].split(" ", 1)[0] or None


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of execution ``name`` of a state machine (a version or alias qualifier dropped)."""
    base = ":".join(state_machine_arn.split(":")[:7])
    return base.replace(":stateMachine:", ":execution:", 1) + f":{name}"


def output_uri(bucket: str, dispatch_id: str) -> str | None:
    """Where an attempt may write its JSON output; None without an output bucket."""
    if not bucket:
        return None
    session_id, key, attempt = dispatch_id.rsplit("/", 2)
    return f"s3://{bucket}/outputs/{session_id}/{key}/{attempt}.json"


def identity(order: Dispatch) -> dict[str, Any]:
    """The ``bunsui`` object added to a payload or input, as the local runner adds it."""
    return {
        "dispatch_id": order.dispatch_id,
        "session_id": order.session_id,
        "job_id": order.job_id,
        "attempt": order.attempt,
    }


def _variables(order: Dispatch, output: str | None) -> dict[str, str]:
    """The ``BUNSUI_*`` variables of a container, as the local runner sets them."""
    names = {
        "BUNSUI_DISPATCH_ID": order.dispatch_id,
        "BUNSUI_SESSION_ID": order.session_id,
        "BUNSUI_JOB_ID": order.job_id,
        "BUNSUI_ATTEMPT": str(order.attempt),
    }
    if output:
        names["BUNSUI_OUTPUT"] = output
    return names


def _environment(user: Mapping[str, Any] | None, ours: Mapping[str, str]) -> list[dict[str, str]]:
    """ECS/Batch ``environment``: the job's variables, then Bunsui's (which win)."""
    merged = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (user or {}).items()}
    merged.update(ours)
    return [{"name": name, "value": value} for name, value in merged.items()]


# ---------------------------------------------------------------- the dispatcher


class AwsDispatcher:
    """Implements the Dispatcher port with the services' APIs.

    Args:
        settings: ``output_bucket`` is where container jobs write their output.
        clients: The boto3 clients.
    """

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients
        self._starters: dict[str, Callable[[Dispatch], None]] = {
            "lambda": self._lambda,
            "ecs": self._ecs,
            "step_function": self._step_function,
            "glue": self._glue,
            "batch": self._batch,
            "emr": self._emr,
        }
        self._stoppers: dict[str, Callable[[JobRun, Mapping[str, Any], str], None]] = {
            "ecs": self._stop_ecs,
            "step_function": self._stop_step_function,
            "glue": self._stop_glue,
            "batch": self._stop_batch,
            "emr": self._stop_emr,
        }
        self._finders: dict[str, Callable[[Mapping[str, Any], str], bool]] = {
            "ecs": self._ecs_started,
            "step_function": self._step_function_started,
            "glue": self._glue_started,
            "batch": self._batch_started,
            "emr": self._emr_started,
        }

    def dispatch(self, order: Dispatch) -> None:
        """Start the attempt; None: the completion event brings the service's handle.

        Raises:
            DispatchFailed: the service refused it, or the job cannot run on AWS.
            Throttled: the service asked to slow down (retry the event later).
        """
        if order.job_type == "custom":
            raise DispatchFailed(
                f"job '{order.key}': custom jobs run only on the local backend; "
                "on AWS, run the command as an ecs or batch job."
            )
        starter = self._starters.get(order.job_type)
        if starter is None:
            raise DispatchFailed(
                f"job '{order.key}': job type '{order.job_type}' cannot run on AWS."
            )
        starter(order)

    def _call(self, order: Dispatch, service: str, operation: str, call: Callable[[], Any]) -> Any:
        """Run one API call; its errors as DispatchFailed (one line) or Throttled."""
        try:
            return call()
        except ClientError as exc:
            raise _refusal(order, service, operation, exc) from exc
        except ParamValidationError as exc:
            detail = " ".join(str(exc).split())
            raise DispatchFailed(
                f"job '{order.key}': {service} {operation} rejected the parameters: {detail}"
            ) from exc

    def _output(self, order: Dispatch) -> str | None:
        return output_uri(self.settings.output_bucket, order.dispatch_id)

    # ------------------------------------------------------------ lambda

    def _lambda(self, order: Dispatch) -> None:
        inputs = order.inputs
        payload = _with_identity(order, inputs.get("payload", {}), "payload")
        try:
            body = json.dumps(payload, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise DispatchFailed(f"job '{order.key}': the payload is not JSON ({exc}).") from exc
        request: dict[str, Any] = {
            "FunctionName": inputs["function_name"],
            "InvocationType": "Event",
            "Payload": body.encode(),
        }
        if inputs.get("qualifier"):
            request["Qualifier"] = inputs["qualifier"]
        self._call(order, "lambda", "Invoke", lambda: self.clients.lambda_.invoke(**request))

    # ------------------------------------------------------------ ecs

    def ecs_request(self, order: Dispatch, container: str) -> dict[str, Any]:
        """The RunTask request of an attempt whose job container is ``container``."""
        inputs = order.inputs
        override: dict[str, Any] = {
            "name": container,
            "environment": _environment(
                inputs.get("environment"), _variables(order, self._output(order))
            ),
        }
        if inputs.get("command") is not None:
            override["command"] = list(inputs["command"])
        overrides: dict[str, Any] = {"containerOverrides": [override]}
        for name in ("cpu", "memory"):
            if inputs.get(name) is not None:
                overrides[name] = str(inputs[name])
        request: dict[str, Any] = {
            "taskDefinition": inputs["task_definition"],
            "count": 1,
            "overrides": overrides,
            "startedBy": started_by(order.dispatch_id),
            "clientToken": client_token(order.dispatch_id),
        }
        if inputs.get("cluster"):
            request["cluster"] = inputs["cluster"]
        if inputs.get("launch_type"):
            request["launchType"] = str(inputs["launch_type"])
        if inputs.get("capacity_provider_strategy"):
            request["capacityProviderStrategy"] = [
                {
                    "capacityProvider": item["capacity_provider"],
                    "weight": item.get("weight", 1),
                    "base": item.get("base", 0),
                }
                for item in inputs["capacity_provider_strategy"]
            ]
        if inputs.get("platform_version"):
            request["platformVersion"] = inputs["platform_version"]
        network = inputs.get("network_configuration")
        if network:
            vpc: dict[str, Any] = {
                "subnets": list(network["subnets"]),
                "assignPublicIp": str(network.get("assign_public_ip", "DISABLED")),
            }
            if network.get("security_groups"):
                vpc["securityGroups"] = list(network["security_groups"])
            request["networkConfiguration"] = {"awsvpcConfiguration": vpc}
        return request

    def _ecs(self, order: Dispatch) -> None:
        container = order.inputs.get("container_name") or self._first_container(order)
        request = self.ecs_request(order, container)
        answer = self._call(order, "ecs", "RunTask", lambda: self.clients.ecs.run_task(**request))
        if answer.get("failures") and not answer.get("tasks"):
            failure = answer["failures"][0]
            why = failure.get("reason", "unknown reason")
            if failure.get("detail"):
                why += f" ({failure['detail']})"
            raise DispatchFailed(f"job '{order.key}': ecs RunTask started no task: {why}")

    def _first_container(self, order: Dispatch) -> str:
        """The task definition's first container: the one overrides apply to by default."""
        definition = order.inputs["task_definition"]
        answer = self._call(
            order,
            "ecs",
            "DescribeTaskDefinition",
            lambda: self.clients.ecs.describe_task_definition(taskDefinition=definition),
        )
        containers = answer.get("taskDefinition", {}).get("containerDefinitions", [])
        if not containers:
            raise DispatchFailed(
                f"job '{order.key}': ecs task definition {definition} has no container."
            )
        return containers[0]["name"]

    # ------------------------------------------------------------ step functions

    def _step_function(self, order: Dispatch) -> None:
        inputs = order.inputs
        document = _with_identity(order, inputs.get("input", {}), "input")
        try:
            body = json.dumps(document, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise DispatchFailed(f"job '{order.key}': the input is not JSON ({exc}).") from exc
        request = {
            "stateMachineArn": inputs["state_machine_arn"],
            "name": execution_name(order.dispatch_id),
            "input": body,
        }
        client = self.clients.stepfunctions
        try:
            client.start_execution(**request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":
                return  # this attempt was started before: a re-sent order starts nothing
            raise _refusal(order, "stepfunctions", "StartExecution", exc) from exc

    # ------------------------------------------------------------ glue

    def glue_request(self, order: Dispatch) -> dict[str, Any]:
        """The StartJobRun request of an attempt."""
        inputs = order.inputs
        arguments = {**(inputs.get("arguments") or {}), DISPATCH_ARGUMENT: order.dispatch_id}
        output = self._output(order)
        if output:
            arguments[OUTPUT_ARGUMENT] = output
        request: dict[str, Any] = {"JobName": inputs["job_name"], "Arguments": arguments}
        if inputs.get("worker_type"):
            request["WorkerType"] = str(inputs["worker_type"])
        if inputs.get("number_of_workers") is not None:
            request["NumberOfWorkers"] = inputs["number_of_workers"]
        return request

    def _glue(self, order: Dispatch) -> None:
        request = self.glue_request(order)
        self._call(order, "glue", "StartJobRun", lambda: self.clients.glue.start_job_run(**request))

    # ------------------------------------------------------------ batch

    def batch_request(self, order: Dispatch) -> dict[str, Any]:
        """The SubmitJob request of an attempt."""
        inputs = order.inputs
        given = inputs.get("container_overrides") or {}
        overrides: dict[str, Any] = {
            "environment": _environment(
                given.get("environment"), _variables(order, self._output(order))
            )
        }
        if given.get("command") is not None:
            overrides["command"] = list(given["command"])
        if given.get("resource_requirements"):
            overrides["resourceRequirements"] = [
                {"type": item["type"], "value": item["value"]}
                for item in given["resource_requirements"]
            ]
        if given.get("instance_type"):
            overrides["instanceType"] = given["instance_type"]
        request: dict[str, Any] = {
            "jobName": batch_job_name(order.dispatch_id),
            "jobQueue": inputs["job_queue"],
            "jobDefinition": inputs["job_definition"],
            "containerOverrides": overrides,
            "tags": {BATCH_TAG: order.dispatch_id},
        }
        if inputs.get("parameters"):
            request["parameters"] = dict(inputs["parameters"])
        if inputs.get("array_size") is not None:
            request["arrayProperties"] = {"size": inputs["array_size"]}
        return request

    def _batch(self, order: Dispatch) -> None:
        request = self.batch_request(order)
        self._call(order, "batch", "SubmitJob", lambda: self.clients.batch.submit_job(**request))

    # ------------------------------------------------------------ emr

    def emr_request(self, order: Dispatch) -> dict[str, Any]:
        """The AddJobFlowSteps request of an attempt."""
        config = order.inputs["step_config"]
        properties = {
            **(config.get("properties") or {}),
            "bunsui.dispatch_id": order.dispatch_id,
        }
        output = self._output(order)
        if output:
            properties["bunsui.output"] = output
        jar: dict[str, Any] = {
            "Jar": config.get("jar", "command-runner.jar"),
            "Args": list(config.get("args") or []),
            "Properties": [{"Key": k, "Value": v} for k, v in properties.items()],
        }
        if config.get("main_class"):
            jar["MainClass"] = config["main_class"]
        step = {
            "Name": emr_step_name(order.dispatch_id, config.get("name")),
            "ActionOnFailure": str(config.get("action_on_failure", "CONTINUE")),
            "HadoopJarStep": jar,
        }
        return {"JobFlowId": order.inputs["cluster_id"], "Steps": [step]}

    def _emr(self, order: Dispatch) -> None:
        request = self.emr_request(order)
        self._call(
            order,
            "emr",
            "AddJobFlowSteps",
            lambda: self.clients.emr.add_job_flow_steps(**request),
        )

    # ------------------------------------------------------------ looking up

    def started(self, run: JobRun, job_type: str) -> bool | None:
        """Whether the service has the run's current attempt's work, in any state
        (None for Lambda: an asynchronous invocation cannot be looked up).

        Raises:
            Throttled: the service asked to slow down.
        """
        finder = self._finders.get(job_type)
        if finder is None:
            return None
        # None when the lookup failed: not known, so nothing is started again on a guess.
        return _best_effort("looking up", run, job_type, finder)

    def _ecs_started(self, inputs: Mapping[str, Any], dispatch_id: str) -> bool:
        where = {"cluster": inputs["cluster"]} if inputs.get("cluster") else {}
        return any(
            self.clients.ecs.list_tasks(
                **where, startedBy=started_by(dispatch_id), desiredStatus=status
            ).get("taskArns")
            for status in ("RUNNING", "STOPPED")
        )

    def _step_function_started(self, inputs: Mapping[str, Any], dispatch_id: str) -> bool:
        arn = execution_arn(inputs["state_machine_arn"], execution_name(dispatch_id))
        try:
            self.clients.stepfunctions.describe_execution(executionArn=arn)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
                return False
            raise
        return True

    def _glue_started(self, inputs: Mapping[str, Any], dispatch_id: str) -> bool:
        pages = self.clients.glue.get_paginator("get_job_runs").paginate(JobName=inputs["job_name"])
        return any(
            (item.get("Arguments") or {}).get(DISPATCH_ARGUMENT) == dispatch_id
            for page in pages
            for item in page.get("JobRuns", [])
        )

    def _batch_started(self, inputs: Mapping[str, Any], dispatch_id: str) -> bool:
        name = batch_job_name(dispatch_id)
        pages = self.clients.batch.get_paginator("list_jobs").paginate(
            jobQueue=inputs["job_queue"], filters=[{"name": "JOB_NAME", "values": [name]}]
        )
        return any(
            job.get("jobName") == name for page in pages for job in page.get("jobSummaryList", [])
        )

    def _emr_started(self, inputs: Mapping[str, Any], dispatch_id: str) -> bool:
        pages = self.clients.emr.get_paginator("list_steps").paginate(
            ClusterId=inputs["cluster_id"]
        )
        return any(
            emr_dispatch_id(step.get("Name", "")) == dispatch_id
            for page in pages
            for step in page.get("Steps", [])
        )

    # ------------------------------------------------------------ stopping

    def stop(self, run: JobRun, job_type: str) -> None:
        """Stop the run's current attempt where the service allows it (best effort).

        Finds the work from the run's dispatch id and recorded inputs; never
        raises but :class:`Throttled` (a failed stop is logged: the attempt is
        ended by the reducer anyway, and its late completion is ignored).
        """
        stopper = self._stoppers.get(job_type)
        if stopper is None:
            if job_type == "lambda":
                _log.info("%s: a Lambda invocation cannot be stopped", dispatch_id_of(run))
            return
        _best_effort("stopping", run, job_type, lambda inputs, found: stopper(run, inputs, found))

    def _stop_ecs(self, run: JobRun, inputs: Mapping[str, Any], dispatch_id: str) -> None:
        where = {"cluster": inputs["cluster"]} if inputs.get("cluster") else {}
        ecs = self.clients.ecs
        tasks = ecs.list_tasks(
            **where, startedBy=started_by(dispatch_id), desiredStatus="RUNNING"
        ).get("taskArns", [])
        for task in tasks:
            ecs.stop_task(**where, task=task, reason=STOP_REASON)

    def _stop_step_function(self, run: JobRun, inputs: Mapping[str, Any], dispatch_id: str) -> None:
        arn = execution_arn(inputs["state_machine_arn"], execution_name(dispatch_id))
        try:
            self.clients.stepfunctions.stop_execution(
                executionArn=arn, error="Bunsui.Stopped", cause=STOP_REASON
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ExecutionDoesNotExist":
                raise

    def _stop_glue(self, run: JobRun, inputs: Mapping[str, Any], dispatch_id: str) -> None:
        glue = self.clients.glue
        job = inputs["job_name"]
        found: list[str] = []
        for page in glue.get_paginator("get_job_runs").paginate(JobName=job):
            for item in page.get("JobRuns", []):
                ours = (item.get("Arguments") or {}).get(DISPATCH_ARGUMENT) == dispatch_id
                if ours and item.get("JobRunState") in ("STARTING", "RUNNING", "WAITING"):
                    found.append(item["Id"])
        if found:
            glue.batch_stop_job_run(JobName=job, JobRunIds=found)

    def _stop_batch(self, run: JobRun, inputs: Mapping[str, Any], dispatch_id: str) -> None:
        batch = self.clients.batch
        name = batch_job_name(dispatch_id)
        pages = batch.get_paginator("list_jobs").paginate(
            jobQueue=inputs["job_queue"], filters=[{"name": "JOB_NAME", "values": [name]}]
        )
        for page in pages:
            for job in page.get("jobSummaryList", []):
                if job.get("jobName") == name and job.get("status") not in ("SUCCEEDED", "FAILED"):
                    batch.terminate_job(jobId=job["jobId"], reason=STOP_REASON)

    def _stop_emr(self, run: JobRun, inputs: Mapping[str, Any], dispatch_id: str) -> None:
        emr = self.clients.emr
        cluster = inputs["cluster_id"]
        steps: list[str] = []
        pages = emr.get_paginator("list_steps").paginate(
            ClusterId=cluster, StepStates=["PENDING", "RUNNING"]
        )
        for page in pages:
            for step in page.get("Steps", []):
                if emr_dispatch_id(step.get("Name", "")) == dispatch_id:
                    steps.append(step["Id"])
        if steps:
            emr.cancel_steps(
                ClusterId=cluster, StepIds=steps, StepCancellationOption="SEND_INTERRUPT"
            )


def _best_effort(
    doing: str, run: JobRun, job_type: str, call: Callable[[Mapping[str, Any], str], Any]
) -> Any:
    """``call`` with the run's recorded inputs and dispatch id; its result, or None when it
    failed (logged). Throttling alone is raised, so the event is delivered again."""
    inputs = run.inputs if isinstance(run.inputs, Mapping) else {}
    dispatch_id = dispatch_id_of(run)
    try:
        return call(inputs, dispatch_id)
    except ClientError as exc:
        if is_throttling(exc):
            raise Throttled(f"{doing} {dispatch_id}: {error_line(exc)}") from exc
        _log.warning("%s %s (%s) failed: %s", doing, dispatch_id, job_type, error_line(exc))
    except (BotoCoreError, KeyError, TypeError, ValueError) as exc:
        _log.warning("%s %s (%s) failed: %s", doing, dispatch_id, job_type, exc)
    return None


def _with_identity(order: Dispatch, document: Any, field: str) -> dict[str, Any]:
    """The payload or input with the ``bunsui`` object that brings its result back.

    Raises:
        DispatchFailed: it is not a JSON object, or already has a ``bunsui`` key:
            on AWS the completion event finds its job through that key alone.
    """
    if not isinstance(document, Mapping):
        raise DispatchFailed(
            f"job '{order.key}': on AWS the {field} must be a JSON object (Bunsui adds a "
            f"'bunsui' key to it to match the result to the job); wrap the value in an object."
        )
    if "bunsui" in document:
        raise DispatchFailed(
            f"job '{order.key}': the {field} key 'bunsui' is reserved for Bunsui on AWS; rename it."
        )
    return {**document, "bunsui": identity(order)}


def _refusal(order: Dispatch, service: str, operation: str, exc: ClientError) -> BunsuiError:
    """What a service's error means for the attempt: Throttled, or DispatchFailed."""
    if is_throttling(exc):
        return Throttled(
            f"job '{order.key}': {service} {operation} was throttled ({error_line(exc)})"
        )
    return DispatchFailed(f"job '{order.key}': {service} {operation} failed: {error_line(exc)}")
