"""Data quality checks: size, missing values, outliers, class balance.

Each check returns a :class:`Check`; the data is usable when every check passes.
The limits are arguments, so a pipeline can tighten them in its payload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

OUTLIER_IQR = 3.0
"""A value beyond 3 interquartile ranges outside the quartiles is an outlier (Tukey's far out)."""


@dataclass(frozen=True)
class Limits:
    min_rows: int = 1000
    max_missing_fraction: float = 0.05
    max_dropped_fraction: float = 0.2
    max_outlier_fraction: float = 0.05
    min_minority_fraction: float = 0.1
    max_split_gap: float = 0.05


@dataclass
class Check:
    name: str
    passed: bool
    reason: str
    values: dict[str, Any] = field(default_factory=dict)


def size(rows: int, limits: Limits) -> Check:
    return Check(
        "size",
        rows >= limits.min_rows,
        f"only {rows} usable rows; at least {limits.min_rows} are needed",
        {"rows": rows, "min_rows": limits.min_rows},
    )


def missing(rows_in: int, rows_missing: int, arrays_nan: int, limits: Limits) -> Check:
    fraction = rows_missing / rows_in if rows_in else 1.0
    ok = fraction <= limits.max_missing_fraction and arrays_nan == 0
    reason = (
        f"{arrays_nan} values of the prepared data are NaN or infinite"
        if arrays_nan
        else f"{fraction:.1%} of the rows have missing values; "
        f"at most {limits.max_missing_fraction:.1%} may"
    )
    return Check(
        "missing_values",
        ok,
        reason,
        {
            "rows_with_missing": rows_missing,
            "fraction": round(fraction, 4),
            "nan_values": arrays_nan,
        },
    )


def dropped(rows_in: int, rows_out: int, limits: Limits) -> Check:
    fraction = (rows_in - rows_out) / rows_in if rows_in else 1.0
    return Check(
        "cleaning_loss",
        fraction <= limits.max_dropped_fraction,
        f"cleaning dropped {fraction:.1%} of the rows (missing, impossible or duplicate); "
        f"at most {limits.max_dropped_fraction:.1%} may go",
        {"rows_in": rows_in, "rows_out": rows_out, "fraction": round(fraction, 4)},
    )


def outliers(numeric: pd.DataFrame, limits: Limits) -> Check:
    """Rows with a value far outside its column's quartiles (IQR rule)."""
    q1, q3 = numeric.quantile(0.25), numeric.quantile(0.75)
    spread = q3 - q1
    far = (numeric < q1 - OUTLIER_IQR * spread) | (numeric > q3 + OUTLIER_IQR * spread)
    rows = int(far.any(axis=1).sum())
    fraction = rows / len(numeric) if len(numeric) else 0.0
    by_column = {c: int(n) for c, n in far.sum().items() if n}
    return Check(
        "outliers",
        fraction <= limits.max_outlier_fraction,
        f"{fraction:.1%} of the rows hold outliers ({by_column}); "
        f"at most {limits.max_outlier_fraction:.1%} may",
        {"rows": rows, "fraction": round(fraction, 4), "by_column": by_column},
    )


def balance(splits: dict[str, np.ndarray], limits: Limits) -> Check:
    """Both classes well represented, and in the same proportion in every split."""
    labels = np.concatenate(list(splits.values()))
    counts = {str(c): int((labels == c).sum()) for c in (0, 1)}
    minority = min(counts.values()) / len(labels) if len(labels) else 0.0
    rates = {name: float(y.mean()) if len(y) else 0.0 for name, y in splits.items()}
    gap = max(rates.values()) - min(rates.values())
    problems = []
    if minority < limits.min_minority_fraction:
        problems.append(
            f"the smaller class is {minority:.1%} of the rows (counts {counts}); "
            f"at least {limits.min_minority_fraction:.1%} is needed"
        )
    if gap > limits.max_split_gap:
        problems.append(f"the churn rate differs by {gap:.1%} between the splits {rates}")
    return Check(
        "class_balance",
        not problems,
        "; ".join(problems),
        {"class_counts": counts, "minority_fraction": round(minority, 4), "churn_rate": rates},
    )


def summary(checks: list[Check]) -> dict[str, Any]:
    return {
        "data_valid": all(c.passed for c in checks),
        "reasons": [c.reason for c in checks if not c.passed],
        "checks": {c.name: {"passed": c.passed, **c.values} for c in checks},
    }
