"""The reducer on the SQLite store: the semantics of DESIGN.md, event by event."""

from __future__ import annotations

import json

import pytest

from engine.events import AttemptTimedOut, CancelRequested, PauseRequested, ResumeRequested
from engine.state import JobStatus, SessionStatus
from tests.conftest import PRODUCT_PIPELINE
from tests.integration.engine_harness import Harness

PRODUCT = PRODUCT_PIPELINE.read_text()
PRODUCT_VALUES = {
    "model_name": "customer_churn_model",
    "training_data_path": "s3://data-bucket/customer_data.csv",
    "model_version": "v1.1",
    "hyperparameters": {"max_depth": 10, "n_estimators": 100},
    "evaluation_threshold": 0.85,
}


def lambda_response(body: dict, code: int = 200) -> dict:
    return {"statusCode": code, "body": json.dumps(body)}


def run_product(passed: bool) -> Harness:
    h = Harness(PRODUCT, PRODUCT_VALUES)
    assert h.dispatched() == ["prepare_data"]
    h.finish("prepare_data", lambda_response({"train_samples": 4000, "test_samples": 1000}))
    assert h.dispatched()[-1] == "validate_data"
    h.finish("validate_data", {"valid": True})
    h.finish("train_model", {"model_path": "s3://m"})
    h.finish(
        "evaluate_model",
        {
            "evaluation_passed": passed,
            "evaluation_accuracy": 0.9 if passed else 0.7,
            "evaluation_metrics": {"accuracy": 0.9 if passed else 0.7, "f1": 0.8},
        },
    )
    return h


def test_product_pipeline_deploys_when_evaluation_passes():
    h = run_product(passed=True)
    assert h.status("deploy_model") is JobStatus.RUNNING
    h.finish("deploy_model", {"endpoint": "e"})
    assert h.dispatched() == [
        "prepare_data",
        "validate_data",
        "train_model",
        "evaluate_model",
        "deploy_model",
        "update_registry",
    ]
    registry = next(o for o in h.world.orders if o.key == "update_registry")
    # ${evaluation_metrics} is an upstream output (two levels up), typed.
    assert registry.inputs["payload"]["metrics"] == {"accuracy": 0.9, "f1": 0.8}
    train = next(o for o in h.world.orders if o.key == "train_model")
    assert (
        train.inputs["environment"]["HYPERPARAMETERS"] == '{"max_depth": 10, "n_estimators": 100}'
    )
    evaluate = next(o for o in h.world.orders if o.key == "evaluate_model")
    assert evaluate.inputs["payload"]["threshold"] == 0.85
    h.finish("update_registry", {"version": "v1.1"})
    assert h.session_status() is SessionStatus.SUCCEEDED
    # The Lambda-style response was recorded as its parsed body.
    assert h.run("prepare_data").output == {"train_samples": 4000, "test_samples": 1000}


def test_product_pipeline_skips_deploy_and_registry_when_evaluation_fails():
    h = run_product(passed=False)
    assert h.status("deploy_model") is JobStatus.SKIPPED
    assert "condition is false" in h.run("deploy_model").reason
    assert h.status("update_registry") is JobStatus.SKIPPED
    assert h.session_status() is SessionStatus.SUCCEEDED
    assert "deploy_model" not in h.dispatched()


def test_retries_then_failure_marks_downstream_upstream_failed():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.finish("prepare_data", {})
    h.finish("validate_data", {})
    for attempt in (1, 2):
        h.finish("train_model", error="exit code 1")
        assert h.status("train_model") is JobStatus.RETRYING
        h.tick(10)  # retry_delay default 10 s, no backoff
        assert h.fire_timers() == 1
        assert h.run("train_model").attempt == attempt + 1
    h.finish("train_model", error="exit code 1")
    assert h.status("train_model") is JobStatus.FAILED
    assert h.status("evaluate_model") is JobStatus.UPSTREAM_FAILED
    assert h.status("deploy_model") is JobStatus.UPSTREAM_FAILED
    assert h.status("update_registry") is JobStatus.UPSTREAM_FAILED
    assert h.session_status() is SessionStatus.FAILED
    assert [o.attempt for o in h.world.orders if o.key == "train_model"] == [1, 2, 3]


def test_a_status_code_of_400_or_more_is_a_failure():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.finish("prepare_data", lambda_response({"error": "no data"}, 500))
    run = h.run("prepare_data")
    assert run.status is JobStatus.FAILED
    assert "statusCode 500" in run.error and "no data" in run.error


