"""Writes the example's customer churn CSV: realistic, reproducible, and a little dirty.

    python -m data.generate                       # s3://data-bucket/customer_data.csv
    python -m data.generate --output /tmp/c.csv   # a plain file
    python -m data.generate --bad --output s3://data-bucket/bad_data.csv

Run it from the example's folder (examples/ml-pipeline). An ``s3://`` output goes
through mlcommon.storage: to ``$ML_LOCAL_S3_ROOT/<bucket>/<key>`` when
``ML_LOCAL_S3_ROOT`` is set, else to ``.local-s3/`` beside this project (the
stand-in ``bunsui.local.yml`` uses); ``--aws`` writes to S3 itself.

Churn depends on the contract (month-to-month customers leave), tenure (new
customers leave), the monthly charge, electronic-check payment and, a little, age;
gender has no effect. One row in twenty is dirty: missing values, impossible
numbers (negative age, tenure or charge, age 150), unknown categories, exact
duplicates; and one in twenty-five spells a category with stray spaces or case
(``" month-to-month"``, ``"MALE"``), which cleaning repairs rather than drops.

``--bad`` writes data that validation must refuse: a few hundred rows, almost no
churners, and a third of the rows broken.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script: make mlcommon importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlcommon import storage
from mlcommon.features import CATEGORIES, COLUMNS

DEFAULT_OUTPUT = "s3://data-bucket/customer_data.csv"
SEED = 42


def customers(rows: int, rng: np.random.Generator, churn_shift: float = 0.0) -> pd.DataFrame:
    """Clean customers with churn drawn from a logistic model of their attributes."""
    contract = rng.choice(CATEGORIES["contract_type"], size=rows, p=[0.55, 0.25, 0.20])
    monthly = contract == "Month-to-month"
    two_year = contract == "Two year"
    tenure = np.where(
        monthly,
        rng.exponential(14.0, rows),
        np.where(two_year, rng.uniform(24, 72, rows), rng.uniform(12, 60, rows)),
    )
    tenure = np.clip(np.round(tenure), 0, 72).astype(int)
    age = np.clip(np.round(rng.normal(45, 15, rows)), 18, 85).astype(int)
    charges = np.round(np.clip(rng.normal(68, 28, rows), 18.25, 120.0), 2)
    payment = rng.choice(CATEGORIES["payment_method"], size=rows, p=[0.22, 0.23, 0.35, 0.20])
    gender = rng.choice(CATEGORIES["gender"], size=rows)
    logit = (
        -2.6
        + 3.4 * monthly
        - 2.0 * two_year
        + 1.5 * (payment == "Electronic check")
        - 0.11 * tenure
        + 0.045 * (charges - 68)
        - 0.025 * (age - 45)
        + churn_shift
    )
    churn = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "age": age,
            "tenure": tenure,
            "monthly_charges": charges,
            "gender": gender,
            "contract_type": contract,
            "payment_method": payment,
            "churn": churn,
        },
        columns=list(COLUMNS),
    )


def dirty(df: pd.DataFrame, rng: np.random.Generator, broken: int, copies: int) -> pd.DataFrame:
    """The rows with ``broken`` of them spoilt, as many respelled, ``copies`` duplicated."""
    df = df.astype({"age": "object", "tenure": "object", "monthly_charges": "object"})
    df["churn"] = df["churn"].astype("Int64")  # stays 0/1 in the CSV next to missing values
    picked = rng.permutation(len(df))[: 2 * broken]
    cut = (broken * 2 // 5, broken * 4 // 5, broken)  # 40% missing, 40% impossible, 20% unknown
    missing, impossible, unknown, spelled = np.split(picked, cut)

    for row in missing:  # missing values, in any column
        df.iat[row, rng.integers(0, len(COLUMNS))] = None
    for i, row in enumerate(impossible):
        column, value = [
            ("age", -int(rng.integers(1, 60))),
            ("age", int(rng.integers(150, 200))),
            ("tenure", -int(rng.integers(1, 24))),
            ("monthly_charges", -round(float(rng.uniform(5, 80)), 2)),
        ][i % 4]
        df.iat[row, df.columns.get_loc(column)] = value
    for i, row in enumerate(unknown):
        column, value = [("payment_method", "Bitcoin"), ("contract_type", "Lifetime")][i % 2]
        df.iat[row, df.columns.get_loc(column)] = value
    for row in spelled:  # stray spaces and case: repaired by cleaning, not dropped
        at = df.columns.get_loc(("gender", "contract_type", "payment_method")[rng.integers(0, 3)])
        value = str(df.iat[row, at])
        df.iat[row, at] = rng.choice(
            [f" {value}", f"{value}  ", value.upper(), value.lower(), f" {value.lower()} "]
        )
    doubles = df.iloc[rng.choice(len(df), size=copies, replace=False)]
    out = pd.concat([df, doubles], ignore_index=True)  # exact duplicates, shuffled in
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


def generate(rows: int = 5000, seed: int = SEED, bad: bool = False) -> pd.DataFrame:
    """``rows`` customers (duplicates included), the same for the same seed."""
    rng = np.random.default_rng(seed)
    broken, copies, churn_shift = (
        (int(rows * 0.35), int(rows * 0.05), -3.5) if bad else (int(rows * 0.04), rows // 100, 0.0)
    )
    return dirty(customers(rows - copies, rng, churn_shift), rng, broken, copies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="s3:// URI or file path")
    parser.add_argument("--rows", type=int, default=None, help="default 5000 (300 with --bad)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--bad", action="store_true", help="data that validation refuses")
    parser.add_argument("--aws", action="store_true", help="write an s3:// output to S3 itself")
    args = parser.parse_args(argv)
    if storage.is_s3(args.output) and not args.aws:
        os.environ.setdefault(storage.LOCAL_ROOT_ENV, ".local-s3")
    rows = args.rows or (300 if args.bad else 5000)
    frame = generate(rows, args.seed, args.bad)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    storage.write_bytes(args.output, buffer.getvalue().encode())
    where = storage.local_path(args.output) or args.output
    print(f"wrote {len(frame)} rows ({frame['churn'].eq(1).mean():.1%} churn) to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
