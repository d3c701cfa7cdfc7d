"""The churn data's schema, its cleaning, and its features.

One place for what prepare, the parallel feature/label functions, validation
and serving all need to agree on: which values are valid, how categories are
spelled, and which columns the model sees, in which order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

NUMERIC = ("age", "tenure", "monthly_charges")
TARGET = "churn"
CATEGORIES: dict[str, tuple[str, ...]] = {
    "gender": ("Female", "Male"),
    "contract_type": ("Month-to-month", "One year", "Two year"),
    "payment_method": ("Bank transfer", "Credit card", "Electronic check", "Mailed check"),
}
COLUMNS = (*NUMERIC, *CATEGORIES, TARGET)

# The product's age groups: (0, 25], (25, 35], (35, 50], (50, 100].
AGE_BINS = (0, 25, 35, 50, 100)
AGE_GROUPS = ("young", "adult", "senior", "elderly")

# What a real customer record can hold; anything else is a data error.
VALID_RANGES: dict[str, tuple[float, float]] = {
    "age": (18, 100),  # adults only: a contract needs one; AGE_BINS end at 100
    "tenure": (0, 120),  # months; the company is ten years old
    "monthly_charges": (0.01, 500.0),
}
ENCODED = (*CATEGORIES, "age_group")
"""Every non-numeric column, one-hot encoded (the product's snippet forgot age_group)."""


@dataclass
class CleaningReport:
    """What cleaning did, row by row, in the order it was done."""

    rows_in: int = 0
    normalized_values: int = 0
    dropped_missing: int = 0
    dropped_invalid: int = 0
    dropped_duplicates: int = 0
    rows_out: int = 0
    invalid_by_column: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.rows_in - self.rows_out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dropped": self.dropped}


def _canonical(column: str) -> dict[str, str]:
    return {" ".join(v.lower().split()): v for v in CATEGORIES[column]}


def normalize(raw: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The schema's columns with canonical categories and numbers, and how many values
    were respelled.

    Categories are trimmed and matched without case (``" month-to-month "`` is
    ``Month-to-month``); an unknown category stays as written, a blank one becomes
    missing, and a number that does not parse becomes missing.

    Raises:
        ValueError: A column of the schema is missing.
    """
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"the data has no column {', '.join(missing)}")
    df = raw[list(COLUMNS)].copy()
    respelled = 0
    for column in CATEGORIES:
        text = df[column].astype("string")
        key = text.str.lower().str.split().str.join(" ")
        canonical = key.map(_canonical(column)).astype("string")
        respelled += int(((canonical != text) & canonical.notna()).sum())
        df[column] = canonical.fillna(text.where(text.str.strip() != ""))
    for column in (*NUMERIC, TARGET):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    return df, respelled


def invalid(df: pd.DataFrame) -> tuple[pd.Series, dict[str, int]]:
    """Rows (of normalized data without missing values) that hold an impossible value,
    and how many rows each column condemns first."""
    bad = pd.Series(False, index=df.index)
    by_column: dict[str, int] = {}
    checks = [
        *((c, ~df[c].between(low, high)) for c, (low, high) in VALID_RANGES.items()),
        *((c, ~df[c].isin(values)) for c, values in CATEGORIES.items()),
        (TARGET, ~df[TARGET].isin((0, 1))),
    ]
    for column, wrong in checks:
        by_column[column] = int((wrong & ~bad).sum())
        bad |= wrong
    return bad, by_column


def clean(raw: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Valid, de-duplicated rows with canonical categories and numeric types.

    Rows with a missing value, then rows with an impossible number or an unknown
    category, then exact duplicates are dropped; the report counts each.

    Raises:
        ValueError: A column of the schema is missing.
    """
    report = CleaningReport(rows_in=len(raw))
    df, report.normalized_values = normalize(raw)
    has_missing = df.isna().any(axis=1)
    report.dropped_missing = int(has_missing.sum())
    df = df[~has_missing]
    bad, report.invalid_by_column = invalid(df)
    report.dropped_invalid = int(bad.sum())
    df = df[~bad]
    duplicated = df.duplicated()
    report.dropped_duplicates = int(duplicated.sum())
    df = df[~duplicated].astype({TARGET: "int64"})
    report.rows_out = len(df)
    return df, report  # the index stays the raw row number: the rows' ids downstream


def engineer(df: pd.DataFrame) -> pd.DataFrame:
    """The model's features, in :func:`feature_names` order, from clean rows.

    Adds the product's features, ``age_group`` and ``total_spent``, and one-hot
    encodes every non-numeric column against the fixed category lists, so the
    columns are the same whatever values a batch happens to hold.
    """
    out = df[list(NUMERIC)].astype("float64")
    out["total_spent"] = out["monthly_charges"] * out["tenure"]
    groups = pd.cut(df["age"], bins=list(AGE_BINS), labels=list(AGE_GROUPS))
    values = {**{c: df[c] for c in CATEGORIES}, "age_group": groups}
    for column in ENCODED:
        choices = CATEGORIES.get(column, AGE_GROUPS)
        series = pd.Categorical(values[column], categories=list(choices))
        for choice in choices:
            out[f"{column}_{choice}"] = (series == choice).astype("float64")
    return out[feature_names()]


def feature_names() -> list[str]:
    names = [*NUMERIC, "total_spent"]
    for column in ENCODED:
        names += [f"{column}_{choice}" for choice in CATEGORIES.get(column, AGE_GROUPS)]
    return names


def split_indices(
    labels: np.ndarray, test_size: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and test rows, stratified by label.

    Deterministic for the same labels, so the feature and label functions of the
    parallel pipeline, which run apart, cut the data at the same rows.

    Raises:
        ValueError: A class has fewer than two rows (it cannot be stratified).
    """
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    train, test = train_test_split(
        positions, test_size=test_size, random_state=seed, stratify=labels
    )
    return np.sort(train), np.sort(test)


def raw_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Raw customer records (as a client sends them) as a frame with the schema's columns."""
    frame = pd.DataFrame.from_records(records)
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = 0 if column == TARGET else np.nan
    return frame
