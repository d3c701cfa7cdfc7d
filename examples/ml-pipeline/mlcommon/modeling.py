"""The model: a RandomForest built from a hyperparameters object, scored, cross-validated."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

SEED = 42
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def parse_hyperparameters(text: str | None) -> dict[str, Any]:
    """The ``HYPERPARAMETERS`` text: a JSON object; empty, ``{}`` or ``null`` mean defaults.

    Raises:
        ValueError: It is not a JSON object.
    """
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"HYPERPARAMETERS is not JSON ({exc}): {text!r}") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"HYPERPARAMETERS must be a JSON object, not {text!r}")
    return value


def build(hyperparameters: Mapping[str, Any]) -> Any:
    """A RandomForestClassifier; ``random_state`` is 42 unless the hyperparameters set it.

    Raises:
        ValueError: A hyperparameter RandomForestClassifier does not have, or a bad value.
    """
    from sklearn.ensemble import RandomForestClassifier

    params = {"random_state": SEED, "n_jobs": -1, **hyperparameters}
    try:
        model = RandomForestClassifier(**params)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"not a RandomForestClassifier hyperparameter: {exc}") from exc
    try:
        model._validate_params()  # checks types and ranges now, not deep inside fit()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad hyperparameters {dict(hyperparameters)}: {exc}") from exc
    return model


def scores(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (of the churn class) and ROC-AUC on these rows."""
    from sklearn import metrics

    predicted = model.predict(X)
    probability = model.predict_proba(X)[:, list(model.classes_).index(1)]
    return {
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "precision": float(metrics.precision_score(y, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(y, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(y, predicted, zero_division=0)),
        "roc_auc": float(metrics.roc_auc_score(y, probability)),
    }


def confusion(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, int]:
    from sklearn.metrics import confusion_matrix

    tn, fp, fn, tp = confusion_matrix(y, model.predict(X), labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def cross_validate(
    X: np.ndarray, y: np.ndarray, hyperparameters: Mapping[str, Any], folds: int = 3
) -> tuple[float, float]:
    """Mean and standard deviation of the accuracy over stratified folds of these rows."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
    values = cross_val_score(build(hyperparameters), X, y, cv=split, scoring="accuracy")
    return float(values.mean()), float(values.std())


def grid(ranges: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, in key order with the last key varying fastest (as Bunsui's matrix)."""
    keys = list(ranges)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*ranges.values())]


def effective(model: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters that mattered: the given ones, and the defaults of the main ones."""
    main = ("n_estimators", "max_depth", "min_samples_split", "min_samples_leaf", "max_features")
    params = model.get_params()
    return {**{k: params[k] for k in main}, **given}
