"""The local runners with real subprocesses and real files: a SAM project, a mapping file,
Lambda handlers, commands, Dockerfiles, stop, and the log book."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.errors import DispatchFailed
from engine.events import AttemptFinished
from engine.local.resolve import (
    CfnLoader,
    CommandTarget,
    HandlerTarget,
    LocalResolver,
    PipelineTarget,
)
from engine.local.runners import LocalDispatcher, LogBook
from engine.ports import Dispatch

NOW = "2026-01-01T00:00:00+00:00"
HANG_GUARD = 30.0
"""Seconds a test waits for a report before it fails: a guard against hangs, not a timing."""

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: {Type: String, Default: test}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Globals:
  Function:
    CodeUri: src/
    Runtime: python3.11
    Timeout: 10
    MemorySize: 256
    Environment:
      Variables:
        STAGE: !Ref Stage
        SHARED: from-globals
Resources:
  DataPreparationFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: !Sub "${AWS::StackName}-data-preparation-function"
      Handler: app.prepare
      Environment:
        Variables:
          TABLE: !Ref Table
          MODE: prep
  EvaluateFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.evaluate
      Policies:
        - DynamoDBReadPolicy: {TableName: !Ref Table}
  FailingFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: failing-function
      Handler: app.fail
  OddFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: odd-function
      Handler: app.odd
  SlowFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: slow-function
      Handler: app.slow
      Timeout: 1
  BrokenFunction:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: broken-function
      Handler: missing_module.handler
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Join ["-", [!Ref "AWS::StackName", table]]
      BillingMode: !If [IsProd, PROVISIONED, PAY_PER_REQUEST]
      KeySchema: [{AttributeName: !Select [0, [pk, sk]], KeyType: HASH}]
Outputs:
  TableArn: {Value: !GetAtt Table.Arn}
"""

APP = """\
import json, logging, os, time

logger = logging.getLogger(__name__)


def prepare(event, context):
    print("preparing", event["model_name"])
    logger.warning("prepared %s", event["model_name"])
    body = {
        "event": event,
        "env": {k: os.environ.get(k) for k in ("STAGE", "SHARED", "MODE", "TABLE", "AWS_REGION")},
        "function_env": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
        "memory_env": os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"],
    }
    return {"statusCode": 200, "body": json.dumps(body)}


def evaluate(event, context):
    first = context.get_remaining_time_in_millis()
    time.sleep(0.05)
    second = context.get_remaining_time_in_millis()
    return {
        "remaining": [first, second],
        "function_name": context.function_name,
        "version": context.function_version,
        "arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "request_id": context.aws_request_id,
        "log_group": context.log_group_name,
        "event": event,
    }


def fail(event, context):
    raise ValueError("bad input: " + str(event.get("x")))


def odd(event, context):
    return {"value": object()}


def slow(event, context):
    time.sleep(30)
"""


PRINT_ARGS = 'printf \'{"args": "%s", "who": "%s"}\' "$*" "$WHO" > "$BUNSUI_OUTPUT"\n'
"""A shell script whose output is its arguments and $WHO."""


class Reports:
    """A collecting ``report``: what the dispatcher said, and a way to wait for it."""

    def __init__(self) -> None:
        self.events: list[AttemptFinished] = []
        self._arrived: dict[tuple[str, int], threading.Event] = defaultdict(threading.Event)
        self._lock = threading.Lock()

    def __call__(self, event: AttemptFinished) -> None:
        with self._lock:
            self.events.append(event)
            self._arrived[event.key, event.attempt].set()

    def wait(self, key: str, attempt: int = 1) -> AttemptFinished:
        with self._lock:
            arrived = self._arrived[key, attempt]
        assert arrived.wait(HANG_GUARD), f"no report for {key} within {HANG_GUARD}s"
        return next(e for e in self.events if (e.key, e.attempt) == (key, attempt))


