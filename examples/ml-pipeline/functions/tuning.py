"""hyperparameter-tuning: grid search with cross-validation.

The handler of the ``hyperparameter-tuning`` state machine's one task (see the
template), and locally the handler Bunsui calls for that state machine
(bunsui.local.yml ``state_machines:``). Its input is the job's ``input``::

    {"model_name": "customer_churn_model",
     "parameter_ranges": {"max_depth": [5, 10, 15], "n_estimators": [50, 100, 200]}}

It scores every combination with stratified k-fold cross-validation on the
prepared training rows (``s3://<ML_BUCKET>/prepared/<model_name>``, or
``data_path``), never on the test rows, and returns ``best_hyperparameters``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from functions.events import Tune, default_bucket
from mlcommon import datasets, modeling
from mlcommon.responses import Refused, endpoint

logger = Logger(service="ml-pipeline")
MAX_COMBINATIONS = 100


@endpoint(Tune)
def handler(event: Tune) -> dict[str, Any]:
    path = event.data_path or f"s3://{default_bucket()}/prepared/{event.model_name}"
    candidates = modeling.grid(event.parameter_ranges)
    if not 0 < len(candidates) <= MAX_COMBINATIONS:
        raise Refused(422, f"{len(candidates)} combinations; give 1 to {MAX_COMBINATIONS}")
    train = datasets.load_split(datasets.parts(path, "train"), "train")
    trials = []
    for hyperparameters in candidates:
        try:
            mean, std = modeling.cross_validate(train.X, train.y, hyperparameters, event.folds)
        except ValueError as exc:
            raise Refused(422, str(exc)) from exc
        trials.append({"hyperparameters": hyperparameters, "accuracy": mean, "accuracy_std": std})
        logger.info(f"{hyperparameters}: accuracy {mean:.4f} ± {std:.4f}")
    best = max(trials, key=lambda t: t["accuracy"])  # the first of equals: max keeps it
    return {
        "best_hyperparameters": best["hyperparameters"],
        "best_accuracy": best["accuracy"],
        "folds": event.folds,
        "trials": trials,
    }
