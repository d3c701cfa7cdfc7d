"""feature-engineering-function: the features half of the parallel preparation.

Writes X (scaled), the row ids and the scaler to ``output_path``, and the test
rows' features to ``s3://<bucket>/test/<model>/features``. The label function
cuts the same rows, and training joins the halves on the row ids.
"""

from __future__ import annotations

from typing import Any

from functions.events import PreparePart
from functions.prepare import prepare_part
from mlcommon.responses import endpoint


@endpoint(PreparePart)
def handler(event: PreparePart) -> dict[str, Any]:
    prepared, test_path = prepare_part(event, "features")
    return {
        "features": len(prepared.feature_names),
        "feature_names": prepared.feature_names,
        "train_samples": len(prepared.ids["train"]),
        "test_samples": len(prepared.ids["test"]),
        "features_path": event.output_path,
        "test_features_path": test_path,
    }
