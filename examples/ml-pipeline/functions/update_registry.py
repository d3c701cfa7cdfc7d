"""model-registry-function: record a model version and its metrics in the registry.

The registry (mlcommon.registry) keeps every version with its metrics and its
deployment state, and knows which version is live.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from functions.events import Register, default_bucket
from mlcommon import registry, storage
from mlcommon.responses import endpoint

logger = Logger(service="ml-pipeline")


@endpoint(Register)
def handler(event: Register) -> dict[str, Any]:
    bucket = storage.split(event.model_path)[0] if event.model_path else default_bucket()
    uri = event.registry_path or registry.location(event.model_name, bucket)
    metrics = event.metrics
    if event.best_accuracy is not None:
        metrics = {**(metrics or {}), "tuning_cv_accuracy": event.best_accuracy}
    doc = registry.register(uri, event.model_name, event.model_version, event.model_path, metrics)
    entry = doc["versions"][event.model_version]
    logger.info(f"{event.model_name} {event.model_version} registered ({entry['state']})")
    return {
        "registry_path": uri,
        "registered_version": event.model_version,
        "state": entry["state"],
        "live_version": doc["live_version"],
        "versions": {v: e["state"] for v, e in sorted(doc["versions"].items())},
    }
