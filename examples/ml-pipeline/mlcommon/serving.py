"""Serving: the live model of a model name, and predictions for raw customer records.

Deployment copies a version's files to ``<serving root>/<version>/`` and then
points ``<serving root>/live.json`` at it, one write, so a reader sees either the
old version or the new one, never a mix. A version folder holds everything a
prediction needs: the model, the scaler fitted on its training data, and the
feature names in the model's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlcommon import storage
from mlcommon.features import engineer, invalid, normalize, raw_frame

FILES = ("model.joblib", "scaler.joblib", "metadata.json", "evaluation.json")
POINTER = "live.json"


@dataclass
class Served:
    version: str
    model: Any
    scaler: Any
    feature_names: list[str]


def load(folder: str, version: str = "") -> Served:
    """The model stored in a version folder (a model folder or a serving copy)."""
    metadata = storage.read_json(storage.join(folder, "metadata.json"))
    return Served(
        version or metadata.get("model_version", ""),
        storage.load_object(storage.join(folder, "model.joblib")),
        storage.load_object(storage.join(folder, "scaler.joblib")),
        metadata["feature_names"],
    )


def load_live(root: str) -> Served:
    """The live version under a serving root (``s3://ml-bucket/serving/<model>``).

    Raises:
        storage.NotFound: No version of this model was deployed.
    """
    pointer = storage.read_json(storage.join(root, POINTER))
    return load(pointer["path"], pointer["model_version"])


def predict(served: Served, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One answer per record: ``{"churn": 0|1, "probability": p}``, or ``{"error": ...}``
    for a record with a missing or impossible value."""
    if not records:
        return []
    frame, _ = normalize(raw_frame(records))
    missing = frame.drop(columns="churn").isna().any(axis=1)
    bad, _ = invalid(frame.assign(churn=0))  # a client sends no churn
    usable = ~(missing | bad)
    answers: list[dict[str, Any]] = [
        {"error": "a value is missing or impossible"} for _ in range(len(frame))
    ]
    if usable.any():
        features = engineer(frame[usable])
        if list(features.columns) != served.feature_names:
            raise ValueError("the model was trained on other features than this code makes")
        X = served.scaler.transform(features.to_numpy())
        positive = list(served.model.classes_).index(1)
        probabilities = served.model.predict_proba(X)[:, positive]
        for position, p in zip(usable.to_numpy().nonzero()[0], probabilities, strict=True):
            answers[position] = {"churn": int(p >= 0.5), "probability": round(float(p), 4)}
    return answers
