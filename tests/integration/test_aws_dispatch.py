"""AwsDispatcher against moto: what each job type starts, and how stop finds it again.

moto runs ECS, Step Functions, Glue and EMR; Lambda's invoke (Docker in moto)
and Batch (a compute environment in Docker) are answered by botocore's Stubber,
and the few calls moto lacks (Glue BatchStopJobRun, EMR CancelSteps) by a
``before-call`` hook that records what was asked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import ANY, Stubber
from moto import mock_aws
from moto.moto_api import state_manager

from engine.aws.dispatch import (
    AwsDispatcher,
    Throttled,
    batch_job_name,
    client_token,
    emr_dispatch_id,
    emr_step_name,
    execution_arn,
    execution_name,
    output_uri,
    started_by,
)
from engine.aws.settings import Clients, Settings
from engine.errors import DispatchFailed
from engine.ports import Dispatch
from engine.state import JobRun, JobStatus

SESSION = "20240115-5d1c9b2e7a40"
BUCKET = "bunsui-outputs"
SETTINGS = Settings(table="bunsui", output_bucket=BUCKET)


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


@pytest.fixture
def dispatcher(clients: Clients) -> AwsDispatcher:
    return AwsDispatcher(SETTINGS, clients)


def order(job_type: str, inputs: dict[str, Any], key: str = "train", attempt: int = 1) -> Dispatch:
    job_id = key.split("[")[0]
    return Dispatch(
        SESSION, key, job_id, job_type, attempt, inputs, None, f"{SESSION}/{key}/{attempt}"
    )


def run_of(sent: Dispatch) -> JobRun:
    return JobRun(
        SESSION,
        sent.key,
        sent.job_id,
        status=JobStatus.RUNNING,
        attempt=sent.attempt,
        inputs=dict(sent.inputs),
    )


def intercept(client: Any, operation: str, response: dict[str, Any]) -> list[dict[str, Any]]:
    """Answer ``operation`` of ``client`` with ``response``; the parameters of each call."""
    calls: list[dict[str, Any]] = []
    event = client.meta.service_model.service_id.hyphenize()

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("", 200, {}, None), response

    client.meta.events.register(f"before-parameter-build.{event}.{operation}", record)
    client.meta.events.register(f"before-call.{event}.{operation}", answer)
    return calls


# ---------------------------------------------------------------- names


def test_derived_names_fit_the_services_limits_and_differ_per_attempt() -> None:
    first, second = f"{SESSION}/score[12]/1", f"{SESSION}/score[12]/2"
    assert len(started_by(first)) <= 36 and started_by(first).startswith("bunsui-")
    assert len(client_token(first)) == 64
    assert len(execution_name(first)) <= 80
    assert len(batch_job_name(first)) <= 128
    assert started_by(first) != started_by(second)
    assert execution_name(first) != execution_name(second)
    assert emr_dispatch_id(emr_step_name(first, "my step")) == first
    assert emr_dispatch_id("someone else's step") is None
    assert output_uri(BUCKET, first) == f"s3://{BUCKET}/outputs/{SESSION}/score[12]/1.json"
    assert output_uri("", first) is None


def test_execution_arn_drops_a_version_or_alias() -> None:
    machine = "arn:aws:states:us-east-1:123456789012:stateMachine:evaluate"
    expected = "arn:aws:states:us-east-1:123456789012:execution:evaluate:run-1"
    assert execution_arn(machine, "run-1") == expected
    assert execution_arn(machine + ":prod", "run-1") == expected


# ---------------------------------------------------------------- lambda


def test_lambda_is_invoked_asynchronously_with_the_bunsui_identity(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    sent = order("lambda", {"function_name": "fetch", "qualifier": "live", "payload": {"d": 1}})
    payloads = []
    clients.lambda_.meta.events.register(
        "before-parameter-build.lambda.Invoke",
        lambda params, **_: payloads.append(json.loads(params["Payload"])),
    )
    with Stubber(clients.lambda_) as stub:
        stub.add_response(
            "invoke",
            {"StatusCode": 202},
            {
                "FunctionName": "fetch",
                "InvocationType": "Event",
                "Qualifier": "live",
                "Payload": ANY,
            },
        )
        assert dispatcher.dispatch(sent) is None
        stub.assert_no_pending_responses()
    assert payloads == [
        {
            "d": 1,
            "bunsui": {
                "dispatch_id": sent.dispatch_id,
                "session_id": SESSION,
                "job_id": "train",
                "attempt": 1,
            },
        }
    ]


@pytest.mark.parametrize(
    ("payload", "words"),
    [([1, 2], "must be a JSON object"), ({"bunsui": 1}, "reserved"), ("text", "JSON object")],
)
def test_lambda_payload_must_be_an_object_without_a_bunsui_key(
    dispatcher: AwsDispatcher, payload: Any, words: str
) -> None:
    with pytest.raises(DispatchFailed, match=words):
        dispatcher.dispatch(order("lambda", {"function_name": "fetch", "payload": payload}))


def test_a_refused_invoke_is_one_line_naming_service_job_and_code(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    with Stubber(clients.lambda_) as stub:
        stub.add_client_error(
            "invoke", "ResourceNotFoundException", "Function not found: fetch", 404
        )
        with pytest.raises(DispatchFailed) as caught:
            dispatcher.dispatch(order("lambda", {"function_name": "fetch"}))
    text = str(caught.value)
    assert text == (
        "job 'train': lambda Invoke failed: ResourceNotFoundException: Function not found: fetch"
    )
    assert "\n" not in text


def test_throttling_is_retriable_not_a_failed_attempt(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    with Stubber(clients.lambda_) as stub:
        stub.add_client_error("invoke", "TooManyRequestsException", "Rate exceeded", 429)
        with pytest.raises(Throttled) as caught:
            dispatcher.dispatch(order("lambda", {"function_name": "fetch"}))
    assert not isinstance(caught.value, DispatchFailed)


def test_lambda_cannot_be_stopped_and_stop_says_so(
    dispatcher: AwsDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    sent = order("lambda", {"function_name": "fetch"})
    with caplog.at_level(logging.INFO, logger="engine.aws.dispatch"):
        dispatcher.stop(run_of(sent), "lambda")
    assert "cannot be stopped" in caplog.text


def test_custom_jobs_run_only_on_the_local_backend(dispatcher: AwsDispatcher) -> None:
    with pytest.raises(DispatchFailed, match="custom jobs run only on the local backend"):
        dispatcher.dispatch(order("custom", {"command": "echo hi"}))


# ---------------------------------------------------------------- ecs


def _ecs_setup(clients: Clients) -> None:
    """A cluster and a task definition of two containers (moto's awsvpc tasks break on a
    network, so the network configuration is tested on the request alone)."""
    clients.ecs.create_cluster(clusterName="jobs")
    clients.ecs.register_task_definition(
        family="train",
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "main", "image": "train:1", "memory": 256, "essential": True},
            {"name": "log-router", "image": "fluent-bit:1", "memory": 64, "essential": False},
        ],
    )


def _ecs_inputs(**extra: Any) -> dict[str, Any]:
    return {
        "task_definition": "train",
        "cluster": "jobs",
        "launch_type": "FARGATE",
        "environment": {"MODEL": "churn", "DEPTH": "10"},
        "command": ["python", "train.py"],
        "cpu": 1024,
        "memory": "2048",
        **extra,
    }


def test_ecs_runs_one_task_named_by_the_dispatch_id(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    _ecs_setup(clients)
    sent = order("ecs", _ecs_inputs())
    assert dispatcher.dispatch(sent) is None
    arns = clients.ecs.list_tasks(cluster="jobs", startedBy=started_by(sent.dispatch_id))
    [task] = clients.ecs.describe_tasks(cluster="jobs", tasks=arns["taskArns"])["tasks"]
    assert task["startedBy"] == started_by(sent.dispatch_id)
    assert task["launchType"] == "FARGATE"
    [override] = task["overrides"]["containerOverrides"]
    assert override["name"] == "main"  # the task definition's first container
    assert override["command"] == ["python", "train.py"]
    assert {v["name"]: v["value"] for v in override["environment"]} == {
        "MODEL": "churn",
        "DEPTH": "10",
        "BUNSUI_DISPATCH_ID": sent.dispatch_id,
        "BUNSUI_SESSION_ID": SESSION,
        "BUNSUI_JOB_ID": "train",
        "BUNSUI_ATTEMPT": "1",
        "BUNSUI_OUTPUT": f"s3://{BUCKET}/outputs/{SESSION}/train/1.json",
    }


def test_ecs_request_carries_placement_network_and_sizes(dispatcher: AwsDispatcher) -> None:
    strategy = [{"capacity_provider": "FARGATE_SPOT", "weight": 3}]
    network = {"subnets": ["subnet-1"], "security_groups": ["sg-1"], "assign_public_ip": "ENABLED"}
    inputs = _ecs_inputs(
        launch_type=None, capacity_provider_strategy=strategy, network_configuration=network
    )
    sent = order("ecs", inputs)
    request = dispatcher.ecs_request(sent, "main")
    assert "launchType" not in request
    assert request["capacityProviderStrategy"] == [
        {"capacityProvider": "FARGATE_SPOT", "weight": 3, "base": 0}
    ]
    assert request["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": ["subnet-1"],
            "securityGroups": ["sg-1"],
            "assignPublicIp": "ENABLED",
        }
    }
    assert request["overrides"]["cpu"] == "1024" and request["overrides"]["memory"] == "2048"
    assert request["clientToken"] == client_token(sent.dispatch_id)
    assert request["count"] == 1


def test_ecs_placement_failures_fail_the_attempt_with_the_reason(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    sent = order("ecs", _ecs_inputs(container_name="main"))
    failure = {"arn": "arn:aws:ecs:us-east-1:1:cluster/jobs", "reason": "RESOURCE:MEMORY"}
    with Stubber(clients.ecs) as stub:
        stub.add_response("run_task", {"tasks": [], "failures": [failure]})
        with pytest.raises(DispatchFailed, match="started no task: RESOURCE:MEMORY"):
            dispatcher.dispatch(sent)


def test_ecs_unknown_cluster_is_a_failed_dispatch(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    _ecs_setup(clients)
    with pytest.raises(DispatchFailed, match=r"job 'train': ecs RunTask failed: ClusterNotFound"):
        dispatcher.dispatch(order("ecs", _ecs_inputs(cluster="nowhere")))


def test_ecs_stop_finds_the_task_by_started_by(dispatcher: AwsDispatcher, clients: Clients) -> None:
    _ecs_setup(clients)
    mine, other = order("ecs", _ecs_inputs()), order("ecs", _ecs_inputs(), key="other")
    dispatcher.dispatch(mine)
    dispatcher.dispatch(other)
    dispatcher.stop(run_of(mine), "ecs")
    tasks = clients.ecs.describe_tasks(
        cluster="jobs", tasks=clients.ecs.list_tasks(cluster="jobs")["taskArns"]
    )["tasks"]
    stopped = {t["startedBy"]: t["desiredStatus"] for t in tasks}
    assert stopped == {
        started_by(mine.dispatch_id): "STOPPED",
        started_by(other.dispatch_id): "RUNNING",
    }


def test_stop_never_raises_for_a_refusal_but_does_for_throttling(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    sent = order("ecs", _ecs_inputs())
    with Stubber(clients.ecs) as stub:
        stub.add_client_error("list_tasks", "ClusterNotFoundException", "Cluster not found.")
        dispatcher.stop(run_of(sent), "ecs")  # logged, not raised
        stub.add_client_error("list_tasks", "ThrottlingException", "Rate exceeded", 400)
        with pytest.raises(Throttled):
            dispatcher.stop(run_of(sent), "ecs")
    dispatcher.stop(run_of(sent).but(inputs=None), "ecs")  # no inputs recorded: nothing to find


# ---------------------------------------------------------------- step functions


def _state_machine(clients: Clients) -> str:
    definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    return clients.stepfunctions.create_state_machine(
        name="evaluate",
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]


def test_step_function_starts_a_named_execution_and_a_resend_is_idempotent(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    machine = _state_machine(clients)
    sent = order("step_function", {"state_machine_arn": machine, "input": {"t": 0.85}})
    dispatcher.dispatch(sent)
    arn = execution_arn(machine, execution_name(sent.dispatch_id))
    described = clients.stepfunctions.describe_execution(executionArn=arn)
    assert json.loads(described["input"])["bunsui"]["dispatch_id"] == sent.dispatch_id
    assert json.loads(described["input"])["t"] == 0.85
    dispatcher.dispatch(sent)  # same name, same input while running
    clients.stepfunctions.stop_execution(executionArn=arn)
    dispatcher.dispatch(sent)  # ExecutionAlreadyExists: started before, nothing new
    assert len(clients.stepfunctions.list_executions(stateMachineArn=machine)["executions"]) == 1


def test_step_function_stop_aborts_the_derived_execution(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    machine = _state_machine(clients)
    sent = order("step_function", {"state_machine_arn": machine})
    dispatcher.dispatch(sent)
    dispatcher.stop(run_of(sent), "step_function")
    arn = execution_arn(machine, execution_name(sent.dispatch_id))
    assert clients.stepfunctions.describe_execution(executionArn=arn)["status"] == "ABORTED"
    dispatcher.stop(run_of(sent).but(attempt=9), "step_function")  # no such execution: quiet


def test_step_function_unknown_machine_is_a_failed_dispatch(dispatcher: AwsDispatcher) -> None:
    machine = "arn:aws:states:us-east-1:123456789012:stateMachine:missing"
    with pytest.raises(DispatchFailed, match="stepfunctions StartExecution failed"):
        dispatcher.dispatch(order("step_function", {"state_machine_arn": machine}))


# ---------------------------------------------------------------- glue


@pytest.fixture
def glue_runs_keep_running() -> Iterator[None]:
    """moto's Glue runs succeed at once by default; a stop needs one still running."""
    state_manager.set_transition("glue::job_run", {"progression": "manual", "times": 1000})
    yield
    state_manager.unset_transition("glue::job_run")


