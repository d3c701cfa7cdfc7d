"""The ML example's code (examples/ml-pipeline) on a small generated data set.

The handlers are called in-process, as Lambda would call them, with the local
stand-in for S3 (ML_LOCAL_S3_ROOT) in a temporary folder. The last tests check
how Bunsui's local backend finds that code: image functions from the SAM
template, and the training task's ``python`` as Bunsui's own interpreter.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.errors import DispatchFailed
from engine.local.resolve import CommandTarget, HandlerTarget, LocalResolver
from engine.ports import Dispatch
from tests.conftest import EXAMPLES

MODEL = "churn_test"
DATA = "s3://data-bucket/customer_data.csv"
PREPARED = f"s3://ml-bucket/prepared/{MODEL}"
TEST_DATA = f"s3://ml-bucket/test/{MODEL}"
FAST = '{"n_estimators": 30, "max_depth": 8}'


@pytest.fixture(autouse=True)
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example's packages importable, and S3 standing in a temporary folder."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    root = tmp_path / "s3"
    monkeypatch.setenv("ML_LOCAL_S3_ROOT", str(root))
    monkeypatch.delenv("ML_BUCKET", raising=False)
    monkeypatch.delenv("POWERTOOLS_SERVICE_NAME", raising=False)
    return root


def call(module: str, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Invoke a function's handler as Lambda does; its status and parsed body."""
    handler = __import__(f"functions.{module}", fromlist=["handler"]).handler
    reply = handler({**event, "bunsui": {"dispatch_id": "s/j/1"}}, None)
    assert set(reply) == {"statusCode", "body"}
    return reply["statusCode"], json.loads(reply["body"])


def write_data(rows: int = 1500, bad: bool = False, uri: str = DATA) -> pd.DataFrame:
    from data.generate import generate
    from mlcommon import storage

    frame = generate(rows, bad=bad)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    storage.write_bytes(uri, buffer.getvalue().encode())
    return frame


def prepare(rows: int = 1500) -> dict[str, Any]:
    write_data(rows)
    event = {"training_data_path": DATA, "model_name": MODEL, "output_path": PREPARED}
    status, body = call("prepare", event)
    assert status == 200, body
    return body


def train(version: str, hyperparameters: str = FAST, **env: str) -> dict[str, Any]:
    from training import train as script

    return script.main(
        {
            "MODEL_NAME": MODEL,
            "DATA_PATH": PREPARED,
            "HYPERPARAMETERS": hyperparameters,
            "OUTPUT_PATH": f"s3://ml-bucket/models/{MODEL}/{version}",
            **env,
        }
    )


def evaluate(version: str, threshold: float = 0.5) -> dict[str, Any]:
    model_path = f"s3://ml-bucket/models/{MODEL}/{version}"
    event = {"model_path": model_path, "test_data_path": TEST_DATA, "threshold": threshold}
    status, body = call("evaluate", event)
    assert status == 200, body
    return body


