from __future__ import annotations

from engine.loader import load_pipeline, read_pipeline
from engine.parameters import REDACTED, resolve_parameters
from engine.plan import Outlook, make_plan
from tests.conftest import EXAMPLES, PRODUCT_PARAMETERS, PRODUCT_PIPELINE


def product_plan():
    pipeline = read_pipeline(PRODUCT_PIPELINE)
    text = dict(pair.split("=", 1) for pair in PRODUCT_PARAMETERS)
    return make_plan(pipeline, resolve_parameters(pipeline.parameters, text_values=text))


def test_product_plan_levels_and_resolved_inputs():
    plan = product_plan()
    assert [[job.id for job in level] for level in plan.levels] == [
        ["prepare_data"],
        ["validate_data"],
        ["train_model"],
        ["evaluate_model"],
        ["deploy_model"],
        ["update_registry"],
    ]
    jobs = {job.id: job for job in plan.jobs}
    assert jobs["prepare_data"].inputs["payload"]["output_path"] == (
        "s3://ml-bucket/prepared/customer_churn_model"
    )
    env = jobs["train_model"].inputs["environment"]
    assert env["HYPERPARAMETERS"] == '{"max_depth": 10, "n_estimators": 100}'
    assert env["OUTPUT_PATH"] == "s3://ml-bucket/models/customer_churn_model/v1.1"
    # A template that is exactly one ${...} keeps the value's type.
    assert jobs["evaluate_model"].inputs["payload"]["threshold"] == 0.85


def test_product_plan_marks_upstream_names_and_runtime_conditions():
    jobs = {job.id: job for job in product_plan().jobs}
    deploy = jobs["deploy_model"]
    assert deploy.outlook is Outlook.AT_RUN_TIME
    assert deploy.condition == "${evaluation_passed}"
    assert deploy.condition_value is None
    assert deploy.from_upstream == ["evaluation_passed"]
    registry = jobs["update_registry"]
    assert registry.from_upstream == ["evaluation_metrics"]
    assert registry.inputs["payload"]["metrics"] == "${evaluation_metrics}"
    assert registry.outlook is Outlook.IF_UPSTREAM_RUNS
    assert jobs["train_model"].outlook is Outlook.RUNS


PIPELINE = """
version: "1.1"
name: conditions
parameters:
  - {name: env, type: string, enum: [dev, prod], default: dev}
  - {name: token, type: string, secret: true, required: true}
jobs:
  - id: build
    type: custom
    parameters: {command: "make", environment: {TOKEN: "${token}", ENV: "${env}"}}
  - id: deploy
    type: lambda
    depends_on: [build]
    condition: "${env == 'prod'}"
    parameters: {function_name: deploy}
  - id: notify
    type: lambda
    depends_on: [deploy]
    parameters: {function_name: notify}
  - id: cleanup
    type: lambda
    depends_on: [deploy]
    trigger_rule: all_done
    parameters: {function_name: cleanup}
"""


def test_parameter_only_conditions_are_decided_and_skips_propagate():
    pipeline = load_pipeline(
        PIPELINE.replace("enum: [dev, prod], ", "validation: {enum: [dev, prod]}, ")
    )
    dev = make_plan(pipeline, resolve_parameters(pipeline.parameters, {"token": "s3cr3t"}))
    jobs = {job.id: job for job in dev.jobs}
    assert jobs["deploy"].condition_value is False
    assert jobs["deploy"].outlook is Outlook.SKIPPED_CONDITION
    assert jobs["notify"].outlook is Outlook.SKIPPED_UPSTREAM
    # all_done runs whatever its parents did.
    assert jobs["cleanup"].outlook is Outlook.RUNS
    prod = make_plan(
        pipeline, resolve_parameters(pipeline.parameters, {"token": "x", "env": "prod"})
    )
    assert {job.id: job.outlook for job in prod.jobs}["notify"] is Outlook.RUNS


def test_secrets_never_appear_in_a_plan():
    pipeline = load_pipeline(PIPELINE.replace("enum: [dev, prod], ", ""))
    plan = make_plan(pipeline, resolve_parameters(pipeline.parameters, {"token": "s3cr3t-value"}))
    assert plan.parameters["token"] == REDACTED
    assert "s3cr3t-value" not in repr(plan.to_dict())
    env = {job.id: job for job in plan.jobs}["build"].inputs["environment"]
    assert env["TOKEN"] == "${token}"
    assert env["ENV"] == "dev"


def test_grid_fan_out_is_nine_runs_three_at_a_time():
    pipeline = read_pipeline(EXAMPLES / "hyperparameter-grid.yaml")
    values = resolve_parameters(pipeline.parameters, {"model_name": "m", "training_data_path": "p"})
    tune = {job.id: job for job in make_plan(pipeline, values).jobs}["tune"]
    assert tune.fan_out["count"] == 9
    assert tune.fan_out["max_concurrency"] == 3
    assert tune.fan_out["items"][0] == {"max_depth": 5, "n_estimators": 50}
    assert tune.fan_out["items"][1] == {"max_depth": 5, "n_estimators": 100}
    assert tune.fan_out["items"][-1] == {"max_depth": 15, "n_estimators": 200}
    assert tune.inputs["environment"]["HYPERPARAMETERS"] == "${item}"


def test_fan_out_over_an_upstream_list_is_known_at_run_time():
    pipeline = load_pipeline("""
version: "1.1"
name: split
jobs:
  - id: split
    type: lambda
    parameters: {function_name: split}
  - id: each
    type: lambda
    depends_on: [split]
    for_each: "${jobs.split.output.files}"
    parameters: {function_name: work, payload: {file: "${item}"}}
""")
    each = {job.id: job for job in make_plan(pipeline, {}).jobs}["each"]
    assert each.fan_out["count"] is None
    assert each.fan_out["source"] == "${jobs.split.output.files}"


def test_parallel_preparation_runs_features_and_labels_on_one_level():
    pipeline = read_pipeline(EXAMPLES / "parallel-preparation.yaml")
    values = resolve_parameters(pipeline.parameters, {"model_name": "m", "training_data_path": "p"})
    plan = make_plan(pipeline, values)
    assert [job.id for job in plan.levels[1]] == ["prepare_data_1", "prepare_data_2"]
    deploy = {job.id: job for job in plan.jobs}["deploy_model"]
    # evaluation_threshold is a parameter, evaluation_accuracy an upstream output.
    assert deploy.from_upstream == ["evaluation_accuracy"]
    assert deploy.outlook is Outlook.AT_RUN_TIME


def test_plan_json_shape_is_stable():
    data = product_plan().to_dict()
    assert set(data) == {"pipeline", "version", "parameters", "levels", "jobs"}
    assert set(data["jobs"][0]) == {
        "id",
        "name",
        "type",
        "level",
        "depends_on",
        "trigger_rule",
        "outlook",
        "condition",
        "condition_value",
        "inputs",
        "from_upstream",
        "fan_out",
        "timeout",
        "retries",
        "error",
    }