def test_duplicate_and_late_results_change_nothing():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.finish("prepare_data", {"a": 1})
    h.finish("prepare_data", {"a": 2}, attempt=1)  # the same completion again
    assert h.dispatched().count("validate_data") == 1
    assert h.run("prepare_data").output == {"a": 1}
    h.finish("validate_data", {}, attempt=7)  # an attempt that never was
    assert h.status("validate_data") is JobStatus.RUNNING


def test_timeout_fails_the_attempt_and_a_late_result_is_ignored():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.finish("prepare_data", {})
    h.finish("validate_data", {})
    (at, event) = next(t for t in h.world.timers if isinstance(t[1], AttemptTimedOut))
    assert event.key == "train_model" and event.attempt == 1
    h.now = at
    h.fire_timers()
    assert h.status("train_model") is JobStatus.RETRYING
    assert "timed out after 7200s" in h.run("train_model").error
    assert ("train_model", "handle-train_model-1") in h.world.stopped
    h.finish("train_model", {"late": True}, attempt=1)
    assert h.status("train_model") is JobStatus.RETRYING


def test_a_missing_name_fails_only_that_job():
    text = """
version: "1.1"
name: names
jobs:
  - {id: a, type: custom, parameters: {command: a}}
  - {id: b, type: custom, depends_on: [a], parameters: {command: "echo ${nothing_here}"}}
  - {id: c, type: custom, depends_on: [a], parameters: {command: c}}
"""
    h = Harness(text)
    h.finish("a", {"something": 1})
    run = h.run("b")
    assert run.status is JobStatus.FAILED
    assert "nothing_here" in run.error and "(a)" in run.error
    assert h.status("c") is JobStatus.RUNNING
    h.finish("c", {})
    assert h.session_status() is SessionStatus.FAILED


def test_independent_branches_go_on_and_all_done_runs_after_a_failure():
    text = """
version: "1.1"
name: branches
jobs:
  - {id: a, type: custom, parameters: {command: a}}
  - {id: b, type: custom, parameters: {command: b}}
  - {id: after_a, type: custom, depends_on: [a], parameters: {command: x}}
  - {id: after_b, type: custom, depends_on: [b], parameters: {command: x}}
  - {id: cleanup, type: custom, depends_on: [after_a, after_b], trigger_rule: all_done,
     parameters: {command: x}}
  - {id: alert, type: custom, depends_on: [after_a, after_b], trigger_rule: one_failed,
     parameters: {command: x}}
"""
    h = Harness(text)
    h.finish("a", error="boom")
    assert h.status("after_a") is JobStatus.UPSTREAM_FAILED
    h.finish("b", {})
    h.finish("after_b", {})
    assert h.status("cleanup") is JobStatus.RUNNING
    assert h.status("alert") is JobStatus.RUNNING
    h.finish("cleanup", {})
    h.finish("alert", {})
    assert h.session_status() is SessionStatus.FAILED


GRID = """
version: "1.1"
name: grid
jobs:
  - id: tune
    type: custom
    for_each:
      matrix: {max_depth: [5, 10, 15], n_estimators: [50, 100, 200]}
      max_concurrency: 3
    parameters: {command: train, environment: {HP: "${item}", N: "${item_index}"}}
  - id: pick
    type: lambda
    depends_on: [tune]
    parameters: {function_name: pick, payload: {trials: "${jobs.tune.outputs}"}}
"""


def test_fan_out_respects_its_concurrency_and_keeps_item_order():
    h = Harness(GRID)
    assert h.dispatched() == ["tune[0]", "tune[1]", "tune[2]"]
    assert h.world.orders[0].inputs["environment"]["HP"] == '{"max_depth": 5, "n_estimators": 50}'
    # Finish out of order; each finish lets exactly one queued item start.
    for key in ("tune[2]", "tune[0]", "tune[1]"):
        h.finish(key, {"score": int(key[5])})
        assert len(h.running()) <= 3
    assert h.dispatched()[3:6] == ["tune[3]", "tune[4]", "tune[5]"]
    for i in (5, 3, 4, 8, 6, 7):
        if h.status(f"tune[{i}]") is JobStatus.RUNNING:
            h.finish(f"tune[{i}]", {"score": i})
        assert len(h.running()) <= 3
    for i in range(9):
        if h.status(f"tune[{i}]") is JobStatus.RUNNING:
            h.finish(f"tune[{i}]", {"score": i})
    assert h.status("tune") is JobStatus.SUCCEEDED
    pick = next(o for o in h.world.orders if o.key == "pick")
    assert pick.inputs["payload"]["trials"] == [{"score": i} for i in range(9)]


