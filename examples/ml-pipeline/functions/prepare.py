"""data-preparation-function: clean, add features, split, scale, store.

Reads the raw CSV at ``training_data_path`` and writes the prepared data set to
``output_path`` (train.npz, test.npz, scaler.joblib, metadata.json), and the
test rows again where evaluation reads them (``s3://<bucket>/test/<model_name>``).
The parallel pipeline's feature and label functions write one half each, with
:func:`prepare_part`.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from functions.events import Prepare, PreparePart
from mlcommon import datasets, storage
from mlcommon.responses import Refused, endpoint

logger = Logger(service="ml-pipeline")


def test_location(output_path: str, model_name: str) -> str:
    return f"s3://{storage.split(output_path)[0]}/test/{model_name}"


def build(training_data_path: str, test_size: float, seed: int) -> datasets.Prepared:
    raw = datasets.read_csv(training_data_path)
    try:
        return datasets.prepare(raw, test_size, seed)
    except ValueError as exc:  # a missing column, or a class too small to stratify
        raise Refused(422, f"cannot prepare {training_data_path}: {exc}") from exc


@endpoint(Prepare)
def handler(event: Prepare) -> dict[str, Any]:
    prepared = build(event.training_data_path, event.test_size, event.seed)
    metadata = datasets.save(prepared, event.output_path, event.training_data_path)
    test_path = event.test_output_path or test_location(event.output_path, event.model_name)
    datasets.save_test(prepared, test_path, event.training_data_path)
    logger.info("prepared %s", event.model_name, extra={"cleaning": metadata["cleaning"]})
    return {
        "train_samples": len(prepared.y["train"]),
        "test_samples": len(prepared.y["test"]),
        "features": len(prepared.feature_names),
        "feature_names": prepared.feature_names,
        "cleaning": metadata["cleaning"],
        "prepared_path": event.output_path,
        "test_data_path": test_path,
    }


def prepare_part(event: PreparePart, part: str) -> tuple[datasets.Prepared, str]:
    """Prepare, and store only the ``features`` or the ``labels`` half.

    Both halves come from the same deterministic cleaning and split, so they hold
    the same rows, which training checks by their ids.
    """
    prepared = build(event.training_data_path, event.test_size, event.seed)
    datasets.save(prepared, event.output_path, event.training_data_path, part)
    # .../prepared/<model>/features -> the model is the folder above, unless given.
    model = event.model_name or event.output_path.rstrip("/").split("/")[-2]
    test_root = event.test_output_path or test_location(event.output_path, model)
    datasets.save_test(prepared, test_root, event.training_data_path, part)
    logger.info("prepared the %s of %s", part, model)
    return prepared, storage.join(test_root, part)
