"""The prepared data set: built from raw rows, stored as ``.npz`` objects, read back.

A data set folder (``s3://ml-bucket/prepared/<model>``) holds::

    train.npz       X (scaled features), y (churn), ids (raw CSV row numbers)
    test.npz        the same for the held-out rows
    scaler.joblib   the fitted StandardScaler: serving scales new rows with it
    metadata.json   feature names, the cleaning report, class balance, sizes

The parallel pipeline writes the same thing in two halves, ``features/`` (X, ids,
the scaler) and ``labels/`` (y, ids); :func:`load_split` joins them on ``ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlcommon import storage
from mlcommon.features import TARGET, CleaningReport, clean, engineer, feature_names, split_indices

SPLITS = ("train", "test")


@dataclass
class Prepared:
    """Clean, encoded, split and scaled data, ready to store."""

    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    ids: dict[str, np.ndarray]
    scaler: Any
    feature_names: list[str]
    report: CleaningReport

    def metadata(self, source: str) -> dict[str, Any]:
        y_all = np.concatenate([self.y["train"], self.y["test"]])
        return {
            "source": source,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "feature_names": self.feature_names,
            "cleaning": self.report.as_dict(),
            "rows": {split: len(self.y[split]) for split in SPLITS},
            "class_counts": {str(c): int((y_all == c).sum()) for c in (0, 1)},
            "positive_rate": {split: float(self.y[split].mean()) for split in SPLITS},
        }


def prepare(raw: pd.DataFrame, test_size: float = 0.2, seed: int = 42) -> Prepared:
    """Clean, add the features, split (stratified on churn) and scale.

    The scaler is fitted on the training rows only, so no statistic of the test
    rows leaks into training.

    Raises:
        ValueError: A column is missing, or a class has too few rows to split.
    """
    from sklearn.preprocessing import StandardScaler

    df, report = clean(raw)
    labels = df[TARGET].to_numpy()
    train, test = split_indices(labels, test_size, seed)
    features = engineer(df).to_numpy()
    scaler = StandardScaler().fit(features[train])
    rows = {"train": train, "test": test}
    return Prepared(
        X={s: scaler.transform(features[r]) for s, r in rows.items()},
        y={s: labels[r] for s, r in rows.items()},
        ids={s: df.index.to_numpy()[r] for s, r in rows.items()},
        scaler=scaler,
        feature_names=feature_names(),
        report=report,
    )


def read_csv(uri: str) -> pd.DataFrame:
    import io

    return pd.read_csv(io.BytesIO(storage.read_bytes(uri)), skipinitialspace=False)


# ---------------------------------------------------------------- storing


def save(prepared: Prepared, prefix: str, source: str, part: str = "all") -> dict[str, Any]:
    """Write the data set (``part`` "all"), or only its ``features`` or ``labels`` half.

    Returns:
        The metadata written.
    """
    for split in SPLITS:
        arrays: dict[str, np.ndarray] = {"ids": prepared.ids[split]}
        if part in ("all", "features"):
            arrays["X"] = prepared.X[split]
        if part in ("all", "labels"):
            arrays["y"] = prepared.y[split]
        storage.save_arrays(storage.join(prefix, f"{split}.npz"), **arrays)
    if part in ("all", "features"):
        storage.save_object(storage.join(prefix, "scaler.joblib"), prepared.scaler)
    metadata = {**prepared.metadata(source), "part": part}
    storage.write_json(storage.join(prefix, "metadata.json"), metadata)
    return metadata


def save_test(prepared: Prepared, prefix: str, source: str, part: str = "all") -> None:
    """The held-out rows alone, where evaluation reads them (``s3://ml-bucket/test/<model>``)."""
    arrays: dict[str, np.ndarray] = {"ids": prepared.ids["test"]}
    if part in ("all", "features"):
        arrays["X"] = prepared.X["test"]
    if part in ("all", "labels"):
        arrays["y"] = prepared.y["test"]
    folder = prefix if part == "all" else storage.join(prefix, part)
    # One layout at a time: test rows left by a run with the other layout would be read
    # instead of these (see parts()).
    stale = [storage.join(prefix, half) for half in ("features", "labels")]
    for other in [prefix] if part != "all" else stale:
        storage.delete(storage.join(other, "test.npz"))
    storage.save_arrays(storage.join(folder, "test.npz"), **arrays)
    storage.write_json(
        storage.join(folder, "metadata.json"),
        {"source": source, "feature_names": prepared.feature_names, "part": part},
    )


# ---------------------------------------------------------------- reading


@dataclass
class Split:
    """One split of a data set: features, labels, row ids, and the feature names."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    feature_names: list[str]


def parts(prefix: str, split: str) -> list[str]:
    """The folders that hold ``split`` of the data set at ``prefix``: itself, or its halves."""
    if storage.exists(storage.join(prefix, f"{split}.npz")):
        return [prefix]
    return [storage.join(prefix, "features"), storage.join(prefix, "labels")]


def load_split(folders: Sequence[str], split: str) -> Split:
    """``split`` from one folder, or joined from a features folder and a labels folder.

    Raises:
        storage.NotFound: A folder has no such split.
        ValueError: The halves hold different rows, or X or y is missing.
    """
    found: dict[str, np.ndarray] = {}
    names: list[str] = []
    for folder in folders:
        arrays = storage.load_arrays(storage.join(folder, f"{split}.npz"))
        ids = arrays.pop("ids")
        if "ids" in found and not np.array_equal(found["ids"], ids):
            raise ValueError(f"{folder} holds other rows than {folders[0]}; prepare them again")
        found["ids"] = ids
        found.update(arrays)
        if "X" in arrays:
            names = storage.read_json(storage.join(folder, "metadata.json"))["feature_names"]
    if "X" not in found or "y" not in found:
        raise ValueError(f"{', '.join(folders)}: {split} needs both features (X) and labels (y)")
    return Split(found["X"], found["y"], found["ids"], names)
