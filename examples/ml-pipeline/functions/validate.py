"""data-validation-function: is the data usable for training?

Checks size, missing values, outliers and class balance (mlcommon.quality) of
a prepared data set folder, or of a raw CSV (the parallel pipeline validates
before it prepares). Usable data answers 200 with the checks; unusable data
answers 422 with the reasons, which fails the job in Bunsui.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from aws_lambda_powertools import Logger

from functions.events import Validate
from mlcommon import datasets, quality, storage
from mlcommon.features import NUMERIC, TARGET, clean, normalize
from mlcommon.responses import Refused, endpoint

logger = Logger(service="ml-pipeline")


def prepared_checks(path: str, limits: quality.Limits) -> list[quality.Check]:
    splits = {s: datasets.load_split(datasets.parts(path, s), s) for s in datasets.SPLITS}
    folder = datasets.parts(path, "train")[0]
    metadata = storage.read_json(storage.join(folder, "metadata.json"))
    cleaning = metadata["cleaning"]
    train = splits["train"]
    scaler = storage.load_object(storage.join(folder, "scaler.joblib"))
    numeric = pd.DataFrame(scaler.inverse_transform(train.X), columns=train.feature_names)
    nan = sum(int((~np.isfinite(a)).sum()) for s in splits.values() for a in (s.X, s.y))
    return [
        quality.size(sum(len(s.y) for s in splits.values()), limits),
        quality.missing(cleaning["rows_in"], cleaning["dropped_missing"], nan, limits),
        quality.dropped(cleaning["rows_in"], cleaning["rows_out"], limits),
        quality.outliers(numeric[[*NUMERIC, "total_spent"]], limits),
        quality.balance({s: v.y for s, v in splits.items()}, limits),
    ]


def raw_checks(path: str, limits: quality.Limits) -> list[quality.Check]:
    raw = datasets.read_csv(path)
    try:
        normalized, _ = normalize(raw)
        df, report = clean(raw)
    except ValueError as exc:
        raise Refused(422, f"{path} is not customer data: {exc}", reasons=[str(exc)]) from exc
    return [
        quality.size(report.rows_out, limits),
        quality.missing(report.rows_in, int(normalized.isna().any(axis=1).sum()), 0, limits),
        quality.dropped(report.rows_in, report.rows_out, limits),
        quality.outliers(df[list(NUMERIC)], limits),
        quality.balance({"all": df[TARGET].to_numpy()}, limits),
    ]


@endpoint(Validate)
def handler(event: Validate) -> dict[str, Any]:
    limits = quality.Limits(
        min_rows=event.min_rows,
        max_missing_fraction=event.max_missing_fraction,
        max_dropped_fraction=event.max_dropped_fraction,
        max_outlier_fraction=event.max_outlier_fraction,
        min_minority_fraction=event.min_minority_fraction,
    )
    raw = event.data_path.lower().endswith(".csv")
    checks = (raw_checks if raw else prepared_checks)(event.data_path, limits)
    result = {"validated_path": event.data_path, **quality.summary(checks)}
    if not result["data_valid"]:
        reasons = "; ".join(result["reasons"])
        logger.warning("%s is unusable: %s", event.data_path, reasons)
        raise Refused(
            422,
            f"data for {event.model_name} is unusable: {reasons}",
            **result,
        )
    logger.info("%s passed every check", event.data_path)
    return result