def test_a_failed_item_fails_the_fan_out():
    h = Harness(GRID)
    h.finish("tune[0]", error="oom")
    for i in range(1, 9):
        h.finish(f"tune[{i}]", {})
    assert h.status("tune") is JobStatus.FAILED
    assert "1 of 9 items failed: [0]" in h.run("tune").error
    assert h.status("pick") is JobStatus.UPSTREAM_FAILED


def test_fan_out_over_an_upstream_list_expands_when_it_succeeds():
    text = """
version: "1.1"
name: split
jobs:
  - {id: split, type: lambda, parameters: {function_name: split}}
  - id: each
    type: custom
    depends_on: [split]
    for_each: "${jobs.split.output.files}"
    parameters: {command: ["process", "${item}"]}
"""
    h = Harness(text)
    h.finish("split", {"files": ["a.csv", "b.csv"]})
    assert [o.inputs["command"] for o in h.world.orders[1:]] == [
        ["process", "a.csv"],
        ["process", "b.csv"],
    ]


def test_pipeline_max_concurrency_holds_jobs_back():
    jobs = "\n".join(
        f"  - {{id: j{i}, type: custom, parameters: {{command: x}}}}" for i in range(5)
    )
    h = Harness(f'version: "1.1"\nname: wide\nmax_concurrency: 2\njobs:\n{jobs}\n')
    assert h.dispatched() == ["j0", "j1"]
    assert h.status("j2") is JobStatus.QUEUED
    h.finish("j1", {})
    assert h.dispatched() == ["j0", "j1", "j2"]
    for key in ("j0", "j2", "j3", "j4"):
        h.finish(key, {})
    assert h.session_status() is SessionStatus.SUCCEEDED


def test_cancel_stops_running_work_and_ends_the_session():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.reducer.handle(CancelRequested(h.session_id, h.tick()))
    assert h.session_status() is SessionStatus.CANCELLED
    assert h.status("prepare_data") is JobStatus.CANCELLED
    assert h.world.stopped == [("prepare_data", "handle-prepare_data-1")]
    h.finish("prepare_data", {}, attempt=1)  # the stopped work reports late
    assert h.dispatched() == ["prepare_data"]


def test_pause_holds_new_work_and_resume_releases_it():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.reducer.handle(PauseRequested(h.session_id, h.tick()))
    h.finish("prepare_data", {})
    assert h.status("validate_data") is JobStatus.QUEUED
    h.reducer.handle(ResumeRequested(h.session_id, h.tick()))
    assert h.status("validate_data") is JobStatus.RUNNING


def test_a_dispatch_that_cannot_start_is_a_failed_attempt():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.world.fail_dispatch.add("validate_data")
    h.finish("prepare_data", {})
    run = h.run("validate_data")
    assert run.status is JobStatus.FAILED
    assert "cannot start validate_data" in run.error


def test_history_tells_the_story_in_order():
    h = run_product(passed=False)
    kinds = [entry.kind for _, entry in h.store.history(h.session_id)]
    assert kinds[0] == "session_started"
    assert kinds[-1] == "session_succeeded"
    assert kinds.count("job_dispatched") == 4
    assert "job_skipped" in kinds


def test_retry_reruns_failed_and_skipped_jobs_and_keeps_succeeded_outputs():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.finish("prepare_data", {"rows": 5000})
    h.finish("validate_data", {})
    for _ in range(3):
        h.finish("train_model", error="exit code 1")
        h.tick(10)
        h.fire_timers()
    assert h.session_status() is SessionStatus.FAILED
    session = h.reducer.retry(h.session_id, h.tick(), {**PRODUCT_VALUES, "model_version": "v2"})
    assert session.status is SessionStatus.RUNNING
    assert h.status("prepare_data") is JobStatus.SUCCEEDED
    assert h.run("prepare_data").output == {"rows": 5000}
    assert h.status("train_model") is JobStatus.RUNNING
    train = [o for o in h.world.orders if o.key == "train_model"]
    assert train[-1].attempt == 4  # numbers go on: dispatch ids are never reused
    assert train[-1].inputs["environment"]["OUTPUT_PATH"].endswith("/v2")
    assert h.dispatched().count("prepare_data") == 1
    h.finish("train_model", {})
    h.finish("evaluate_model", {"evaluation_passed": True, "evaluation_metrics": {}})
    h.finish("deploy_model", {})
    h.finish("update_registry", {})
    assert h.session_status() is SessionStatus.SUCCEEDED


