"""The whole AWS flow on a moto server: api -> reducer -> dispatch -> events -> reducer.

The stack is template.yaml's own (tests/e2e/aws/harness.py creates it, with
the reducer's rules made from the template's event patterns); the harness
plays what moto does not (Lambda jobs and their destinations, ECS tasks and
their state changes, Scheduler firings, the rules' and the stream's Lambda
targets). The jobs are the ML example's real functions and training task,
and the trivial functions of tests/e2e/aws/jobs/.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, PRODUCT_PARAMETERS, PRODUCT_PIPELINE
from tests.e2e.aws.calls import BUNSUI
from tests.e2e.aws.harness import AwsHarness
from tests.e2e.aws.services import JobCode

pytestmark = pytest.mark.e2e

JOBS = Path(__file__).resolve().parent / "aws" / "jobs"
BUNSUI_CLI = str(Path(sys.executable).with_name("bunsui"))
FAN_OUT = 100
"""Sequential delivery, copies shuffled apart; the 1,000-completion run with concurrent
reducers is tests/reliability/test_load.py."""


@pytest.fixture(scope="module")
def flow() -> Iterator[AwsHarness]:
    sources = [
        JobCode(JOBS),
        # The example's mapping points s3:// at a local folder; here S3 is moto's, so the
        # functions and the training task read and write the buckets themselves.
        JobCode(EXAMPLES, EXAMPLES / "template.yml", ("ML_LOCAL_S3_ROOT",), "process"),
    ]
    with AwsHarness(sources, logs=True) as harness:
        harness.deploy_user_stack(JOBS / "template.yaml", stack="flow")
        harness.deploy_user_stack(
            EXAMPLES / "template.yml",
            {"MlBucketName": "ml-bucket", "DataBucketName": "data-bucket"},
            stack="ml",
        )
        yield harness


@pytest.fixture(autouse=True)
def in_order(flow: AwsHarness) -> Iterator[None]:
    """Each test says how events are delivered; none leaves a job held for the next."""
    flow.duplicates, flow.random = False, None
    flow.reset_clock()
    yield
    flow.lambda_.holds.clear()
    flow.ecs.holds.clear()


# ---------------------------------------------------------------- helpers


def create_pipeline(flow: AwsHarness, document: str) -> str:
    status, body = flow.api("POST", "/pipelines", {"document": document})
    assert status == 201, body
    return body["name"]


def start(flow: AwsHarness, pipeline: str, **parameter_text: str) -> str:
    status, body = flow.api(
        "POST", "/sessions", {"pipeline": pipeline, "parameter_text": parameter_text}
    )
    assert status == 201, body
    return body["session"]["id"]


def session(flow: AwsHarness, session_id: str) -> dict[str, Any]:
    status, body = flow.api("GET", f"/sessions/{session_id}")
    assert status == 200, body
    return body["session"]


def runs(flow: AwsHarness, session_id: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    token = None
    while True:
        status, body = flow.api(
            "GET", f"/sessions/{session_id}/runs", query={"limit": 1000, "next": token}
        )
        assert status == 200, body
        found.update({run["key"]: run for run in body["runs"]})
        token = body.get("next")
        if not token:
            return found


def history_kinds(flow: AwsHarness, session_id: str) -> list[str]:
    status, body = flow.api("GET", f"/sessions/{session_id}/history")
    assert status == 200, body
    return [entry["kind"] for _, entry in body["entries"]]


def ecs_job(flow: AwsHarness, job_id: str, extra: str = "", environment: str = "{}") -> str:
    """A job on the flow test's task definition, on Fargate (awsvpc: it needs a network)."""
    return (
        f"  - id: {job_id}\n    type: ecs\n{extra}    parameters:\n"
        "      task_definition: flow-task\n      cluster: flow-cluster\n"
        f"      network_configuration: {json.dumps(flow.network())}\n"
        f"      environment: {environment}\n"
    )


def lambda_job(job_id: str, function: str, extra: str = "", payload: str = "{}") -> str:
    return (
        f"  - id: {job_id}\n    type: lambda\n{extra}"
        f"    parameters:\n      function_name: {function}\n      payload: {payload}\n"
    )


# ---------------------------------------------------------------- 1. the product pipeline


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUNSUI_CLI, *args], env=env, text=True, capture_output=True, timeout=120, check=False
    )