@pytest.mark.usefixtures("glue_runs_keep_running")
def test_glue_run_carries_the_dispatch_id_and_output_arguments(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    clients.glue.create_job(
        Name="prepare", Role="glue-role", Command={"Name": "glueetl", "ScriptLocation": "s3://x"}
    )
    inputs = {
        "job_name": "prepare",
        "arguments": {"--day": "2024-01-14"},
        "worker_type": "G.1X",
        "number_of_workers": 4,
    }
    sent = order("glue", inputs, key="prepare")
    dispatcher.dispatch(sent)
    stops = intercept(clients.glue, "BatchStopJobRun", {"SuccessfulSubmissions": []})
    dispatcher.stop(run_of(sent), "glue")
    [job_run] = clients.glue.get_job_runs(JobName="prepare")["JobRuns"]
    assert job_run["Arguments"] == {
        "--day": "2024-01-14",
        "--bunsui-dispatch-id": sent.dispatch_id,
        "--bunsui-output": f"s3://{BUCKET}/outputs/{SESSION}/prepare/1.json",
    }
    assert job_run["WorkerType"] == "G.1X" and job_run["NumberOfWorkers"] == 4
    assert stops == [{"JobName": "prepare", "JobRunIds": [job_run["Id"]]}]
    dispatcher.stop(run_of(sent).but(attempt=2), "glue")  # another attempt: nothing matches
    assert len(stops) == 1


# ---------------------------------------------------------------- batch


def test_batch_submit_names_tags_and_overrides(dispatcher: AwsDispatcher, clients: Clients) -> None:
    inputs = {
        "job_definition": "score:4",
        "job_queue": "bunsui-queue",
        "parameters": {"day": "2024-01-15"},
        "container_overrides": {
            "command": ["python", "score.py"],
            "environment": {"LEVEL": "debug"},
            "resource_requirements": [{"type": "VCPU", "value": "2"}],
        },
        "array_size": 4,
    }
    sent = order("batch", inputs, key="score[2]")
    did = sent.dispatch_id
    expected = {
        "jobName": batch_job_name(did),
        "jobQueue": "bunsui-queue",
        "jobDefinition": "score:4",
        "parameters": {"day": "2024-01-15"},
        "arrayProperties": {"size": 4},
        "tags": {"bunsui:dispatch-id": did},
        "containerOverrides": {
            "command": ["python", "score.py"],
            "resourceRequirements": [{"type": "VCPU", "value": "2"}],
            "environment": [
                {"name": "LEVEL", "value": "debug"},
                {"name": "BUNSUI_DISPATCH_ID", "value": did},
                {"name": "BUNSUI_SESSION_ID", "value": SESSION},
                {"name": "BUNSUI_JOB_ID", "value": "score"},
                {"name": "BUNSUI_ATTEMPT", "value": "1"},
                {
                    "name": "BUNSUI_OUTPUT",
                    "value": f"s3://{BUCKET}/outputs/{SESSION}/score[2]/1.json",
                },
            ],
        },
    }
    answer = {"jobName": batch_job_name(did), "jobId": "job-1", "jobArn": "arn:job-1"}
    with Stubber(clients.batch) as stub:
        stub.add_response("submit_job", answer, expected)
        dispatcher.dispatch(sent)
        stub.assert_no_pending_responses()


def test_batch_stop_terminates_the_jobs_of_its_name_still_running(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    sent = order("batch", {"job_definition": "score", "job_queue": "q"})
    name = batch_job_name(sent.dispatch_id)
    listed = {
        "jobSummaryList": [
            {"jobId": "a", "jobName": name, "status": "RUNNING"},
            {"jobId": "b", "jobName": name, "status": "SUCCEEDED"},
        ]
    }
    with Stubber(clients.batch) as stub:
        stub.add_response(
            "list_jobs",
            listed,
            {"jobQueue": "q", "filters": [{"name": "JOB_NAME", "values": [name]}]},
        )
        stub.add_response("terminate_job", {}, {"jobId": "a", "reason": "stopped by Bunsui"})
        dispatcher.stop(run_of(sent), "batch")
        stub.assert_no_pending_responses()


# ---------------------------------------------------------------- emr


def test_emr_step_is_named_by_the_dispatch_id_and_stop_cancels_it(
    dispatcher: AwsDispatcher, clients: Clients
) -> None:
    cluster = clients.emr.run_job_flow(
        Name="analytics",
        ReleaseLabel="emr-7.0.0",
        Instances={"InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    config = {
        "name": "aggregate",
        "args": ["spark-submit", "s3://code/aggregate.py"],
        "properties": {"k": "v"},
        "action_on_failure": "CONTINUE",
    }
    sent = order("emr", {"cluster_id": cluster, "step_config": config}, key="aggregate")
    dispatcher.dispatch(sent)
    [step] = clients.emr.list_steps(ClusterId=cluster)["Steps"]
    assert step["Name"] == emr_step_name(sent.dispatch_id, "aggregate")
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"] == ["spark-submit", "s3://code/aggregate.py"]
    assert step["Config"]["Properties"] == {
        "k": "v",
        "bunsui.dispatch_id": sent.dispatch_id,
        "bunsui.output": f"s3://{BUCKET}/outputs/{SESSION}/aggregate/1.json",
    }

    cancels = intercept(clients.emr, "CancelSteps", {"CancelStepsInfoList": []})
    dispatcher.stop(run_of(sent), "emr")
    assert cancels == [
        {"ClusterId": cluster, "StepIds": [step["Id"]], "StepCancellationOption": "SEND_INTERRUPT"}
    ]