def test_retry_of_a_running_session_is_refused():
    from engine.errors import Conflict

    h = Harness(PRODUCT, PRODUCT_VALUES)
    with pytest.raises(Conflict, match="only a failed or cancelled session"):
        h.reducer.retry(h.session_id, h.tick())


def test_repair_counts_lost_attempts_as_failed_and_drives_on():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.finish("prepare_data", {})
    h.finish("validate_data", {})
    assert h.status("train_model") is JobStatus.RUNNING
    # The driver died while train_model ran: its attempt is lost, and it may retry.
    h.reducer.repair(h.session_id, h.tick(), "the local driver stopped while this attempt ran")
    run = h.run("train_model")
    assert run.status is JobStatus.RETRYING
    assert "driver stopped" in run.error
    # A second repair (the timer was lost too) starts the retry at once.
    h.reducer.repair(h.session_id, h.tick(), "lost")
    assert h.status("train_model") is JobStatus.RUNNING
    assert h.run("train_model").attempt == 2
    assert h.dispatched().count("prepare_data") == 1


def test_repair_finishes_what_a_crash_left_between_two_writes():
    h = Harness(PRODUCT, PRODUCT_VALUES)
    h.finish("prepare_data", {})
    # Simulate a crash after prepare_data's end was written but before its edge was
    # counted and validate_data decided: forget the child, undo the counter.
    h.store.delete_runs(h.session_id, ["validate_data"])
    h.world.orders = [o for o in h.world.orders if o.key != "validate_data"]
    h.reducer.repair(h.session_id, h.tick(), "lost")
    assert h.dispatched() == ["prepare_data", "validate_data"]
    assert h.status("validate_data") is JobStatus.RUNNING
    h.finish("validate_data", {})
    assert h.status("train_model") is JobStatus.RUNNING


def test_repair_closes_a_session_whose_last_count_was_lost():
    text = 'version: "1.1"\nname: one\njobs: [{id: a, type: custom, parameters: {command: x}}]\n'
    h = Harness(text)
    h.store.transition(h.session_id, "a", {JobStatus.RUNNING}, {"status": JobStatus.SUCCEEDED})
    assert h.session_status() is SessionStatus.RUNNING  # ended, but never counted
    h.reducer.repair(h.session_id, h.tick(), "lost")
    assert h.session_status() is SessionStatus.SUCCEEDED


def test_a_session_timeout_fails_the_session_and_stops_its_work():
    from engine.events import SessionTimedOut

    text = PRODUCT.replace('version: "1.0"', 'version: "1.0"\ntimeout: 1h', 1)
    h = Harness(text, PRODUCT_VALUES)
    at, _ = next(t for t in h.world.timers if isinstance(t[1], SessionTimedOut))
    assert at == "2026-01-01T01:00:00+00:00"
    h.now = at
    h.fire_timers()
    session = h.store.get_session(h.session_id)
    assert session.status is SessionStatus.FAILED
    assert session.reason == "session timed out after 3600s"
    assert h.status("prepare_data") is JobStatus.CANCELLED
    assert h.world.stopped == [("prepare_data", "handle-prepare_data-1")]


def test_a_condition_that_is_not_boolean_fails_the_job_not_the_engine():
    text = """
version: "1.1"
name: cond
jobs:
  - {id: a, type: custom, parameters: {command: a}}
  - {id: b, type: custom, depends_on: [a], condition: "${score}", parameters: {command: b}}
"""
    h = Harness(text)
    h.finish("a", {"score": "high"})
    run = h.run("b")
    assert run.status is JobStatus.FAILED
    assert "condition must evaluate to true or false" in run.error
    assert h.session_status() is SessionStatus.FAILED


