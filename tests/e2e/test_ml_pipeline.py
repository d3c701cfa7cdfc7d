"""The product's ML pipeline for real on the local backend: train, evaluate, deploy or not.

Each test runs a copy of examples/ml-pipeline (so its local S3 stand-in and
registry start empty) through the installed `bunsui`, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, PRODUCT_PARAMETERS

pytestmark = pytest.mark.e2e
BUNSUI = str(Path(sys.executable).with_name("bunsui"))


@pytest.fixture
def example(tmp_path: Path) -> Path:
    copy = tmp_path / "ml-pipeline"
    shutil.copytree(
        EXAMPLES, copy, ignore=shutil.ignore_patterns(".local-s3", ".bunsui", "__pycache__")
    )
    return copy


def sh(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUNSUI_HOME": str(folder / ".bunsui")}
    return subprocess.run(
        args, cwd=folder, env=env, text=True, capture_output=True, timeout=600, check=False
    )


def generate(folder: Path, *flags: str, output: str = "s3://data-bucket/customer_data.csv"):
    done = sh(folder, sys.executable, "-m", "data.generate", "--output", output, *flags)
    assert done.returncode == 0, done.stderr


def run(folder: Path, pipeline: str, *parameters: str) -> tuple[int, dict]:
    done = sh(folder, BUNSUI, "run", pipeline, "--format", "json", "--parameters", *parameters)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def live(folder: Path) -> str:
    done = sh(
        folder,
        sys.executable,
        "-m",
        "mlcommon.registry",
        "--storage",
        ".local-s3",
        "live",
        "customer_churn_model",
    )
    return done.stdout.strip()


def jobs(session: dict) -> dict[str, dict]:
    return {job["id"]: job for job in session["jobs"]}


def test_the_product_pipeline_trains_evaluates_and_deploys(example):
    generate(example)
    code, session = run(example, "ml-pipeline.yaml", *PRODUCT_PARAMETERS)
    assert code == 0 and session["status"] == "succeeded"
    found = jobs(session)
    assert all(job["status"] == "succeeded" for job in found.values())
    evaluation = found["evaluate_model"]["output"]
    assert evaluation["evaluation_passed"] is True
    assert evaluation["evaluation_accuracy"] >= 0.85
    assert set(evaluation["evaluation_metrics"]) >= {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
    }
    # The training job's resolved environment is the product's, with the JSON hyperparameters.
    environment = found["train_model"]["inputs"]["environment"]
    assert json.loads(environment["HYPERPARAMETERS"]) == {"max_depth": 10, "n_estimators": 100}
    assert "training_time" in json.dumps(found["train_model"]["output"])
    assert (
        found["update_registry"]["inputs"]["payload"]["metrics"] == evaluation["evaluation_metrics"]
    )
    assert "v1.1" in live(example)
    stored = example / ".local-s3" / "ml-bucket" / "models" / "customer_churn_model" / "v1.1"
    assert any(stored.iterdir())


def test_a_threshold_the_model_cannot_reach_skips_deploy_and_still_succeeds(example):
    generate(example)
    parameters = [p for p in PRODUCT_PARAMETERS if not p.startswith("evaluation_threshold")]
    code, session = run(example, "ml-pipeline.yaml", *parameters, "evaluation_threshold=0.99")
    assert code == 0 and session["status"] == "succeeded"
    found = jobs(session)
    assert found["evaluate_model"]["output"]["evaluation_passed"] is False
    assert found["deploy_model"]["status"] == "skipped"
    assert found["update_registry"]["status"] == "skipped"
    assert "v1.1" not in live(example)


def test_unusable_data_stops_the_pipeline_before_training(example):
    generate(example, "--bad", output="s3://data-bucket/bad_data.csv")
    parameters = [
        "training_data_path=s3://data-bucket/bad_data.csv"
        if p.startswith("training_data_path")
        else p
        for p in PRODUCT_PARAMETERS
    ]
    code, session = run(example, "ml-pipeline.yaml", *parameters)
    assert code == 1 and session["status"] == "failed"
    found = jobs(session)
    assert found["validate_data"]["status"] == "failed"
    assert "statusCode 422" in found["validate_data"]["error"]
    assert found["train_model"]["status"] == "upstream_failed"
    assert found["train_model"]["attempts"] == 0


def test_the_parallel_preparation_variant_runs(example):
    generate(example)
    code, session = run(example, "parallel-preparation.yaml", *PRODUCT_PARAMETERS)
    assert code == 0, session
    found = jobs(session)
    assert found["prepare_data_1"]["level"] == found["prepare_data_2"]["level"]
    assert all(job["status"] == "succeeded" for job in found.values())


def test_the_grid_search_variant_fans_out_nine_runs_and_picks_the_best(example):
    generate(example)
    parameters = [p for p in PRODUCT_PARAMETERS if not p.startswith("hyperparameters")]
    code, session = run(example, "hyperparameter-grid.yaml", *parameters)
    assert code == 0, session
    found = jobs(session)
    assert len(found["tune"]["items"]) == 9
    best = found["select_best"]["output"]
    accuracies = [item["output"]["accuracy"] for item in found["tune"]["items"]]
    assert best["best_accuracy"] == max(accuracies)
    environment = found["train_best_model"]["inputs"]["environment"]
    assert json.loads(environment["HYPERPARAMETERS"]) == best["best_hyperparameters"]
