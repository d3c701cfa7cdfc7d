"""The CLI against Bunsui's real API handler: the stack on a moto server.

tests/e2e/aws/harness.py builds the stack from template.yaml on a moto server,
with the real ``handlers.api`` behind :class:`tests.e2e.aws.gateway.ApiGateway`,
and plays what moto does not (the Lambda jobs and their destinations, ECS
tasks, the rules' targets). CloudFormation knows the stack as ``bunsui``: the
CLI finds the API from the stack's output, as a user's does. The CLI runs
in-process; a command that waits for the stack runs in a thread while the
harness plays the stack (:func:`settling`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aws_lambda_powertools.metrics import base as metrics_base
from aws_lambda_powertools.metrics.provider.cloudwatch_emf import cloudwatch as metrics_emf

from tests.e2e.aws.harness import AwsHarness
from tests.e2e.aws.services import JobCode
from tests.e2e.test_cli_aws import (
    HANG_GUARD,
    STACK_TEMPLATE,
    cli,
    local,
    one_error,
    prepare_home,
)
from tests.e2e.test_cli_sessions import JOB_KEYS, SESSION_KEYS

pytestmark = pytest.mark.e2e
JOBS = Path(__file__).resolve().parent / "aws" / "jobs"


@pytest.fixture(scope="module")
def stack() -> Iterator[AwsHarness]:
    """Bunsui's stack on a moto server (tests/e2e/aws/harness.py): the real API handler behind
    the gateway, the reducer fed by the harness; CloudFormation knows it as ``bunsui``."""
    with AwsHarness([JobCode(JOBS)], logs=True) as harness:
        # The functions' loggers write to the stdout of when they are made: not a test's capsys.
        for function in harness.functions.values():
            harness._handler(function)
        harness.deploy_user_stack(JOBS / "template.yaml", stack="flow")
        harness.aws.cloudformation.create_stack(
            StackName="bunsui", TemplateBody=STACK_TEMPLATE.format(url=harness.api_url)
        )
        yield harness


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of the test's own for the config, the AWS files and the local state."""
    return prepare_home(tmp_path, monkeypatch)