SPLIT = """
version: "1.1"
name: split
jobs:
  - {id: split, type: lambda, parameters: {function_name: split}}
  - id: each
    type: custom
    depends_on: [split]
    retries: 1
    retry_delay: 1
    for_each: {items: [1, 2, 3, 4, 5, 6], max_concurrency: 2}
    parameters: {command: ["work", "${item}"]}
  - {id: after, type: custom, depends_on: [each], parameters: {command: x}}
"""


def test_a_fan_out_with_a_parent_waits_for_every_item():
    h = Harness(SPLIT)
    h.finish("split", {})
    for i in range(6):
        key = f"each[{i}]"
        if i == 4:
            h.finish(key, error="bad item")
            h.tick(1)
            h.fire_timers()
            h.finish(key, error="bad item")  # its one retry fails too
        else:
            h.finish(key, {"n": i})
        if i < 5:
            assert h.status("each") is JobStatus.RUNNING  # not one item early
    assert h.status("each") is JobStatus.FAILED
    assert h.run("each").error == "1 of 6 items failed: [4]"
    assert h.status("after") is JobStatus.UPSTREAM_FAILED
    session = h.store.get_session(h.session_id)
    assert session.status is SessionStatus.FAILED
    assert (session.finished, session.total) == (3, 3)


def test_a_retried_fan_out_reruns_its_items_with_new_attempt_numbers():
    h = Harness(SPLIT)
    h.finish("split", {})
    for i in range(6):
        h.finish(f"each[{i}]", error="down")
    h.tick(1)
    h.fire_timers()
    while running := h.running():
        for key in running:
            h.finish(key, error="still down")
    assert h.session_status() is SessionStatus.FAILED
    h.reducer.retry(h.session_id, h.tick())
    assert h.dispatched().count("split") == 1
    first = next(o for o in reversed(h.world.orders) if o.key == "each[0]")
    assert first.attempt == 3 and first.dispatch_id == "s-1/each[0]/3"
    h.finish("each[0]", error="flaky")
    assert h.status("each[0]") is JobStatus.RETRYING  # its retries count afresh
    h.tick(1)
    h.fire_timers()
    for _ in range(20):  # at most two items run at once; finish whatever runs
        for key in h.running():
            h.finish(key, {"ok": True})
    assert all(h.status(f"each[{i}]") is JobStatus.SUCCEEDED for i in range(6))
    assert h.session_status() is SessionStatus.SUCCEEDED


def test_cancel_records_each_cancelled_job_in_the_history():
    h = Harness(GRID)
    h.reducer.handle(CancelRequested(h.session_id, h.tick(), "enough"))
    entries = [e for _, e in h.store.history(h.session_id) if e.kind == "job_cancelled"]
    assert {e.key for e in entries} >= {"tune[0]", "tune[1]", "tune[2]", "tune[3]"}
    assert all(e.detail == {"reason": "enough"} for e in entries)


def test_secret_values_reach_the_job_but_are_never_stored():
    text = """
version: "1.1"
name: secret
parameters:
  - {name: token, type: string, secret: true, required: true}
  - {name: user, type: string, default: bob}
jobs:
  - id: call
    type: custom
    parameters: {command: "curl -u ${user}:${token} x", environment: {TOKEN: "${token}"}}
"""
    h = Harness(text, {"token": "s3cr3t-VALUE"})
    order = h.world.orders[0]
    assert order.inputs["environment"]["TOKEN"] == "s3cr3t-VALUE"
    assert order.inputs["command"] == "curl -u bob:s3cr3t-VALUE x"
    run = h.run("call")
    assert run.inputs["command"] == "curl -u bob:${token} x"
    assert h.store.get_session(h.session_id).parameters == {"token": "******", "user": "bob"}
    h.finish("call", {"ok": True})
    stored = repr(
        [
            h.store.get_session(h.session_id),
            h.store.runs(h.session_id),
            h.store.history(h.session_id),
        ]
    )
    assert "s3cr3t-VALUE" not in stored


def test_repair_starts_items_a_dead_driver_created_but_never_started():
    h = Harness(SPLIT)
    h.finish("split", {})
    assert h.dispatched()[1:] == ["each[0]", "each[1]"]
    # As if the driver died right after creating the items: put one back to waiting.
    h.store.transition(h.session_id, "each[2]", {JobStatus.QUEUED}, {"status": JobStatus.WAITING})
    h.reducer.repair(h.session_id, h.tick(), "lost")
    for _ in range(30):
        for key in h.running():
            h.finish(key, {"ok": True})
        h.tick(1)
        h.fire_timers()
    assert h.session_status() is SessionStatus.SUCCEEDED
    assert h.status("each[2]") is JobStatus.SUCCEEDED