def test_the_product_ml_pipeline_runs_on_the_stack_through_the_cli(flow, tmp_path):
    flow.aws.s3.create_bucket(Bucket="data-bucket")
    generated = subprocess.run(
        [sys.executable, "-m", "data.generate", "--aws"],
        cwd=EXAMPLES,
        env={k: v for k, v in os.environ.items() if k != "ML_LOCAL_S3_ROOT"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    env = {
        **os.environ,
        "BUNSUI_CONFIG": str(tmp_path / "config.json"),
        "BUNSUI_BACKEND": "aws",
        "BUNSUI_AWS_ENDPOINT": flow.api_url,
        "BUNSUI_AWS_REGION": "us-east-1",
    }
    # The one change AWS needs in the product's YAML: the training task runs on Fargate
    # (ml-cluster has no default capacity provider) in a VPC (its network mode is awsvpc).
    network = json.dumps(flow.network())
    text = PRODUCT_PIPELINE.read_text(encoding="utf-8")
    placed = '      cluster: "ml-cluster"\n'
    assert placed in text
    pipeline = tmp_path / "ml-pipeline.yaml"
    pipeline.write_text(
        text.replace(
            placed,
            f"{placed}      launch_type: FARGATE\n      network_configuration: {network}\n",
        ),
        encoding="utf-8",
    )
    created = cli(env, "pipeline", "create", "--file", str(pipeline))
    assert created.returncode == 0, created.stdout + created.stderr

    # `session start` follows the session as a user sees it, while the stack (here) drives it.
    follower = subprocess.Popen(
        [BUNSUI_CLI, "session", "start", "--pipeline", "ML Training Pipeline", "--format", "json",
         "--parameters", *PRODUCT_PARAMETERS],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while follower.poll() is None and time.monotonic() < deadline:
        flow.settle()
        time.sleep(0.2)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, out + err
    result = json.loads(out)
    assert result["status"] == "succeeded"
    jobs = {job["id"]: job for job in result["jobs"]}
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    evaluation = jobs["evaluate_model"]["output"]
    assert evaluation["evaluation_passed"] is True
    assert evaluation["evaluation_accuracy"] >= 0.85
    assert set(evaluation["evaluation_metrics"]) >= {"accuracy", "precision", "recall", "f1"}
    # The training task's result came back from its $BUNSUI_OUTPUT object in the output bucket.
    training = jobs["train_model"]["output"]
    assert training["model_path"] == "s3://ml-bucket/models/customer_churn_model/v1.1"
    assert training["hyperparameters"]["max_depth"] == 10
    # deploy_model and update_registry ran: the registry in moto's S3 has v1.1 live.
    registry = json.loads(
        flow.aws.s3.get_object(Bucket="ml-bucket", Key="registry/customer_churn_model.json")[
            "Body"
        ].read()
    )
    version = registry["versions"]["v1.1"]
    assert version["state"] == "live"
    assert version["metrics"] == evaluation["evaluation_metrics"]
    assert flow.aws.s3.list_objects_v2(Bucket="ml-bucket", Prefix="serving/")["KeyCount"] > 0
    # The task ran as ECS runs it: from the task definition, with Bunsui's overrides.
    task = flow.ecs.started[-1]
    assert task.family == "ml-training-task" and task.reply["startedBy"].startswith("bunsui-")
    status = cli(env, "session", "status", "--session-id", result["session_id"], "--format", "json")
    assert json.loads(status.stdout)["status"] == "succeeded", status.stderr


# ---------------------------------------------------------------- 2. a 1,000-job fan-out


@pytest.mark.timeout(120)
def test_a_fan_out_with_every_event_twice_in_any_order(flow):
    flow.duplicates, flow.random = True, random.Random(5)
    items = ", ".join(str(i) for i in range(FAN_OUT))
    document = (
        'version: "1.1"\nname: flow-fan-out\njobs:\n'
        + lambda_job("each", "flow-noop", f"    for_each: [{items}]\n", '{item: "${item}"}')
        + lambda_job(
            "total", "flow-total", "    depends_on: [each]\n", '{results: "${jobs.each.outputs}"}'
        )
    )
    before = flow.calls.snapshot()
    session_id = start(flow, create_pipeline(flow, document))
    flow.settle()
    assert session(flow, session_id)["status"] == "succeeded"
    found = runs(flow, session_id)
    items_found = [
        run for run in found.values() if run["job_id"] == "each" and run["index"] is not None
    ]
    assert len(items_found) == FAN_OUT
    assert all(run["status"] == "succeeded" and run["attempt"] == 1 for run in items_found)
    assert found["total"]["output"] == {"count": FAN_OUT}
    # Each attempt was claimed (hence invoked) once although every completion came twice.
    invoked = Counter(
        i.payload["bunsui"]["dispatch_id"]
        for i in flow.lambda_.invoked
        if i.payload["bunsui"]["session_id"] == session_id
    )
    assert len(invoked) == FAN_OUT + 1 and set(invoked.values()) == {1}
    used = flow.calls.snapshot() - before
    reducer_writes = used.writes("reducer")
    assert reducer_writes <= (FAN_OUT + 1) * 4 + 20, used.table(BUNSUI)
    # The functions are set up as docs/deploy.md says: results to the default bus, no retries.
    assert flow.destination_problems({"flow-noop", "flow-total"}) == []


# ---------------------------------------------------------------- 3. retries and timeouts


def test_a_failing_job_is_retried_when_its_scheduler_timer_fires(flow):
    document = (
        'version: "1.1"\nname: flow-retries\njobs:\n'
        + lambda_job("flaky", "flow-flaky", "    retries: 2\n    retry_delay: 120\n")
        + lambda_job(
            "hopeless",
            "flow-flaky",
            "    retries: 1\n    retry_delay: 30\n",
            "{fail_attempts: 9}",
        )
    )
    session_id = start(flow, create_pipeline(flow, document))
    flow.settle(timers=False)
    timers = [s for s in flow.schedules() if "retry" in s["Name"]]
    assert len(timers) == 2  # both first attempts failed; each waits for its timer
    assert {json.loads(s["Target"]["Input"])["key"] for s in timers} == {"flaky", "hopeless"}
    assert session(flow, session_id)["status"] == "running"
    flow.settle()
    done = session(flow, session_id)
    assert done["status"] == "failed"
    found = runs(flow, session_id)
    assert found["flaky"]["status"] == "succeeded" and found["flaky"]["attempt"] == 2
    assert found["flaky"]["output"] == {"recovered_on": 2}
    assert found["hopeless"]["status"] == "failed" and found["hopeless"]["attempt"] == 2
    assert "attempt 2 fails on purpose" in found["hopeless"]["error"]
    assert "job_retrying" in history_kinds(flow, session_id)


def test_a_job_that_never_reports_times_out_and_its_task_is_stopped(flow):
    document = 'version: "1.1"\nname: flow-timeout\njobs:\n' + ecs_job(
        flow, "stuck", "    timeout: 600\n"
    )
    flow.hold("flow-task")
    session_id = start(flow, create_pipeline(flow, document))
    flow.settle(timers=False)
    assert [t.family for t in flow.held_tasks] == ["flow-task"]
    task = flow.held_tasks[0]
    flow.settle()  # the only thing left: the job's timeout timer
    assert session(flow, session_id)["status"] == "failed"
    stuck = runs(flow, session_id)["stuck"]
    assert stuck["status"] == "failed" and "timed out" in stuck["error"]
    assert [r["task"] for r in flow.ecs.stop_requests if r["task"] == task.arn] == [task.arn]
    # ECS's own STOPPED event for the stopped task came later and changed nothing.
    assert runs(flow, session_id)["stuck"]["error"] == stuck["error"]


def test_an_ecs_job_writes_its_output_to_the_output_bucket(flow):
    document = 'version: "1.1"\nname: flow-ecs\njobs:\n' + ecs_job(
        flow, "greet", environment="{GREETING: bonjour}"
    )
    session_id = start(flow, create_pipeline(flow, document))
    flow.settle()
    assert session(flow, session_id)["status"] == "succeeded"
    assert runs(flow, session_id)["greet"]["output"] == {"greeting": "bonjour", "job": "greet"}


# ---------------------------------------------------------------- 4. cancel


def test_cancel_through_the_api_stops_running_work_and_skips_the_rest(flow):
    document = (
        'version: "1.1"\nname: flow-cancel\njobs:\n'
        + lambda_job("each", "flow-noop", "    for_each: [1, 2, 3]\n", '{item: "${item}"}')
        + ecs_job(flow, "train")
        + lambda_job("after", "flow-total", "    depends_on: [each, train]\n")
    )
    flow.hold("flow-noop", "flow-task")
    session_id = start(flow, create_pipeline(flow, document))
    flow.settle(timers=False)
    assert len(flow.lambda_.held) == 3 and len(flow.held_tasks) == 1
    task = flow.held_tasks[0]
    status, body = flow.api("POST", f"/sessions/{session_id}/cancel", {"reason": "enough"})
    assert status == 202, body
    flow.settle(timers=False)
    assert session(flow, session_id)["status"] == "cancelled"
    assert task.arn in [r["task"] for r in flow.ecs.stop_requests]
    # The functions could not be stopped: their results arrive late and change nothing.
    flow.release("flow-noop")
    flow.settle()
    assert session(flow, session_id)["status"] == "cancelled"
    statuses = {key: run["status"] for key, run in runs(flow, session_id).items()}
    after = statuses.pop("after", "cancelled")  # never reached: it may have no run at all
    assert after in ("cancelled", "skipped")
    assert statuses == dict.fromkeys(
        ["each", "each[0]", "each[1]", "each[2]", "train"], "cancelled"
    )
