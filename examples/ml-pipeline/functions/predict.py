"""model-prediction-function: churn predictions from the live model.

    {"model_name": "customer_churn_model",
     "records": [{"age": 42, "tenure": 5, "monthly_charges": 89.5, "gender": "Female",
                  "contract_type": "Month-to-month", "payment_method": "Electronic check"}]}

answers one ``{"churn": 0|1, "probability": p}`` per record, from the version
deployment made live (``s3://<ML_BUCKET>/serving/<model>/live.json``). Records
are encoded and scaled exactly as the training data was.
"""

from __future__ import annotations

from typing import Any

from functions.events import Predict, default_bucket
from mlcommon import serving
from mlcommon.responses import endpoint


@endpoint(Predict)
def handler(event: Predict) -> dict[str, Any]:
    root = event.serving_path or f"s3://{default_bucket()}/serving/{event.model_name}"
    served = serving.load_live(root)
    return {
        "model_name": event.model_name,
        "model_version": served.version,
        "predictions": serving.predict(served, event.records),
    }
