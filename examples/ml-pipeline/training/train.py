"""The training container: fits a RandomForest on the prepared data and stores it.

Run as ``python -m training.train`` (the image's CMD; locally, through
bunsui.local.yml). Configured by the ECS task's environment:

    MODEL_NAME        the model's name (the ModelName metric dimension)
    DATA_PATH         the prepared data set folder (s3://ml-bucket/prepared/<model>)
    FEATURES_PATH     instead of DATA_PATH: the features half ...
    LABELS_PATH       ... and the labels half (the parallel pipeline)
    HYPERPARAMETERS   a JSON object of RandomForestClassifier parameters; "" or {} = defaults
    OUTPUT_PATH       where the model goes (s3://ml-bucket/models/<model>/<version>);
                      its last part is the model version
    TRAINING_MODE     "train" (default), or "cross_validate": score HYPERPARAMETERS by
                      stratified k-fold cross-validation on the training rows, store
                      nothing but the score (the grid variant's tune runs)
    CV_FOLDS          folds of cross_validate (default 3)

``train`` writes model.joblib, scaler.joblib (the data's, for serving) and
metadata.json (hyperparameters, training time, accuracy on the test rows, feature
names) to OUTPUT_PATH, and prints the ModelAccuracy and TrainingTime metrics as
one CloudWatch embedded metric format line (namespace Bunsui/ML, dimension
ModelName), which CloudWatch Logs turns into metrics from the awslogs stream.

The result (JSON) goes to ``$BUNSUI_OUTPUT`` when it is set: a file locally, an
S3 URI on AWS, written by the same storage helper. A bad environment exits
with status 2 and a one-line reason on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlcommon import datasets, modeling, storage

NAMESPACE = "Bunsui/ML"


class Misconfigured(ValueError):
    """The task's environment cannot work."""


def _need(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise Misconfigured(f"{name} is not set")
    return value


def folders(env: Mapping[str, str]) -> list[str]:
    if env.get("FEATURES_PATH"):
        return [env["FEATURES_PATH"], _need(env, "LABELS_PATH")]
    return datasets.parts(_need(env, "DATA_PATH"), "train")


def emf_line(model_name: str, values: dict[str, tuple[float, str]], **properties: Any) -> str:
    """One CloudWatch embedded metric format document: ``values`` is name -> (value, unit)."""
    return json.dumps(
        {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": NAMESPACE,
                        "Dimensions": [["ModelName"]],
                        "Metrics": [{"Name": n, "Unit": u} for n, (_, u) in values.items()],
                    }
                ],
            },
            "ModelName": model_name,
            **{name: value for name, (value, _) in values.items()},
            **properties,
        }
    )


def cross_validate(env: Mapping[str, str], hyperparameters: dict[str, Any]) -> dict[str, Any]:
    train = datasets.load_split(folders(env), "train")
    folds = int(env.get("CV_FOLDS", "3"))
    started = time.perf_counter()
    mean, std = modeling.cross_validate(train.X, train.y, hyperparameters, folds)
    result = {
        "accuracy": mean,
        "accuracy_std": std,
        "hyperparameters": hyperparameters,
        "folds": folds,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if env.get("OUTPUT_PATH"):
        storage.write_json(storage.join(env["OUTPUT_PATH"], "trial.json"), result)
    print(f"cross-validated {hyperparameters}: accuracy {mean:.4f} ± {std:.4f} ({folds} folds)")
    return result


def train(env: Mapping[str, str], hyperparameters: dict[str, Any]) -> dict[str, Any]:
    model_name, output = _need(env, "MODEL_NAME"), _need(env, "OUTPUT_PATH")
    parts = folders(env)
    train_rows = datasets.load_split(parts, "train")
    test_rows = datasets.load_split(parts, "test")
    model = modeling.build(hyperparameters)

    started = time.perf_counter()
    model.fit(train_rows.X, train_rows.y)
    training_time = time.perf_counter() - started
    accuracy = modeling.scores(model, test_rows.X, test_rows.y)["accuracy"]

    version = output.rstrip("/").rsplit("/", 1)[-1]
    metadata = {
        "model_name": model_name,
        "model_version": version,
        "algorithm": "RandomForestClassifier",
        "hyperparameters": modeling.effective(model, hyperparameters),
        "given_hyperparameters": hyperparameters,
        "training_time_seconds": round(training_time, 4),
        "train_samples": len(train_rows.y),
        "test_samples": len(test_rows.y),
        "test_accuracy": accuracy,
        "feature_names": train_rows.feature_names,
        "data": parts,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sklearn_version": _sklearn_version(),
    }
    storage.save_object(storage.join(output, "model.joblib"), model)
    storage.copy(storage.join(parts[0], "scaler.joblib"), storage.join(output, "scaler.joblib"))
    storage.write_json(storage.join(output, "metadata.json"), metadata)
    print(
        emf_line(
            model_name,
            {
                "ModelAccuracy": (accuracy * 100, "Percent"),
                "TrainingTime": (training_time, "Seconds"),
            },
            ModelVersion=version,
        )
    )
    print(f"trained {model_name} {version}: accuracy {accuracy:.4f} in {training_time:.2f}s")
    return {
        "model_path": output,
        "accuracy": accuracy,
        "training_time": metadata["training_time_seconds"],
        "hyperparameters": metadata["hyperparameters"],
        "train_samples": metadata["train_samples"],
    }


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def main(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train (or cross-validate), and write the result to ``$BUNSUI_OUTPUT`` if set.

    Raises:
        Misconfigured: A variable is missing or wrong.
    """
    env = os.environ if env is None else env
    try:
        hyperparameters = modeling.parse_hyperparameters(env.get("HYPERPARAMETERS"))
        modeling.build(hyperparameters)  # refuse bad hyperparameters before reading any data
    except ValueError as exc:
        raise Misconfigured(str(exc)) from exc
    mode = env.get("TRAINING_MODE", "train")
    if mode == "train":
        result = train(env, hyperparameters)
    elif mode == "cross_validate":
        result = cross_validate(env, hyperparameters)
    else:
        raise Misconfigured(f"TRAINING_MODE is {mode!r}; use train or cross_validate")
    if env.get("BUNSUI_OUTPUT"):
        storage.write_json(env["BUNSUI_OUTPUT"], result)
    return result


def run() -> int:
    try:
        main()
    except Misconfigured as exc:
        print(f"training: {exc}", file=sys.stderr)
        return 2
    except storage.NotFound as exc:
        print(f"training: {exc} does not exist; has the data been prepared?", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
