"""Bunsui's engine overhead beside Prefect, Dagster, Luigi and Airflow on the same no-op DAGs.

Run: .venv/bin/python bench/compare/run.py [--quick] [--frameworks prefect,luigi] [--cap 10]

Prints one Markdown table. The shapes are bench/engine.py's: a 100-job chain,
a 1,000-job fan-out/fan-in and a 10,000-item for_each fan-out. Bunsui's rows
(and the plain-Python floor) come from bench/engine.py itself, run in the
project's venv in the same run, one run per shape, read from its ``--json``.
Each other framework gets its own virtualenv, .venv-bench/<framework>,
installed from the pinned bench/compare/requirements-<framework>.txt
(re-installed only when that file changes), so none of them ever enters the
project's environment. Each framework and shape runs in a fresh process
(bench/compare/bench_<framework>.py) in a fresh scratch folder, one after
another, killed at the cap (10 minutes unless ``--cap`` says otherwise); it
reports JSON (see measure.py for what is timed).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from measure import expected_tasks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENVS = ROOT / ".venv-bench"
FRAMEWORKS = ("prefect", "dagster", "luigi", "airflow")
NAMES = {"prefect": "Prefect", "dagster": "Dagster", "luigi": "Luigi", "airflow": "Airflow"}
PACKAGES = {"airflow": "apache-airflow"}
SHAPES = (("chain", 100), ("fan-out/fan-in", 1_000), ("for_each", 10_000))
FLOOR = "plain Python loop"
BUNSUI = "Bunsui (SQLite)"

ENGINE_BENCH = ROOT / "bench" / "engine.py"
# Times the import of the modules named after the source folder.
TIMED_IMPORT = """
import importlib, sys, time
sys.path.insert(0, sys.argv[1])
start = time.perf_counter()
for name in sys.argv[2:]:
    importlib.import_module(name)
print(time.perf_counter() - start)
"""


@dataclass
class Row:
    """One line of the table; ``problem`` replaces the figures of a run that gave none."""

    framework: str
    version: str
    shape: str
    size: int
    tasks: int = 0
    total_s: float | None = None
    import_s: float | None = None
    warm_up_s: float | None = None
    define_s: float | None = None
    notes: list[str] = field(default_factory=list)
    problem: str = ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shapes a tenth the size")
    parser.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma-separated subset of " + ", ".join(FRAMEWORKS),
    )
    parser.add_argument("--cap", type=float, default=10, help="minutes per framework and shape")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    parser.add_argument("--logs", type=Path, help="keep each run's output in this folder")
    return parser.parse_args()


def requirements(framework: str) -> Path:
    return HERE / f"requirements-{framework}.txt"


def ensure_venv(framework: str) -> str:
    """Create or update .venv-bench/<framework>; an empty string, or why it failed.

    The venv is built from the interpreter behind this one (``venv`` run from a
    venv uses its base Python), so every framework runs on the project's Python.
    A stamp of the requirements file's hash skips pip when nothing changed.
    """
    venv = VENVS / framework
    wanted = hashlib.sha256(requirements(framework).read_bytes()).hexdigest()
    stamp = venv / "requirements.sha256"
    if stamp.exists() and stamp.read_text() == wanted:
        return ""
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements(framework))],
    ]
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            return f"did not install: {last_line(done.stderr or done.stdout)}"
    stamp.write_text(wanted)
    return ""


def pinned_version(framework: str) -> str:
    """The framework's version as its requirements file pins it."""
    prefix = f"{PACKAGES.get(framework, framework)}==".lower()
    for line in requirements(framework).read_text().splitlines():
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip()
    return ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:200]


