"""model-evaluation-function: score a trained model on the held-out rows.

Outputs the names the pipeline reads downstream: ``evaluation_passed``
(accuracy >= threshold), ``evaluation_accuracy`` and ``evaluation_metrics``
(accuracy, precision, recall, F1, ROC-AUC, the confusion matrix). Writes them
to ``<model_path>/evaluation.json`` too, and publishes ModelAccuracy (percent)
to CloudWatch in the embedded metric format.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from functions.events import Evaluate
from mlcommon import datasets, modeling, storage
from mlcommon.responses import Refused, endpoint

logger = Logger(service="ml-pipeline")
metrics = Metrics(namespace="Bunsui/ML")


@endpoint(Evaluate)
def evaluate(event: Evaluate) -> dict[str, Any]:
    metadata = storage.read_json(storage.join(event.model_path, "metadata.json"))
    model = storage.load_object(storage.join(event.model_path, "model.joblib"))
    test = datasets.load_split(datasets.parts(event.test_data_path, "test"), "test")
    if test.feature_names != metadata["feature_names"]:
        raise Refused(
            422,
            f"the test rows at {event.test_data_path} have other features than the model "
            f"at {event.model_path}; prepare and train again",
        )
    values = modeling.scores(model, test.X, test.y)
    accuracy = values["accuracy"]
    passed = accuracy >= event.threshold
    result = {
        **values,
        "threshold": event.threshold,
        "test_samples": len(test.y),
        "confusion_matrix": modeling.confusion(model, test.X, test.y),
        "model_version": metadata.get("model_version"),
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(
        storage.join(event.model_path, "evaluation.json"), {**result, "passed": passed}
    )
    model_name = metadata["model_name"]
    metrics.add_dimension(name="ModelName", value=model_name)
    metrics.add_metric(name="ModelAccuracy", unit=MetricUnit.Percent, value=accuracy * 100)
    verdict = "passes" if passed else "fails"
    logger.info(f"{model_name} accuracy {accuracy:.4f} {verdict} the threshold {event.threshold}")
    return {
        "evaluation_passed": passed,
        "evaluation_accuracy": accuracy,
        "evaluation_metrics": result,
    }


handler = metrics.log_metrics(evaluate)
