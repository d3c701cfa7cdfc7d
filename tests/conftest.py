"""Shared fixtures: the repository's own files, as a user would use them."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "ml-pipeline"
PRODUCT_PIPELINE = EXAMPLES / "ml-pipeline.yaml"

# The product document's `bunsui session start` parameters, word for word.
PRODUCT_PARAMETERS = [
    "model_name=customer_churn_model",
    "training_data_path=s3://data-bucket/customer_data.csv",
    "model_version=v1.1",
    'hyperparameters={"max_depth": 10, "n_estimators": 100}',
    "evaluation_threshold=0.85",
]


@pytest.fixture
def product_pipeline_path() -> Path:
    return PRODUCT_PIPELINE
