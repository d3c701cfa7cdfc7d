"""model-deployment-function: make an evaluated model version live.

Copies the version's files (model, scaler, metadata, evaluation) to
``<serving root>/<version>/``, checks that the copy loads and predicts, then
points ``<serving root>/live.json`` at it and records the deployment in the
registry (the version live before is retired). The serving root defaults to
``s3://<bucket of model_path>/serving/<model_name>``; model-prediction-function
serves from there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from functions.events import Deploy
from mlcommon import registry, serving, storage
from mlcommon.responses import Refused, endpoint

logger = Logger(service="ml-pipeline")

SAMPLE = {  # one customer, to check that the served copy answers before it goes live
    "age": 42,
    "tenure": 5,
    "monthly_charges": 89.5,
    "gender": "Female",
    "contract_type": "Month-to-month",
    "payment_method": "Electronic check",
}


@endpoint(Deploy)
def handler(event: Deploy) -> dict[str, Any]:
    bucket = storage.split(event.model_path)[0]
    root = event.serving_path or f"s3://{bucket}/serving/{event.model_name}"
    if not storage.exists(storage.join(event.model_path, "evaluation.json")):
        raise Refused(422, f"{event.model_path} has not been evaluated; evaluate it first")
    target = storage.join(root, event.model_version)
    for name in serving.FILES:
        storage.copy(storage.join(event.model_path, name), storage.join(target, name))
    try:
        answer = serving.predict(serving.load(target, event.model_version), [SAMPLE])[0]
    except Exception as exc:  # any failure of the copy to serve keeps the old version live
        raise Refused(500, f"the copy at {target} does not serve: {exc}") from exc
    at = datetime.now(UTC).isoformat(timespec="seconds")
    pointer = {"model_name": event.model_name, "model_version": event.model_version}
    storage.write_json(
        storage.join(root, serving.POINTER),
        {**pointer, "path": target, "source": event.model_path, "deployed_at": at},
    )
    doc = registry.mark_live(
        registry.location(event.model_name, bucket),
        event.model_name,
        event.model_version,
        event.model_path,
        target,
    )
    logger.info(f"{event.model_name} {event.model_version} is live at {target}")
    return {
        "deployed": True,
        "live_version": event.model_version,
        "serving_path": target,
        "smoke_test": answer,
        "versions": sorted(doc["versions"]),
    }
