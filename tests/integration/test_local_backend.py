"""The local backend end to end in one process: real handlers, commands and timers."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

from engine.local.backend import LocalBackend
from engine.state import JobStatus, SessionStatus

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function: {Runtime: python3.13, Timeout: 30, CodeUri: fn/}
Resources:
  Prepare:
    Type: AWS::Serverless::Function
    Properties: {FunctionName: !Sub "${AWS::StackName}-prepare", Handler: app.prepare}
"""

HANDLER = """
import json
def prepare(event, context):
    print("preparing", event["name"])
    return {"statusCode": 200, "body": json.dumps({"rows": 42, "passed": event["name"] != "bad"})}
"""


DUMP = "json.dump({}, open(os.environ['BUNSUI_OUTPUT'], 'w'))\n"


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def run(folder: Path, pipeline: str, **values: object):
    backend = LocalBackend(folder / ".bunsui")
    created, _ = backend.save_pipeline(folder / pipeline)
    session = backend.create_session(created.name, values)
    return backend, backend.drive(session.id)


def test_a_lambda_from_the_sam_template_feeds_a_command_and_a_condition(tmp_path):
    write(
        tmp_path,
        {
            "template.yaml": TEMPLATE,
            "fn/app.py": HANDLER,
            "double.py": "import json, os\n" + DUMP.format("{'n': int(os.environ['ROWS']) * 2}"),
            "p.yaml": """
        version: "1.1"
        name: local
        parameters: [{name: name, type: string, required: true}]
        jobs:
          - id: prep
            type: lambda
            parameters: {function_name: "stack-prepare", payload: {name: "${name}"}}
          - id: double
            type: custom
            depends_on: [prep]
            condition: "${passed}"
            parameters:
              command: ["python3", "double.py"]
              environment: {ROWS: "${rows}"}
        """,
        },
    )
    backend, session = run(tmp_path, "p.yaml", name="good")
    assert session.status is SessionStatus.SUCCEEDED
    assert backend.store.get_run(session.id, "prep").output == {"rows": 42, "passed": True}
    assert backend.store.get_run(session.id, "double").output == {"n": 84}
    lines = [line.message for line in backend.logs.lines(session.id, "prep")]
    assert "preparing good" in lines
    backend, session = run(tmp_path, "p.yaml", name="bad")
    assert backend.store.get_run(session.id, "double").status is JobStatus.SKIPPED


def test_a_job_timeout_kills_the_local_process_and_fails_the_attempt(tmp_path):
    write(
        tmp_path,
        {
            "p.yaml": """
        version: "1.1"
        name: slow
        jobs:
          - id: sleepy
            type: custom
            timeout: 1
            parameters: {command: "echo $$ > pid; exec sleep 60"}
        """
        },
    )
    backend, session = run(tmp_path, "p.yaml")
    run_ = backend.store.get_run(session.id, "sleepy")
    assert session.status is SessionStatus.FAILED
    assert run_.error == "timed out after 1s"
    pid = int((tmp_path / "pid").read_text())
    for _ in range(50):  # the kill is asynchronous; a hang guard, not a timing assertion
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {pid} still runs")


def test_a_state_machine_mapped_to_a_child_pipeline(tmp_path):
    write(
        tmp_path,
        {
            "best.py": "import json, os\n"
            + DUMP.format("{'best_depth': 10, 'model': os.environ['M']}"),
            "bunsui.local.yaml": """
            state_machines:
              tuning: {pipeline: tuning.yaml}
            """,
            "tuning.yaml": """
            version: "1.1"
            name: tuning
            parameters: [{name: model_name, type: string, required: true}]
            jobs:
              - id: best
                type: custom
                parameters:
                  command: ["python3", "best.py"]
                  environment: {M: "${model_name}"}
            """,
            "p.yaml": """
            version: "1.1"
            name: parent
            jobs:
              - id: tune
                type: step_function
                parameters:
                  state_machine_arn: "arn:aws:states:us-east-1:123456789012:stateMachine:tuning"
                  input: {model_name: churn}
              - id: use
                type: custom
                depends_on: [tune]
                parameters: {command: ["test", "${best_depth}", "=", "10"]}
            """,
        },
    )
    backend, session = run(tmp_path, "p.yaml")
    assert session.status is SessionStatus.SUCCEEDED, backend.store.runs(session.id)
    assert backend.store.get_run(session.id, "tune").output == {"best_depth": 10, "model": "churn"}
