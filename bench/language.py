"""Benchmarks of the pipeline language: load/validate/plan sizes, and hostile input.

Run: .venv/bin/python bench/language.py  (prints a Markdown table for docs/benchmarks.md)
Timings are medians of several runs on this machine; they are measured here,
never asserted in tests.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from engine.errors import BunsuiError  # noqa: E402
from engine.loader import load_pipeline  # noqa: E402
from engine.parameters import resolve_parameters  # noqa: E402
from engine.pipeline import Parameter  # noqa: E402
from engine.plan import make_plan  # noqa: E402
from engine.templates import parse_template  # noqa: E402

PRODUCT = (ROOT / "examples" / "ml-pipeline" / "ml-pipeline.yaml").read_text()
PRODUCT_VALUES = {
    "model_name": "customer_churn_model",
    "training_data_path": "s3://data-bucket/customer_data.csv",
    "model_version": "v1.1",
    "hyperparameters": {"max_depth": 10, "n_estimators": 100},
    "evaluation_threshold": 0.85,
}


def wide_pipeline(n: int, fan_in: int = 3) -> str:
    """n jobs; job i depends on up to fan_in earlier jobs and reads an upstream output."""
    lines = [
        'version: "1.1"',
        "name: bench",
        "parameters:",
        "  - {name: bucket, type: string, default: b}",
        "jobs:",
    ]
    for i in range(n):
        deps = [f"j{i - k}" for k in range(1, fan_in + 1) if i - k >= 0]
        lines.append(f"  - id: j{i}")
        lines.append("    type: lambda")
        lines.append(f"    depends_on: [{', '.join(deps)}]")
        payload = '{"path": "s3://${bucket}/' + str(i) + '"'
        if deps:
            payload += ', "prev": "${prev_key}"'
        lines.append(f"    parameters: {{function_name: f{i}, payload: {payload}}}}}")
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def expect_error(fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        try:
            fn()
        except BunsuiError:
            return
        raise AssertionError("expected a BunsuiError")

    return call


def main() -> None:
    rows: list[tuple[str, str, str]] = []
    rows.append(
        (
            "load + validate the product pipeline (6 jobs)",
            f"{timed(lambda: load_pipeline(PRODUCT)) * 1000:.1f} ms",
            "",
        )
    )
    product = load_pipeline(PRODUCT)
    rows.append(
        (
            "plan the product pipeline",
            f"{timed(lambda: make_plan(product, PRODUCT_VALUES)) * 1000:.1f} ms",
            "",
        )
    )
    for n in (1_000, 10_000):
        text = wide_pipeline(n)
        tracemalloc.start()
        pipeline = load_pipeline(text)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        seconds = timed(lambda text=text: load_pipeline(text), repeat=3)
        rows.append(
            (
                f"load + validate {n:,} jobs ({len(text) / 1e6:.1f} MB, fan-in 3)",
                f"{seconds * 1000:.0f} ms",
                f"peak {peak / 1e6:.0f} MB traced",
            )
        )
        plan_s = timed(lambda p=pipeline: make_plan(p, {"bucket": "b"}), repeat=3)
        rows.append((f"plan {n:,} jobs", f"{plan_s * 1000:.0f} ms", ""))

    bomb = (
        "a: &a ["
        + ",".join(['"lol"'] * 9)
        + "]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
            for i in range(9)
        )
    )
    hostile = {
        "YAML alias bomb (9 levels x 9 aliases)": lambda: load_pipeline(bomb),
        "50 MB file": lambda: load_pipeline("a: '" + "x" * (50 * 1024 * 1024) + "'\n"),
        "nesting 100,000 deep": lambda: load_pipeline("[" * 100_000 + "]" * 100_000),
        "expression nested 100,000 parentheses": lambda: parse_template(
            "${" + "(" * 100_000 + "1" + ")" * 100_000 + "}"
        ),
        "pattern (a+)+$ against 100,000 a's and !": lambda: resolve_parameters(
            [Parameter.model_validate({"name": "p", "validation": {"pattern": "(a+)+$"}})],
            {"p": "a" * 100_000 + "!"},
        ),
    }
    for label, fn in hostile.items():
        rows.append(
            (
                f"hostile: {label}",
                f"{timed(expect_error(fn), repeat=3) * 1000:.1f} ms",
                "clear error",
            )
        )

    print(
        f"Python {platform.python_version()} on {platform.machine()}, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| measurement | median | note |")
    print("| --- | ---: | --- |")
    for label, value, note in rows:
        print(f"| {label} | {value} | {note} |")
    print()
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