def order(job_type: str, inputs: dict[str, Any], key: str = "job", attempt: int = 1) -> Dispatch:
    return Dispatch(
        "s1", key, key.split("[")[0], job_type, attempt, inputs, None, f"s1/{key}/{attempt}"
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A SAM project with the pipeline's folder as its root."""
    write(tmp_path / "template.yaml", TEMPLATE)
    write(tmp_path / "src" / "app.py", APP)
    return tmp_path


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def logs(tmp_path: Path) -> LogBook:
    return LogBook(tmp_path / "logs")


def runner(project: Path, reports: Reports, logs: LogBook, **kwargs: Any) -> LocalDispatcher:
    return LocalDispatcher(reports, LocalResolver(project), logs, lambda: NOW, **kwargs)


@pytest.fixture
def dispatcher(project: Path, reports: Reports, logs: LogBook):
    dispatcher = runner(project, reports, logs)
    yield dispatcher
    dispatcher.close()


def run(dispatcher: LocalDispatcher, reports: Reports, job: Dispatch) -> AttemptFinished:
    handle = dispatcher.dispatch(job)
    assert handle is not None and handle.startswith("local:")
    return reports.wait(job.key, job.attempt)


# ---------------------------------------------------------------- resolving lambda


def test_a_sub_function_name_resolves_by_its_name_with_the_template_globals(project):
    resolver = LocalResolver(project)

    target = resolver.function("bunsui-ml-data-preparation-function")

    assert isinstance(target, HandlerTarget)
    assert target.code_dir == project / "src/"
    assert target.handler == "app.prepare"
    assert (target.timeout, target.memory) == (10.0, 256)
    # A Ref to a parameter takes its Default; a Ref to a resource cannot be known locally.
    assert dict(target.environment) == {"STAGE": "test", "SHARED": "from-globals", "MODE": "prep"}


@pytest.mark.parametrize(
    "name",
    [
        "arn:aws:lambda:eu-west-1:123456789012:function:stack-data-preparation-function:live",
        "stack-data-preparation-function:live",
        "123456789012:function:stack-data-preparation-function",
    ],
)
def test_arns_and_aliases_resolve_by_their_function_name(project, name):
    assert LocalResolver(project).function(name).handler == "app.prepare"


def test_a_function_without_function_name_resolves_by_its_logical_id(project):
    target = LocalResolver(project).function("EvaluateFunction")
    assert (target.handler, target.name) == ("app.evaluate", "EvaluateFunction")


def test_the_mapping_file_wins_over_the_template(project):
    write(project / "alt" / "other.py", "def prepare(event, context):\n    return 'mapped'\n")
    write(
        project / "bunsui.local.yaml",
        """\
        functions:
          stack-data-preparation-function:
            handler: other.prepare
            code: alt
            environment: {STAGE: local, RETRIES: 3}
            timeout: 60
        """,
    )
    target = LocalResolver(project).function("stack-data-preparation-function")
    assert (target.code_dir, target.handler) == (project / "alt", "other.prepare")
    assert dict(target.environment) == {"STAGE": "local", "RETRIES": "3"}
    assert (target.timeout, target.memory) == (60.0, 128)


def test_a_missing_function_fails_dispatch_with_the_fix(dispatcher):
    job = order("lambda", {"function_name": "data-preparation-function"}, key="prepare_data")
    with pytest.raises(DispatchFailed) as caught:
        dispatcher.dispatch(job)
    message = str(caught.value)
    assert "job 'prepare_data'" in message
    assert "lambda function 'data-preparation-function' is not in" in message
    assert "template.yaml (FunctionName or logical id)" in message
    assert "bunsui.local.yaml functions:; add it to one of them" in message


def test_without_a_template_the_error_says_where_one_was_looked_for(tmp_path):
    with pytest.raises(DispatchFailed, match=r"there is no template.yaml in .*--template"):
        LocalResolver(tmp_path).function("anything", "job 'x'")


def test_a_mapping_file_with_an_unknown_field_is_reported_with_its_name(project):
    write(project / "bunsui.local.yaml", "functions:\n  f: {handler: a.b, codez: x}\n")
    with pytest.raises(DispatchFailed, match=r"bunsui.local.yaml is invalid: functions.f.codez"):
        LocalResolver(project).load()


# ---------------------------------------------------------------- running lambda


def test_a_handler_returns_a_lambda_style_response_and_its_lines_are_logged(
    dispatcher, reports, logs
):
    payload = {"model_name": "churn", "training_data_path": "s3://b/k"}
    job = order("lambda", {"function_name": "stack-data-preparation-function", "payload": payload})

    finished = run(dispatcher, reports, job)

    assert finished.error is None, finished.error
    assert finished.now == NOW
    assert finished.result["statusCode"] == 200
    body = json.loads(finished.result["body"])
    assert body["env"] == {
        "STAGE": "test",
        "SHARED": "from-globals",
        "MODE": "prep",
        "TABLE": None,
        "AWS_REGION": os.environ.get(
            "AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        ),
    }
    assert body["function_env"] == "stack-data-preparation-function"
    assert body["memory_env"] == "256"
    lines = logs.lines("s1", "job")
    assert [(line.stream, line.message) for line in lines if line.stream == "stdout"] == [
        ("stdout", "preparing churn")
    ]
    warning = [line.message for line in lines if line.stream == "stderr"]
    assert len(warning) == 1 and warning[0].startswith("[WARNING]\t")
    assert warning[0].endswith("prepared churn")
    assert all(line.key == "job" and line.attempt == 1 for line in lines)


def test_the_payload_gets_a_bunsui_key_and_the_context_is_lambda_like(dispatcher, reports):
    job = order("lambda", {"function_name": "EvaluateFunction", "payload": {"a": 1}}, "eval")

    result = run(dispatcher, reports, job).result

    assert result["event"] == {
        "a": 1,
        "bunsui": {"dispatch_id": "s1/eval/1", "session_id": "s1", "job_id": "eval", "attempt": 1},
    }
    first, second = result["remaining"]
    assert 0 < second < first <= 10_000
    assert result["function_name"] == "EvaluateFunction"
    assert result["version"] == "$LATEST"
    assert result["arn"] == "arn:aws:lambda:local:000000000000:function:EvaluateFunction"
    assert result["memory"] == 256
    assert result["log_group"] == "/aws/lambda/EvaluateFunction"
    assert len(result["request_id"]) == 36


def test_a_payload_that_has_a_bunsui_key_or_is_not_an_object_is_left_alone(dispatcher, reports):
    mine = {"bunsui": "mine"}
    job = order("lambda", {"function_name": "EvaluateFunction", "payload": mine}, "a")
    assert run(dispatcher, reports, job).result["event"] == mine
    job = order("lambda", {"function_name": "EvaluateFunction", "payload": [1, 2]}, "b")
    assert run(dispatcher, reports, job).result["event"] == [1, 2]


def test_a_raising_handler_reports_its_error_type_and_message(dispatcher, reports, logs):
    job = order("lambda", {"function_name": "failing-function", "payload": {"x": 7}})

    finished = run(dispatcher, reports, job)

    assert finished.result is None
    assert finished.error == "ValueError: bad input: 7"
    text = "\n".join(line.message for line in logs.lines("s1"))
    assert "[ERROR] ValueError: bad input: 7" in text
    assert 'raise ValueError("bad input: "' in text


@pytest.mark.parametrize(
    ("function", "error"),
    [
        ("odd-function", "Runtime.MarshalError: Unable to marshal response"),
        ("broken-function", "Runtime.ImportModuleError: Unable to import module 'missing_module'"),
        ("slow-function", "Task timed out after 1.00 seconds"),
    ],
)
def test_runtime_failures_are_reported_as_lambda_reports_them(dispatcher, reports, function, error):
    finished = run(dispatcher, reports, order("lambda", {"function_name": function}))
    assert finished.error is not None and finished.error.startswith(error), finished.error


# ---------------------------------------------------------------- commands


def test_a_custom_command_succeeds_with_the_json_it_writes_to_bunsui_output(
    dispatcher, reports, project
):
    write(
        project / "jobs" / "train.py",
        """\
        import json, os, pathlib
        print("training")
        out = {k: os.environ[k] for k in ("MODEL", "BUNSUI_DISPATCH_ID", "BUNSUI_SESSION_ID",
                                          "BUNSUI_JOB_ID", "BUNSUI_ATTEMPT")}
        out["cwd"] = os.getcwd()
        out["epochs"] = os.environ["EPOCHS"]
        pathlib.Path(os.environ["BUNSUI_OUTPUT"]).write_text(json.dumps(out))
        """,
    )
    inputs = {
        "command": [sys.executable, "train.py"],
        "environment": {"MODEL": "churn", "EPOCHS": 3},
        "working_dir": "jobs",
    }
    finished = run(dispatcher, reports, order("custom", inputs, key="train", attempt=2))

    assert finished.error is None, finished.error
    assert finished.result == {
        "MODEL": "churn",
        "BUNSUI_DISPATCH_ID": "s1/train/2",
        "BUNSUI_SESSION_ID": "s1",
        "BUNSUI_JOB_ID": "train",
        "BUNSUI_ATTEMPT": "2",
        "cwd": str(project / "jobs"),
        "epochs": "3",
    }


def test_a_failing_command_reports_its_exit_code_and_last_stderr_line(dispatcher, reports, logs):
    command = "echo working; echo 'first problem' >&2; echo 'disk full' >&2; exit 3"

    finished = run(dispatcher, reports, order("custom", {"command": command}))

    assert finished.error == "exit code 3: disk full"
    lines = [(line.stream, line.message) for line in logs.lines("s1")]
    assert sorted(lines) == [
        ("stderr", "disk full"),
        ("stderr", "first problem"),
        ("stdout", "working"),
    ]
    # The two streams are read apart; each keeps its own order.
    assert [m for stream, m in lines if stream == "stderr"] == ["first problem", "disk full"]


def test_invalid_json_in_bunsui_output_fails_the_attempt(dispatcher, reports):
    finished = run(
        dispatcher, reports, order("custom", {"command": 'echo "{oops" > "$BUNSUI_OUTPUT"'})
    )
    assert finished.error is not None and "BUNSUI_OUTPUT holds no valid JSON" in finished.error


def test_a_command_without_output_succeeds_with_none(dispatcher, reports):
    finished = run(dispatcher, reports, order("custom", {"command": "true"}))
    assert (finished.result, finished.error) == (None, None)


def test_an_ecs_task_runs_its_mapped_command_with_both_environments(dispatcher, reports, project):
    write(project / "containers" / "training" / "run.sh", PRINT_ARGS)
    write(
        project / "bunsui.local.yaml",
        """\
        tasks:
          ml-training-task:
            command: sh run.sh "$MODEL_NAME" "$DEVICE"
            cwd: containers/training
            environment: {DEVICE: cpu, MODEL_NAME: overridden, WHO: mapped}
        """,
    )
    inputs = {
        "task_definition": "arn:aws:ecs:us-east-1:123456789012:task-definition/ml-training-task:7",
        "environment": {"MODEL_NAME": "churn"},
    }

    finished = run(dispatcher, reports, order("ecs", inputs))

    # The job's environment wins over the mapping's.
    assert finished.result == {"args": "churn cpu", "who": "mapped"}


def test_an_ecs_task_runs_its_dockerfile_entrypoint_and_cmd(dispatcher, reports, project):
    folder = project / "containers" / "training"
    write(
        folder / "Dockerfile",
        """\
        FROM python:3.11-slim AS build
        CMD ["echo", "not this stage"]
        FROM python:3.11-slim
        WORKDIR /app
        COPY . .
        # the image's command
        ENTRYPOINT ["/bin/sh"]
        CMD ["train.sh", \\
             "--epochs=2"]
        """,
    )
    write(folder / "train.sh", PRINT_ARGS.replace("$WHO", "${PWD##*/}"))
    write(
        project / "bunsui.local.yaml",
        "tasks:\n  ml-training-task: {dockerfile: containers/training}\n",
    )

    finished = run(dispatcher, reports, order("ecs", {"task_definition": "ml-training-task"}, "a"))
    assert finished.result == {"args": "--epochs=2", "who": "training"}

    # The job's command replaces CMD, as `command` overrides a container's command on ECS.
    inputs = {"task_definition": "ml-training-task:3", "command": ["train.sh", "--fast"]}
    finished = run(dispatcher, reports, order("ecs", inputs, "b"))
    assert finished.result == {"args": "--fast", "who": "training"}


def test_an_ecs_task_without_mapping_names_the_task_and_the_fix(dispatcher):
    with pytest.raises(DispatchFailed, match=r"job 'train'.*'ml-training-task' is not in .*tasks:"):
        dispatcher.dispatch(order("ecs", {"task_definition": "ml-training-task"}, "train"))


# ---------------------------------------------------------------- stop


def test_stop_kills_the_whole_process_group_and_the_report_says_so(dispatcher, reports, project):
    command = "sleep 60 & echo $! > child.pid; echo started; wait"
    handle = dispatcher.dispatch(order("custom", {"command": command}, "sleeper"))
    pid_file = project / "child.pid"
    deadline = time.monotonic() + HANG_GUARD
    while not (pid_file.is_file() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the job never started its child"
        time.sleep(0.02)
    child = int(pid_file.read_text())

    dispatcher.stop_attempt("s1", "sleeper", handle)

    finished = reports.wait("sleeper")
    assert finished.error == "stopped by Bunsui (signal SIGTERM)"
    assert not _alive(child)
    assert len(reports.events) == 1


def test_stop_kills_a_job_that_ignores_sigterm_after_the_grace(dispatcher, reports, project):
    command = "trap '' TERM; touch ready; sleep 60"
    handle = dispatcher.dispatch(order("custom", {"command": command}, "stubborn"))
    deadline = time.monotonic() + HANG_GUARD
    while not (project / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)

    dispatcher.stop_attempt("s1", "stubborn", handle)

    assert reports.wait("stubborn").error == "stopped by Bunsui (signal SIGKILL)"


def test_stop_of_an_unknown_handle_is_harmless(dispatcher):
    dispatcher.stop_attempt("s1", "nothing", "local:1")
    dispatcher.stop_attempt("s1", "nothing", None)


def _alive(pid: int) -> bool:
    deadline = time.monotonic() + 5  # a killed child may linger a moment as a zombie
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return False
        except OSError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            state = "R"
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------- AWS-only services


AWS_ONLY = [
    ("glue", {"job_name": "nightly-etl"}, "glue job 'nightly-etl'"),
    ("batch", {"job_definition": "train-def:2", "job_queue": "q"}, "batch job definition"),
    (
        "emr",
        {"cluster_id": "j-ABC", "step_config": {"name": "spark-step", "args": ["spark-submit"]}},
        "emr step/cluster 'spark-step' or 'j-ABC'",
    ),
]


@pytest.mark.parametrize(("job_type", "inputs", "what"), AWS_ONLY)
def test_aws_only_jobs_without_mapping_fail_dispatch_naming_the_job(
    dispatcher, job_type, inputs, what
):
    with pytest.raises(DispatchFailed) as caught:
        dispatcher.dispatch(order(job_type, inputs, key="etl"))
    message = str(caught.value)
    assert message.startswith("job 'etl': ")
    assert what in message
    assert "runs on the AWS backend only" in message
    assert f"bunsui.local.yaml {job_type}:" in message


def test_aws_only_jobs_with_a_mapping_run_locally(dispatcher, reports, project):
    write(project / "scripts" / "args.sh", PRINT_ARGS)
    write(
        project / "bunsui.local.yaml",
        """\
        glue:
          nightly-etl: {command: [/bin/sh, args.sh], cwd: scripts, environment: {WHO: glue}}
        batch:
          train-def: {command: "sh scripts/args.sh --lr Ref::lr", environment: {WHO: batch}}
        emr:
          spark-step: {command: [/bin/sh, scripts/args.sh, step], environment: {WHO: emr}}
        """,
    )
    glue = order("glue", {"job_name": "nightly-etl", "arguments": {"--day": "2026-01-01"}}, "g")
    assert run(dispatcher, reports, glue).result == {"args": "--day 2026-01-01", "who": "glue"}

    batch_inputs = {
        "job_definition": "arn:aws:batch:us-east-1:123456789012:job-definition/train-def:4",
        "job_queue": "q",
        "parameters": {"lr": "0.1"},
        "container_overrides": {"environment": {"WHO": "override"}},
    }
    batch = order("batch", batch_inputs, "b")
    assert run(dispatcher, reports, batch).result == {"args": "--lr 0.1", "who": "override"}

    emr_inputs = {"cluster_id": "j-ABC", "step_config": {"name": "spark-step", "args": ["x"]}}
    assert run(dispatcher, reports, order("emr", emr_inputs, "e")).result == {
        "args": "step",
        "who": "emr",
    }


# ---------------------------------------------------------------- step functions

ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:hyperparameter-tuning"


def test_a_step_function_mapped_to_a_handler_is_called_with_the_input(dispatcher, reports, project):
    write(
        project / "machines" / "sm.py",
        """\
        def handler(event, context):
            grid = event["parameter_ranges"]
            return {"best_hyperparameters": {k: v[-1] for k, v in grid.items()},
                    "name": context.function_name, "has_bunsui": "bunsui" in event}
        """,
    )
    write(
        project / "bunsui.local.yaml",
        "state_machines:\n  hyperparameter-tuning: {handler: sm.handler, code: machines}\n",
    )
    inputs = {"state_machine_arn": ARN, "input": {"parameter_ranges": {"max_depth": [5, 10]}}}

    finished = run(dispatcher, reports, order("step_function", inputs))

    assert finished.result == {
        "best_hyperparameters": {"max_depth": 10},
        "name": "hyperparameter-tuning",
        "has_bunsui": False,
    }


def test_a_step_function_mapped_to_a_pipeline_runs_as_a_child_session(project, reports, logs):
    write(project / "tuning.yaml", "name: tuning\n")
    write(project / "bunsui.local.yaml", f"state_machines:\n  {ARN}: {{pipeline: tuning.yaml}}\n")
    calls: list[tuple[Path, Any]] = []

    def child(path: Path, values: Any) -> Any:
        calls.append((path, values))
        return {"best": 1}

    dispatcher = runner(project, reports, logs, child_sessions=child)
    handle = dispatcher.dispatch(
        order("step_function", {"state_machine_arn": ARN, "input": {"a": 1}})
    )

    assert handle == "local:child:s1/job/1"
    assert reports.wait("job").result == {"best": 1}
    assert calls == [(project / "tuning.yaml", {"a": 1})]

    without = runner(project, reports, logs)
    with pytest.raises(DispatchFailed, match="cannot start child sessions"):
        without.dispatch(order("step_function", {"state_machine_arn": ARN}, "other"))


def test_an_unmapped_state_machine_names_the_fix(dispatcher):
    with pytest.raises(DispatchFailed, match=r"state machine 'hyperparameter-tuning' .*pipeline:"):
        dispatcher.dispatch(order("step_function", {"state_machine_arn": ARN}))


# ---------------------------------------------------------------- resolver details


def test_the_template_loader_keeps_intrinsics_as_data():
    data = yaml.load(TEMPLATE, Loader=CfnLoader)
    table = data["Resources"]["Table"]["Properties"]
    assert data["Outputs"]["TableArn"]["Value"] == {"Fn::GetAtt": ["Table", "Arn"]}
    assert table["TableName"] == {"Fn::Join": ["-", [{"Ref": "AWS::StackName"}, "table"]]}
    assert table["BillingMode"] == {"Fn::If": ["IsProd", "PROVISIONED", "PAY_PER_REQUEST"]}
    assert data["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}


def test_a_custom_command_runs_in_the_pipeline_folder_by_default(project):
    target = LocalResolver(project).resolve(order("custom", {"command": ["ls", "-l"]}))
    assert target == CommandTarget(("ls", "-l"), project / ".", {}, "the job's command")


def test_paths_in_the_mapping_are_relative_to_the_mapping_file(tmp_path):
    config = tmp_path / "config"
    write(config / "local.yaml", "state_machines:\n  m: {pipeline: ../child.yaml}\n")
    write(tmp_path / "child.yaml", "name: child\n")
    resolver = LocalResolver(tmp_path / "pipelines", mapping=config / "local.yaml")
    target = resolver.resolve(order("step_function", {"state_machine_arn": "m"}))
    assert isinstance(target, PipelineTarget)
    assert target.pipeline.resolve() == (tmp_path / "child.yaml").resolve()


# ---------------------------------------------------------------- log book


def test_the_log_book_follows_new_lines_in_time_order(tmp_path):
    ticks = iter(f"2026-01-01T00:00:{i:02d}.000000+00:00" for i in range(60))
    book = LogBook(tmp_path / "logs", clock=lambda: next(ticks))
    first = book.writer("s1", "train[0]", 1)
    second = book.writer("s1", "report", 1)
    first.write("stdout", "one")
    second.write("stderr", "two")
    stop = threading.Event()
    seen: list[str] = []

    def follow() -> None:
        for line in book.follow("s1", until=stop.is_set, interval=0.01):
            seen.append(f"{line.key}:{line.message}")

    reader = threading.Thread(target=follow)
    reader.start()
    first.write("stdout", "three")
    time.sleep(0.05)
    stop.set()
    reader.join(HANG_GUARD)

    assert seen == ["train[0]:one", "report:two", "train[0]:three"]
    assert [line.message for line in book.lines("s1", "train")] == ["one", "three"]
    assert [line.message for line in book.lines("s1", "report")] == ["two"]
    assert book.path("s1", "../x", 1).parent.parent == tmp_path / "logs" / "s1"


# ---------------------------------------------------------------- starting


def test_dispatch_returns_while_the_job_runs(dispatcher, reports, project):
    command = 'while [ ! -e go ]; do sleep 0.02; done; echo \'{"went": true}\' > "$BUNSUI_OUTPUT"'
    dispatcher.dispatch(order("custom", {"command": command}, "waiter"))
    assert reports.events == []  # the job cannot end before the file exists

    (project / "go").touch()

    assert reports.wait("waiter").result == {"went": True}


def test_a_program_that_does_not_exist_fails_dispatch(dispatcher):
    with pytest.raises(DispatchFailed, match="No such file or directory: no-such-program-xyz"):
        dispatcher.dispatch(order("custom", {"command": ["no-such-program-xyz"]}, "x"))


def test_handlers_run_under_another_interpreter_without_bunsui(project, reports, logs, tmp_path):
    # The base interpreter of the virtualenv, reached by a link: Bunsui is not installed there.
    python = tmp_path / "python"
    python.symlink_to(Path(sys.executable).resolve())
    dispatcher = runner(project, reports, logs, python=str(python))
    job = order("lambda", {"function_name": "EvaluateFunction", "payload": {}})

    finished = run(dispatcher, reports, job)

    assert finished.error is None, finished.error
    assert finished.result["function_name"] == "EvaluateFunction"


def test_a_leftover_background_process_does_not_hold_the_report(dispatcher, reports):
    # The main process ends at once; the leftovers keep its pipes open. The one still in
    # the job's group is killed after the drain grace; the one that left it (setsid)
    # cannot be, and the report is sent anyway.
    command = "sleep 30 & setsid sleep 6 & echo done"

    finished = run(dispatcher, reports, order("custom", {"command": command}, "leaver"))

    assert (finished.result, finished.error) == (None, None)