def run_framework(framework: str, shape: str, size: int, cap_s: float, logs: Path) -> Row:
    """One framework and shape in its own process and scratch folder, killed at the cap."""
    row = Row(framework, pinned_version(framework), shape, size, expected_tasks(shape, size))
    with tempfile.TemporaryDirectory(prefix=f"bench-{framework}-") as scratch:
        out = Path(scratch) / "result.json"
        log = logs / f"{framework}-{shape.replace('/', '-')}-{size}.log"
        command = [
            str(VENVS / framework / "bin" / "python"),
            str(HERE / f"bench_{framework}.py"),
            *("--shape", shape, "--size", str(size), "--out", str(out), "--cap", str(cap_s)),
        ]
        start = time.perf_counter()
        with log.open("w") as output:
            # A session of its own, so that a kill at the cap also ends what the
            # framework started (Prefect's temporary server is a subprocess).
            process = subprocess.Popen(
                command,
                cwd=scratch,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code: int | None = process.wait(timeout=cap_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        elapsed = time.perf_counter() - start
        if out.exists():
            fill(row, json.loads(out.read_text()), code is None)
            if code:
                row.notes.append(f"exit {code} after its result: {last_line(log.read_text())}")
        elif code is None:
            row.problem = f"did not finish in {cap_s / 60:.3g} min"
            progress = out.with_suffix(".progress")
            if progress.exists():
                row.notes.append(f"{int(progress.read_text()):,} tasks had run")
        else:
            row.problem = f"failed (exit {code}): {last_line(log.read_text())}"
    row.notes.append(f"process {elapsed:.1f} s")
    return row


def fill(row: Row, result: dict[str, Any], killed: bool) -> None:
    """Copy a script's JSON into a row, with notes on what it recorded after the run."""
    row.version = result["version"]
    row.tasks = result["tasks"]
    row.total_s = result["total_s"]
    row.import_s = result["import_s"]
    row.warm_up_s = result["warm_up_s"]
    row.define_s = result["define_s"]
    if "recorded_s" in result:
        per_task = result["recorded_s"] / row.tasks * 1000
        row.notes.append(
            f"all task runs recorded by the server {result['recorded_s']:.1f} s after the start"
            f" ({per_task:.1f} ms per task)"
        )
    elif "recorded_tasks" in result or killed:
        recorded = result.get("recorded_tasks")
        counted = "?" if recorded is None else f"{recorded:,}"
        row.notes.append(f"{counted} of {row.tasks:,} task runs recorded by the server at the cap")


def run_bunsui(quick: bool, cap_s: float) -> list[Row]:
    """bench/engine.py in the project's venv, read back from its ``--json`` figures.

    One run of each shape (``--repeat 1``), as every other framework gets, not
    the fastest of several.
    """
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as scratch:
        figures = Path(scratch) / "engine.json"
        command = [
            sys.executable,
            str(ENGINE_BENCH),
            *("--repeat", "1", "--json", str(figures)),
            *(["--quick"] if quick else []),
        ]
        subprocess.run(command, capture_output=True, timeout=3 * cap_s, check=True, cwd=ROOT)
        document = json.loads(figures.read_text())
    import_s = bunsui_import_seconds()
    rows = []
    for figure in document["engine"]:
        shape, size = figure["shape"].rsplit(" ", 1)
        jobs = figure["jobs"]
        bunsui = Row(BUNSUI, bunsui_version(), shape, int(size.replace(",", "")), jobs)
        bunsui.total_s, bunsui.import_s = figure["seconds"], import_s
        bunsui.notes.append(
            f"SQLite file (WAL), all committed at the end; {figure['commits_per_job']:.2f}"
            " commits per job"
        )
        floor = Row(FLOOR, document["python"], shape, bunsui.size, jobs)
        floor.total_s = figure["plain_loop_us_per_job"] * 1e-6 * jobs
        rows += [bunsui, floor]
    return rows


def engine_imports() -> list[str]:
    """The engine modules bench/engine.py imports at its top, so the import timed is its own."""
    tree = ast.parse(ENGINE_BENCH.read_text())
    modules = [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    modules += [
        alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names
    ]
    return [name for name in modules if name and name.split(".")[0] == "engine"]


def bunsui_import_seconds() -> float:
    """The second of two imports of what bench/engine.py imports, from compiled bytecode.

    Bunsui runs from its source tree, where no bytecode may be cached (pip
    compiled the frameworks' packages when it installed them); a private
    cache, filled by a first import, makes the timed one compare alike.
    """
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        command = [sys.executable, "-c", TIMED_IMPORT, str(ROOT / "src"), *engine_imports()]
        for _ in range(2):
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


def bunsui_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bunsui")
    except PackageNotFoundError:
        return "source"


def duration(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1e-4:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1000:.3g} ms" if value < 0.1 else f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def markdown(rows: list[Row]) -> str:
    """One table, rows grouped by shape, the floor and Bunsui first in each group."""
    order = [FLOOR, BUNSUI, *FRAMEWORKS]
    rows = sorted(
        rows,
        key=lambda row: (
            [shape for shape, _ in SHAPES].index(row.shape),
            order.index(row.framework),
        ),
    )
    lines = [
        "| framework | version | shape | tasks | run total | per task | import "
        "| warm-up run (2 items) | define DAG | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        shape = f"{row.shape} {row.size:,}"
        if row.problem:
            figures = f"| — | **{row.problem}** | {duration(row.import_s)} | — | — "
        else:
            per_task = row.total_s / row.tasks if row.total_s is not None else None
            figures = (
                f"| {duration(row.total_s)} | **{duration(per_task)}** "
                f"| {duration(row.import_s)} | {duration(row.warm_up_s)} "
                f"| {duration(row.define_s)} "
            )
        tasks = f"{row.tasks:,}" if row.tasks else "—"
        name = NAMES.get(row.framework, row.framework)
        lines.append(
            f"| {name} | {row.version or '—'} | {shape} | {tasks} "
            f"{figures}| {'; '.join(row.notes)} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    cap_s = args.cap * 60
    wanted = [name.strip() for name in args.frameworks.split(",") if name.strip()]
    unknown = set(wanted) - set(FRAMEWORKS)
    if unknown:
        raise SystemExit(f"unknown frameworks: {', '.join(sorted(unknown))}")
    shapes = [(shape, size // 10 if args.quick else size) for shape, size in SHAPES]
    rows = run_bunsui(args.quick, cap_s)
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as spare:
        logs = args.logs or Path(spare)
        logs.mkdir(parents=True, exist_ok=True)
        for framework in (name for name in FRAMEWORKS if name in wanted):
            if not requirements(framework).exists():
                continue
            problem = ensure_venv(framework)
            for shape, size in shapes:
                print(f"{framework}: {shape} {size:,}", file=sys.stderr, flush=True)
                row = (
                    Row(
                        framework,
                        pinned_version(framework),
                        shape,
                        size,
                        expected_tasks(shape, size),
                        problem=problem,
                    )
                    if problem
                    else run_framework(framework, shape, size, cap_s, logs)
                )
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
