"""The events the functions accept (pydantic models; extra keys such as Bunsui's
``bunsui`` identity are ignored)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MODEL_NAME = r"^[a-zA-Z][a-zA-Z0-9_-]*$"  # the pipeline's own rule for model_name
S3_URI = r"^s3://[^/]+(/.*)?$"


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Prepare(Event):
    training_data_path: str = Field(pattern=S3_URI)
    model_name: str = Field(pattern=MODEL_NAME)
    output_path: str = Field(pattern=S3_URI)
    test_output_path: str | None = Field(default=None, pattern=S3_URI)
    """Where evaluation reads the test rows; default ``s3://<bucket>/test/<model_name>``."""
    test_size: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 42


class PreparePart(Event):
    """The parallel pipeline's feature and label functions: one half of :class:`Prepare`."""

    training_data_path: str = Field(pattern=S3_URI)
    output_path: str = Field(pattern=S3_URI)
    model_name: str | None = Field(default=None, pattern=MODEL_NAME)
    test_output_path: str | None = Field(default=None, pattern=S3_URI)
    test_size: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 42


class Validate(Event):
    data_path: str = Field(pattern=S3_URI)
    """A prepared data set folder, or a raw ``.csv``."""
    model_name: str = Field(pattern=MODEL_NAME)
    min_rows: int = Field(default=1000, ge=1)
    max_missing_fraction: float = Field(default=0.05, ge=0, le=1)
    max_dropped_fraction: float = Field(default=0.2, ge=0, le=1)
    max_outlier_fraction: float = Field(default=0.05, ge=0, le=1)
    min_minority_fraction: float = Field(default=0.1, ge=0, le=0.5)


class Evaluate(Event):
    model_path: str = Field(pattern=S3_URI)
    test_data_path: str = Field(pattern=S3_URI)
    threshold: float = Field(default=0.8, ge=0, le=1)


class Deploy(Event):
    model_path: str = Field(pattern=S3_URI)
    model_name: str = Field(pattern=MODEL_NAME)
    model_version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    serving_path: str | None = Field(default=None, pattern=S3_URI)
    """The model's serving root; default ``s3://<bucket of model_path>/serving/<model_name>``."""


class Register(Event):
    model_name: str = Field(pattern=MODEL_NAME)
    model_version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    model_path: str | None = Field(default=None, pattern=S3_URI)
    metrics: dict[str, Any] | None = None
    registry_path: str | None = Field(default=None, pattern=S3_URI)
    """Default ``s3://<bucket of model_path, else ML_BUCKET>/registry/<model_name>.json``."""
    best_accuracy: float | None = None
    """The grid variant's cross-validated accuracy of the chosen hyperparameters."""


class SelectBest(Event):
    trials: list[dict[str, Any] | None] = Field(min_length=1)
    """The tune fan-out's outputs, in item order; a failed item is null."""
    metric: str = "accuracy"


class Tune(Event):
    model_name: str = Field(pattern=MODEL_NAME)
    parameter_ranges: dict[str, list[Any]] = Field(min_length=1)
    data_path: str | None = Field(default=None, pattern=S3_URI)
    """Default ``s3://<ML_BUCKET>/prepared/<model_name>``, where prepare writes."""
    folds: int = Field(default=3, ge=2, le=10)


class Predict(Event):
    model_name: str = Field(pattern=MODEL_NAME)
    records: list[dict[str, Any]] = Field(max_length=10_000)
    serving_path: str | None = Field(default=None, pattern=S3_URI)


def default_bucket() -> str:
    """The bucket of paths an event leaves out: ``ML_BUCKET`` (the template sets it to the
    stack's bucket), else ``ml-bucket``, the bucket the product's pipeline names."""
    import os

    return os.environ.get("ML_BUCKET") or "ml-bucket"