def test_a_retry_resending_masked_parameters_keeps_the_secret():
    text = """
version: "1.1"
name: secret-retry
parameters:
  - {name: token, type: string, secret: true, required: true}
  - {name: mode, type: string, default: a}
jobs:
  - {id: call, type: custom, parameters: {command: "use ${token} ${mode}"}}
"""
    h = Harness(text, {"token": "t0ken"})
    h.finish("call", error="boom")
    stored = dict(h.store.get_session(h.session_id).parameters)
    assert stored == {"token": "******", "mode": "a"}
    h.reducer.retry(h.session_id, h.tick(), {**stored, "mode": "b"})
    assert h.world.orders[-1].inputs["command"] == "use t0ken b"


def test_a_retried_fan_out_reruns_only_its_failed_items():
    text = SPLIT.replace("retries: 1", "retries: 0")
    h = Harness(text)
    h.finish("split", {})
    for _ in range(10):
        for key in h.running():
            if key == "each[4]":
                h.finish(key, error="bad")
            else:
                h.finish(key, {"key": key})
    assert h.status("each") is JobStatus.FAILED
    before = len(h.world.orders)
    h.reducer.retry(h.session_id, h.tick())
    assert [o.key for o in h.world.orders[before:]] == ["each[4]"]
    h.finish("each[4]", {"key": "each[4]"})
    assert h.status("each") is JobStatus.SUCCEEDED
    assert h.run("each[0]").output == {"key": "each[0]"}
    h.finish("after", {})
    assert h.session_status() is SessionStatus.SUCCEEDED


def test_inputs_too_large_for_the_store_fail_the_job_not_the_reducer():
    from engine.errors import InputTooLarge
    from engine.local.store import SqliteStore

    class SmallStore(SqliteStore):
        """A store that keeps inputs of at most 100 characters (the AWS store caps them)."""

        def transition(self, session_id, key, expect, changes, attempt=None):
            if len(json.dumps(changes.get("inputs"))) > 100:
                raise InputTooLarge(f"job '{key}': inputs are over 100 bytes")
            return super().transition(session_id, key, expect, changes, attempt)

    text = """
version: "1.1"
name: big
parameters:
  - {name: blob, type: string}
jobs:
  - {id: a, type: lambda, parameters: {function_name: f, payload: {data: "${blob}"}}}
  - {id: b, type: lambda, depends_on: [a], parameters: {function_name: f}}
"""
    h = Harness(text, {"blob": "x" * 500}, store=SmallStore(":memory:"))

    a = h.store.get_run(h.session_id, "a")
    assert a.status is JobStatus.FAILED
    assert a.error == "job 'a': inputs are over 100 bytes"
    assert h.store.get_run(h.session_id, "b").status is JobStatus.UPSTREAM_FAILED
    assert h.session_status() is SessionStatus.FAILED
    assert h.world.orders == []


def test_a_completion_records_its_handle_and_the_next_attempt_starts_without_it(monkeypatch):
    from engine.events import AttemptFinished
    from engine.ports import Dispatch
    from tests.integration import engine_harness

    # As on AWS: the dispatcher returns no handle, the completion event names the work.
    monkeypatch.setattr(
        engine_harness.Recorder, "dispatch", lambda self, order: self.orders.append(order)
    )

    text = """
version: "1.1"
name: h
jobs:
  - {id: a, type: lambda, retries: 1, retry_delay: 5, parameters: {function_name: f}}
"""
    h = Harness(text)
    assert h.run("a").handle is None
    h.reducer.handle(AttemptFinished(h.session_id, "a", 1, h.tick(), error="boom", handle="req-1"))
    assert h.run("a").status is JobStatus.RETRYING
    assert h.run("a").handle == "req-1"
    h.tick(10)
    h.fire_timers()
    assert h.run("a").attempt == 2
    assert h.run("a").handle is None  # attempt 1's request id is not attempt 2's
    h.reducer.handle(AttemptFinished(h.session_id, "a", 2, h.tick(), {"ok": True}, handle="req-2"))
    assert h.run("a").status is JobStatus.SUCCEEDED
    assert h.run("a").handle == "req-2"
    assert all(isinstance(o, Dispatch) for o in h.world.orders)