@pytest.fixture
def on_stack(
    stack: AwsHarness,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> AwsHarness:
    """The CLI configured for the stack by name, as a user does it.

    The stack's functions run in this process and print their EMF metrics to stdout; here
    those prints go nowhere, so stdout holds what the CLI writes (it never prints with print).
    """
    for module in (metrics_base, metrics_emf):
        monkeypatch.setattr(module, "print", lambda *args, **kwargs: None, raising=False)
    for key, value in (("backend", "aws"), ("aws.stack_name", "bunsui")):
        assert cli(capsys, "config", "set", key, value)[0] == 0
    stack.lambda_.holds.clear()
    return stack


def settling(stack: AwsHarness, command: Callable[[], Any]) -> Any:
    """Run a command in a thread while the harness plays the stack, until the command ends."""
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.setdefault("result", command()), daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG_GUARD
    while thread.is_alive() and time.monotonic() < deadline:
        stack.settle()
        time.sleep(0.02)
    thread.join(5)
    assert "result" in done, "the command did not end"
    return done["result"]


def stack_pipeline(folder: Path, network: dict[str, list[str]]) -> Path:
    """Two Lambda functions and an ECS task of tests/e2e/aws/jobs, one parameter."""
    document = {
        "version": "1.1",
        "name": "On Stack",
        "parameters": [{"name": "fails", "type": "integer", "default": 0}],
        "jobs": [
            {
                "id": "hello",
                "type": "lambda",
                "parameters": {"function_name": "flow-noop", "payload": {"item": "hi"}},
            },
            {
                "id": "flaky",
                "type": "lambda",
                "depends_on": ["hello"],
                "parameters": {
                    "function_name": "flow-flaky",
                    "payload": {"fail_attempts": "${fails}"},
                },
            },
            {
                "id": "task",
                "type": "ecs",
                "depends_on": ["hello"],
                "parameters": {
                    "task_definition": "flow-task",
                    "cluster": "flow-cluster",
                    "network_configuration": network,
                    "environment": {"GREETING": "ahoy"},
                },
            },
        ],
    }
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def test_the_cli_on_the_real_api_handler(on_stack, capsys, monkeypatch, home):
    stack = on_stack
    # Each invocation in its own interpreter, its lines in /aws/lambda/<function> as Lambda's.
    monkeypatch.setattr(stack.lambda_, "sources", [JobCode(JOBS, lambda_mode="process")])
    file = stack_pipeline(home, stack.network())
    for command in (
        ("pipeline", "create", "--file", str(file), "--format", "json"),
        ("pipeline", "show", "On Stack", "--format", "json"),
    ):
        code, out, err = cli(capsys, *command)
        assert code == 0, err
        assert json.loads(out) == json.loads(local(capsys, monkeypatch, *command)[1])
    cache = json.loads((home / "config" / "stacks.json").read_text())
    assert cache["default|us-east-1|bunsui"]["api_endpoint"] == stack.api_url

    code, out, err = cli(
        capsys, "schedule", "create", "--pipeline", "On Stack", "--cron", "0 6 * * ? *",
        "--name", "daily", "-p", "fails=0", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["name"] == "daily"
    code, out, _ = cli(capsys, "schedule", "list", "--format", "json")
    assert [(s["name"], s["pipeline"], s["parameter_text"]) for s in json.loads(out)] == [
        ("daily", "On Stack", {"fails": "0"})
    ]
    assert cli(capsys, "schedule", "delete", "daily")[0] == 0
    assert json.loads(cli(capsys, "schedule", "list", "--format", "json")[1]) == []

    # Errors a user causes: the API's 4xx, printed as the local CLI prints them.
    for command in (
        ("session", "start", "--pipeline", "On Stack", "-p", "fails=some"),
        ("session", "start", "--pipeline", "On Stak"),
        ("session", "status", "--session-id", "20240101-000000000000"),
    ):
        code, out, err = cli(capsys, *command)
        assert (code, out) == (2, ""), err
        assert err == local(capsys, monkeypatch, *command)[2]
        one_error(err)

    # The foreground start follows the session while the stack runs it.
    code, out, err = settling(
        stack, lambda: cli(capsys, "session", "start", "--pipeline", "On Stack", "--format", "json")
    )
    assert code == 0, err
    session = json.loads(out)
    assert set(session) == SESSION_KEYS and session["status"] == "succeeded"
    jobs = {job["id"]: job for job in session["jobs"]}
    assert set(jobs) == {"hello", "flaky", "task"} and all(
        set(j) == JOB_KEYS for j in jobs.values()
    )
    assert jobs["hello"]["output"] == {"item": "hi", "attempt": 1}
    assert jobs["task"]["output"] == {"greeting": "ahoy", "job": "task"}

    # The jobs' own lines, from CloudWatch: the Lambda request's, the task's awslogs stream.
    code, out, err = cli(capsys, "logs", "download", "-s", session["session_id"], "-o", "-")
    assert code == 0, err
    entries = json.loads(out)
    printed = [(e["job"], e["message"]) for e in entries if e["source"] == "stdout"]
    wrote = "flowtask: wrote {'greeting': 'ahoy', 'job': 'task'} to s3://"
    assert [job for job, message in printed if message.startswith(wrote)] == ["task"]
    hello_lines = [message for job, message in printed if job == "hello"]
    assert hello_lines[0].startswith("START RequestId: ")
    assert hello_lines[-1].startswith("REPORT RequestId: ")
    assert [e["event"] for e in entries if e["source"] == "event"][-1] == "session_succeeded"


def test_a_failed_session_and_its_retry_on_the_real_api_handler(on_stack, capsys, home):
    stack = on_stack
    cli(capsys, "pipeline", "create", "--file", str(stack_pipeline(home, stack.network())))
    code, out, err = settling(
        stack,
        lambda: cli(
            capsys,
            "session",
            "start",
            "--pipeline",
            "On Stack",
            "-p",
            "fails=5",
            "--format",
            "json",
        ),
    )
    failed = json.loads(out)
    assert code == 1 and failed["status"] == "failed", err
    assert {j["id"]: j["status"] for j in failed["jobs"]}["flaky"] == "failed"

    code, out, err = settling(
        stack,
        lambda: cli(
            capsys,
            "session",
            "retry",
            "-s",
            failed["session_id"],
            "-p",
            "fails=0",
            "--format",
            "json",
        ),
    )
    assert code == 0, err
    retried = json.loads(out)
    assert retried["status"] == "succeeded" and retried["parameters"]["fails"] == 0
    flaky = next(job for job in retried["jobs"] if job["id"] == "flaky")
    assert (flaky["attempts"], flaky["output"]) == (2, {"recovered_on": 2})


def test_cancel_on_the_real_api_handler(on_stack, capsys, home):
    stack = on_stack
    cli(capsys, "pipeline", "create", "--file", str(stack_pipeline(home, stack.network())))
    stack.hold("flow-noop")
    code, out, err = cli(
        capsys, "session", "start", "--pipeline", "On Stack", "-d", "--format", "json"
    )
    assert code == 0, err
    session_id = json.loads(out)["session_id"]
    stack.settle()
    code, out, err = settling(stack, lambda: cli(capsys, "session", "cancel", "-s", session_id))
    assert (code, out) == (0, f"session {session_id} is cancelled.\n"), err
    code, _, err = cli(capsys, "session", "pause", "-s", session_id)
    assert one_error(err) == f"session '{session_id}' has ended (cancelled)."
    stack.release("flow-noop")
    stack.settle()