def emf_documents(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [doc for doc in lines if "_aws" in doc]


# ---------------------------------------------------------------- data


def test_the_generated_data_is_reproducible_realistic_and_dirty():
    from data.generate import generate

    frame = generate(5000)
    assert len(frame) == 5000
    assert list(frame.columns) == [
        "age",
        "tenure",
        "monthly_charges",
        "gender",
        "contract_type",
        "payment_method",
        "churn",
    ]
    pd.testing.assert_frame_equal(frame, generate(5000))
    assert frame.isna().any(axis=1).sum() > 0
    assert frame.duplicated().sum() > 0
    ages = pd.to_numeric(frame["age"], errors="coerce")
    assert (ages < 0).any() and (ages > 120).any()
    assert (pd.to_numeric(frame["tenure"], errors="coerce") < 0).any()
    assert frame["gender"].dropna().isin(["MALE", "male", " Male", "Male  "]).any()
    # Month-to-month customers churn far more than two-year ones: there is something to learn.
    rates = frame.dropna().groupby("contract_type")["churn"].mean()
    assert rates["Month-to-month"] > 2 * rates["Two year"]


def test_cleaning_repairs_spelling_and_drops_missing_impossible_and_duplicate_rows():
    from mlcommon.features import clean

    raw = pd.DataFrame(
        [
            [30, 12, 50.0, " male", "MONTH-TO-MONTH ", "electronic check", 1],
            [30, 12, 50.0, "Male", "Month-to-month", "Electronic check", 1],  # duplicate
            [-4, 12, 50.0, "Female", "One year", "Mailed check", 0],  # impossible age
            [40, -1, 50.0, "Female", "One year", "Mailed check", 0],  # impossible tenure
            [40, 10, None, "Female", "One year", "Mailed check", 0],  # missing
            [40, 10, 20.0, "Female", "Lifetime", "Mailed check", 0],  # unknown category
            [55, 40, 80.0, "Female", "Two year", "Credit card", 0],
        ],
        columns=[
            "age",
            "tenure",
            "monthly_charges",
            "gender",
            "contract_type",
            "payment_method",
            "churn",
        ],
    )
    df, report = clean(raw)

    assert report.as_dict() | {"invalid_by_column": None} == {
        "rows_in": 7,
        "normalized_values": 3,
        "dropped_missing": 1,
        "dropped_invalid": 3,
        "dropped_duplicates": 1,
        "rows_out": 2,
        "dropped": 5,
        "invalid_by_column": None,
    }
    assert report.invalid_by_column["age"] == 1
    assert report.invalid_by_column["contract_type"] == 1
    assert df.iloc[0][["gender", "contract_type", "payment_method"]].tolist() == [
        "Male",
        "Month-to-month",
        "Electronic check",
    ]


# ---------------------------------------------------------------- prepare


def test_prepare_encodes_every_category_splits_stratified_and_saves_the_scaler():
    from mlcommon import datasets, storage

    body = prepare()

    names = body["feature_names"]
    assert body["features"] == len(names) == 17
    # Every non-numeric column is one-hot encoded, age_group included.
    for prefix in ("gender_", "contract_type_", "payment_method_", "age_group_"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert {"age_group_young", "age_group_adult", "age_group_senior", "age_group_elderly"} <= set(
        names
    )
    assert "total_spent" in names
    cleaning = body["cleaning"]
    assert cleaning["rows_in"] == 1500
    for dropped in ("dropped_missing", "dropped_invalid", "dropped_duplicates"):
        assert cleaning[dropped] > 0, dropped
    assert cleaning["normalized_values"] > 0
    assert body["train_samples"] + body["test_samples"] == cleaning["rows_out"]
    assert body["test_samples"] == pytest.approx(0.2 * cleaning["rows_out"], abs=1)

    train = datasets.load_split([PREPARED], "train")
    test = datasets.load_split([TEST_DATA], "test")
    assert train.X.dtype == np.float64 and np.isfinite(train.X).all()
    assert not set(train.ids) & set(test.ids)
    assert abs(train.y.mean() - test.y.mean()) < 0.01  # stratified
    scaler = storage.load_object(f"{PREPARED}/scaler.joblib")
    assert list(scaler.mean_.round(6)) != [0.0] * 17
    np.testing.assert_allclose(train.X.mean(axis=0), 0, atol=1e-9)  # scaled on train rows
    assert storage.read_json(f"{PREPARED}/metadata.json")["feature_names"] == names


def test_prepare_refuses_data_without_the_schema_columns():
    from mlcommon import storage

    storage.write_bytes(DATA, b"a,b\n1,2\n")
    event = {"training_data_path": DATA, "model_name": MODEL, "output_path": PREPARED}
    status, body = call("prepare", event)
    assert status == 422
    assert "no column age" in body["message"]
    status, body = call("prepare", {**event, "model_name": "1bad"})
    assert status == 400 and "model_name" in body["message"]


# ---------------------------------------------------------------- validate


def test_validate_passes_good_data_prepared_or_raw():
    prepare()
    status, body = call("validate", {"data_path": PREPARED, "model_name": MODEL})
    assert status == 200, body
    assert body["data_valid"] is True and body["reasons"] == []
    assert set(body["checks"]) == {
        "size",
        "missing_values",
        "cleaning_loss",
        "outliers",
        "class_balance",
    }
    status, body = call("validate", {"data_path": DATA, "model_name": MODEL})
    assert status == 200 and body["data_valid"] is True


def test_validate_fails_unusable_data_with_every_reason():
    write_data(bad=True)
    event = {"training_data_path": DATA, "model_name": MODEL, "output_path": PREPARED}
    status, _ = call("prepare", event)
    assert status == 200  # preparing works; the data is still unusable

    status, body = call("validate", {"data_path": PREPARED, "model_name": MODEL})

    assert status == 422
    assert body["data_valid"] is False
    failed = {name for name, check in body["checks"].items() if not check["passed"]}
    assert failed == {"size", "missing_values", "cleaning_loss", "class_balance"}
    assert body["message"].startswith(f"data for {MODEL} is unusable: only ")
    assert any("smaller class" in reason for reason in body["reasons"])
    status, body = call("validate", {"data_path": DATA, "model_name": MODEL})
    assert status == 422 and len(body["reasons"]) == 4


# ---------------------------------------------------------------- train


def test_train_saves_model_and_metadata_records_time_and_prints_emf(tmp_path, capsys):
    from mlcommon import storage

    prepare()
    output = tmp_path / "bunsui-output.json"

    result = train("v1", '{"max_depth": 10, "n_estimators": 40}', BUNSUI_OUTPUT=str(output))

    model_path = f"s3://ml-bucket/models/{MODEL}/v1"
    metadata = storage.read_json(f"{model_path}/metadata.json")
    assert metadata["model_version"] == "v1"
    assert metadata["training_time_seconds"] > 0
    assert metadata["hyperparameters"]["max_depth"] == 10
    assert metadata["hyperparameters"]["n_estimators"] == 40
    assert storage.exists(f"{model_path}/scaler.joblib")
    model = storage.load_object(f"{model_path}/model.joblib")
    assert model.n_estimators == 40
    assert json.loads(output.read_text()) == result
    assert result["model_path"] == model_path and 0.5 < result["accuracy"] <= 1

    [emf] = emf_documents(capsys.readouterr().out)
    directive = emf["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Bunsui/ML"
    assert directive["Dimensions"] == [["ModelName"]]
    assert [m["Name"] for m in directive["Metrics"]] == ["ModelAccuracy", "TrainingTime"]
    assert emf["ModelName"] == MODEL
    assert emf["ModelAccuracy"] == pytest.approx(result["accuracy"] * 100)
    assert emf["TrainingTime"] == pytest.approx(metadata["training_time_seconds"], abs=1e-3)


def test_train_with_empty_hyperparameters_uses_the_defaults():
    prepare()
    result = train("v0", "{}")
    assert result["hyperparameters"]["n_estimators"] == 100  # RandomForest's default


def test_train_refuses_bad_hyperparameters_before_reading_data():
    from training.train import Misconfigured

    with pytest.raises(Misconfigured, match="not a RandomForestClassifier hyperparameter"):
        train("v9", '{"depth": 3}')
    with pytest.raises(Misconfigured, match="JSON object"):
        train("v9", "[1, 2]")


def test_cross_validate_mode_outputs_accuracy_and_hyperparameters(tmp_path):
    prepare()
    output = tmp_path / "out.json"
    result = train(
        "0", '{"max_depth": 5, "n_estimators": 20}', TRAINING_MODE="cross_validate",
        BUNSUI_OUTPUT=str(output),
    )  # fmt: skip
    assert result["hyperparameters"] == {"max_depth": 5, "n_estimators": 20}
    assert 0.5 < result["accuracy"] <= 1 and result["folds"] == 3
    assert json.loads(output.read_text())["accuracy"] == result["accuracy"]


# ---------------------------------------------------------------- evaluate


def test_evaluate_reports_five_metrics_and_passes_by_threshold(capsys):
    prepare()
    accuracy = train("v1")["accuracy"]
    capsys.readouterr()

    body = evaluate("v1", threshold=0.0)

    metrics = body["evaluation_metrics"]
    assert {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in ("accuracy", "precision", "recall", "f1", "roc_auc"))
    assert body["evaluation_accuracy"] == metrics["accuracy"] == pytest.approx(accuracy)
    assert body["evaluation_passed"] is True
    assert sum(metrics["confusion_matrix"].values()) == metrics["test_samples"]
    [emf] = emf_documents(capsys.readouterr().out)
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Bunsui/ML"
    assert emf["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["ModelName"]]
    assert emf["ModelName"] == MODEL
    assert emf["ModelAccuracy"] in (accuracy * 100, [pytest.approx(accuracy * 100)])

    assert evaluate("v1", threshold=accuracy)["evaluation_passed"] is True
    assert evaluate("v1", threshold=min(1.0, accuracy + 0.001))["evaluation_passed"] is False


# ---------------------------------------------------------------- deploy and registry


def test_deploy_and_registry_keep_every_version_and_know_the_live_one(example, capsys):
    from mlcommon import registry, storage

    prepare()
    uri = registry.location(MODEL)
    versions = {}
    for version in ("v1", "v2"):
        train(version)
        metrics = evaluate(version)["evaluation_metrics"]
        model_path = f"s3://ml-bucket/models/{MODEL}/{version}"
        status, deployed = call(
            "deploy", {"model_path": model_path, "model_name": MODEL, "model_version": version}
        )
        assert status == 200, deployed
        assert deployed["live_version"] == version
        assert set(deployed["smoke_test"]) == {"churn", "probability"}
        event = {"model_name": MODEL, "model_version": version, "model_path": model_path}
        status, versions = call("update_registry", {**event, "metrics": metrics})
        assert status == 200, versions

    assert versions["live_version"] == "v2"
    assert versions["versions"] == {"v1": "retired", "v2": "live"}
    doc = registry.read(uri)
    assert doc["versions"]["v1"]["metrics"]["accuracy"] > 0
    assert doc["versions"]["v2"]["serving_path"] == f"s3://ml-bucket/serving/{MODEL}/v2"
    assert [e["event"] for e in doc["history"]].count("deployed") == 2
    assert registry.live(uri)["version"] == "v2"
    pointer = storage.read_json(f"s3://ml-bucket/serving/{MODEL}/live.json")
    assert pointer["model_version"] == "v2"

    capsys.readouterr()
    assert registry.main(["--storage", str(example), "live", MODEL]) == 0
    assert capsys.readouterr().out.startswith(f"{MODEL} v2 live since ")

    customer = {
        "age": 29,
        "tenure": 2,
        "monthly_charges": 99.0,
        "gender": " female",
        "contract_type": "Month-to-month",
        "payment_method": "ELECTRONIC CHECK",
    }
    status, body = call("predict", {"model_name": MODEL, "records": [customer, {"age": -1}]})
    assert status == 200 and body["model_version"] == "v2"
    assert body["predictions"][0]["churn"] in (0, 1)
    assert "error" in body["predictions"][1]


def test_deploy_refuses_a_model_that_was_not_evaluated():
    prepare()
    train("v3")
    model_path = f"s3://ml-bucket/models/{MODEL}/v3"
    event = {"model_path": model_path, "model_name": MODEL, "model_version": "v3"}
    status, body = call("deploy", event)
    assert status == 422 and "has not been evaluated" in body["message"]


def test_registry_writes_are_conditional():
    from mlcommon import registry, storage

    uri = registry.location(MODEL)
    registry.register(uri, MODEL, "v1", None, {"accuracy": 0.9})
    _, tag = storage.read_versioned(uri)
    registry.register(uri, MODEL, "v2", None, None)  # someone else writes in between
    with pytest.raises(storage.Conflict):
        storage.write_if(uri, b"{}", tag)
    assert set(registry.read(uri)["versions"]) == {"v1", "v2"}


# ---------------------------------------------------------------- tuning


def test_select_best_takes_the_highest_accuracy_first_on_ties_and_skips_failed_runs():
    trials = [
        {"accuracy": 0.81, "hyperparameters": {"max_depth": 5}},
        None,
        {"accuracy": 0.86, "hyperparameters": {"max_depth": 10}},
        {"accuracy": 0.86, "hyperparameters": {"max_depth": 15}},
    ]
    status, body = call("select_best", {"trials": trials, "metric": "accuracy"})
    assert status == 200
    assert body["best_hyperparameters"] == {"max_depth": 10}
    assert body["best_accuracy"] == 0.86 and body["best_trial"] == 2
    assert body["trials_failed"] == 1
    status, body = call("select_best", {"trials": [None, {"accuracy": "x"}]})
    assert status == 422


def test_the_tuning_state_machine_handler_searches_the_grid_with_cross_validation():
    prepare(1200)
    event = {"model_name": MODEL, "parameter_ranges": {"max_depth": [3, 8], "n_estimators": [10]}}
    handler = __import__("functions.tuning", fromlist=["handler"]).handler

    reply = handler(event, None)  # a state machine's input: no "bunsui" key

    body = json.loads(reply["body"])
    assert reply["statusCode"] == 200, body
    assert [t["hyperparameters"] for t in body["trials"]] == [
        {"max_depth": 3, "n_estimators": 10},
        {"max_depth": 8, "n_estimators": 10},
    ]
    best = max(body["trials"], key=lambda t: t["accuracy"])
    assert body["best_hyperparameters"] == best["hyperparameters"]
    assert body["best_accuracy"] == best["accuracy"]


def test_the_parallel_halves_join_on_row_ids_for_training_and_evaluation():
    write_data()
    for module, half in (("feature_engineering", "features"), ("label_processing", "labels")):
        status, body = call(
            module, {"training_data_path": DATA, "output_path": f"{PREPARED}/{half}"}
        )
        assert status == 200, body
    result = train(
        "vp", FAST, DATA_PATH="", FEATURES_PATH=f"{PREPARED}/features",
        LABELS_PATH=f"{PREPARED}/labels",
    )  # fmt: skip
    assert evaluate("vp")["evaluation_accuracy"] == pytest.approx(result["accuracy"])


# ---------------------------------------------------------------- Bunsui's local resolution


def no_mapping(tmp_path: Path) -> Path:
    path = tmp_path / "empty.local.yaml"
    path.write_text("{}\n")
    return path


def test_an_image_function_resolves_to_its_docker_context_and_command(tmp_path):
    resolver = LocalResolver(EXAMPLES, EXAMPLES / "template.yml", no_mapping(tmp_path))

    target = resolver.function("data-preparation-function", "job 'prepare_data'")

    assert isinstance(target, HandlerTarget)
    assert target.code_dir.resolve() == EXAMPLES.resolve()
    assert target.handler == "functions.prepare.handler"
    assert (target.timeout, target.memory) == (300.0, 2048)
    # ML_BUCKET is a !Ref to the bucket resource: it does not exist here, so it is left out.
    assert dict(target.environment) == {"POWERTOOLS_LOG_LEVEL": "INFO"}
    tuning = resolver.function("hyperparameter-tuning-function")
    assert (tuning.handler, tuning.timeout) == ("functions.tuning.handler", 900.0)


def test_an_image_function_without_command_uses_the_dockerfile_cmd_and_odd_ones_are_refused(
    tmp_path,
):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text(
        'FROM public.ecr.aws/lambda/python:3.13\nCMD ["app.handler"]\n'
    )
    (tmp_path / "template.yaml").write_text(
        textwrap.dedent(
            """\
            Transform: AWS::Serverless-2016-10-31
            Resources:
              FromCmd:
                Type: AWS::Serverless::Function
                Properties: {PackageType: Image}
                Metadata: {DockerContext: app, Dockerfile: Dockerfile}
              OwnEntryPoint:
                Type: AWS::Serverless::Function
                Properties:
                  PackageType: Image
                  ImageConfig: {EntryPoint: [/bin/app], Command: [x.handler]}
                Metadata: {DockerContext: app}
              NoContext:
                Type: AWS::Serverless::Function
                Properties: {PackageType: Image, ImageConfig: {Command: [x.handler]}}
              PrebuiltImage:
                Type: AWS::Lambda::Function
                Properties: {PackageType: Image, Code: {ImageUri: 1.dkr.ecr/x:1}}
            """
        )
    )
    resolver = LocalResolver(tmp_path, mapping=no_mapping(tmp_path))

    target = resolver.function("FromCmd")
    assert (target.code_dir, target.handler) == (tmp_path / "app", "app.handler")
    with pytest.raises(DispatchFailed, match=r"own ImageConfig\.EntryPoint"):
        resolver.function("OwnEntryPoint")
    with pytest.raises(DispatchFailed, match=r"without Metadata\.DockerContext"):
        resolver.function("NoContext")
    with pytest.raises(DispatchFailed, match=r"DockerContext.*; map 'PrebuiltImage' in"):
        resolver.function("PrebuiltImage")


def test_the_training_task_runs_with_bunsuis_interpreter_in_the_examples_folder():
    resolver = LocalResolver(EXAMPLES)
    inputs = {"task_definition": "ml-training-task", "environment": {"MODEL_NAME": MODEL}}
    order = Dispatch("s1", "train_model", "train_model", "ecs", 1, inputs, None, "s1/t/1")

    target = resolver.resolve(order)

    assert isinstance(target, CommandTarget)
    # The Dockerfile's CMD ["python", "-m", "training.train"], with python as sys.executable.
    assert target.command == (sys.executable, "-m", "training.train")
    assert target.cwd.resolve() == EXAMPLES.resolve()
    assert target.environment["ML_LOCAL_S3_ROOT"] == ".local-s3"
    assert target.environment["MODEL_NAME"] == MODEL
    function = resolver.function("data-preparation-function")
    assert function.environment == {"ML_LOCAL_S3_ROOT": ".local-s3"}


def test_a_mapped_command_keeps_any_other_interpreter(tmp_path):
    (tmp_path / "bunsui.local.yaml").write_text(
        textwrap.dedent(
            """\
            tasks:
              a: {command: [/usr/bin/python3, x.py]}
              b: {command: python3 -c 'print(1)'}
              c: {command: [pythonista, x.py]}
            """
        )
    )
    resolver = LocalResolver(tmp_path)

    def command(task: str) -> Any:
        inputs = {"task_definition": task}
        return resolver.resolve(Dispatch("s", task, task, "ecs", 1, inputs, None, "d")).command

    assert command("a") == ("/usr/bin/python3", "x.py")
    assert command("b") == f"{sys.executable} -c 'print(1)'"
    assert command("c") == ("pythonista", "x.py")
