"""The measurement every framework script shares: shapes, the no-op, timing, JSON out.

Standard library only, because it is imported inside each framework's own
virtualenv. A framework script imports its framework first (timing that
import itself, since only the script knows which modules are the
framework's), then hands ``main`` a ``build`` function: ``build(shape, n)``
defines the DAG and returns a callable that runs it once. ``main`` times the
pieces separately so that the per-task figure holds the run of the DAG
alone, as bench/engine.py's does:

- set-up: a warm-up run of the same shape with 2 items, so that one-off
  costs (a framework's local server, first-use caches) are seen but kept out
  of the per-task figure;
- define: building the DAG (bench/engine.py loads its pipeline untimed too);
- total: running the DAG until the framework returns, every task finished.

The no-op counts its calls, so a run that skipped tasks is an error, not a
fast row. Each run starts in a fresh scratch folder as its working
directory, where a framework keeps whatever it writes (Prefect's database).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHAPES = ("chain", "fan-out/fan-in", "for_each")
WARM_UP_SIZE = 2

_calls: list[None] = []


def no_op() -> dict[str, Any]:
    """The job every framework runs: return a small result, count the call.

    ``list.append`` is atomic under the GIL, so thread pools count right.
    """
    _calls.append(None)
    return {"ok": True}


def expected_tasks(shape: str, n: int) -> int:
    """Tasks a shape runs: a chain of n; a root, n middles and a sink otherwise."""
    return n if shape == "chain" else n + 2


def _run_once(
    build: Callable[[str, int], Callable[[], None]], shape: str, n: int
) -> tuple[float, float]:
    """Define and run one DAG; seconds to define, seconds to run."""
    start = time.perf_counter()
    run = build(shape, n)
    defined = time.perf_counter()
    _calls.clear()
    run()
    finished = time.perf_counter()
    due = expected_tasks(shape, n)
    if len(_calls) != due:
        raise RuntimeError(f"{shape} {n}: {len(_calls)} no-op calls, {due} due")
    return defined - start, finished - defined


def _report_progress(path: Path, stop: threading.Event) -> None:
    """Write the count of no-op calls every second, for a run killed at the cap to say."""
    while not stop.wait(1):
        path.write_text(str(len(_calls)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--size", type=int, required=True, help="chain length or fan-out width")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--cap", type=float, default=600, help="seconds before the run is killed")
    return parser.parse_args()


def main(
    framework: str,
    version: str,
    import_seconds: float,
    build: Callable[[str, int], Callable[[], None]],
    args: argparse.Namespace,
    settle: Callable[[int, float], int] | None = None,
) -> None:
    """Warm up, measure one shape, write the result as JSON to ``args.out``.

    ``settle(calls, deadline)``, where given, waits until the framework has
    recorded ``calls`` finished tasks (all the runs of this process) or the
    ``time.monotonic()`` deadline passes, and says how many it had recorded.
    It is for frameworks that return before their records are written; the
    result is written before settling, so a run stopped at the cap keeps it.
    """
    deadline = time.monotonic() + args.cap - 15
    start = time.perf_counter()
    warm_up_tasks = expected_tasks(args.shape, WARM_UP_SIZE)
    _run_once(build, args.shape, WARM_UP_SIZE)
    warm_up = time.perf_counter() - start
    stop = threading.Event()
    progress = args.out.with_suffix(".progress")
    threading.Thread(target=_report_progress, args=(progress, stop), daemon=True).start()
    define, total = _run_once(build, args.shape, args.size)
    stop.set()
    run_start = time.perf_counter() - total
    tasks = expected_tasks(args.shape, args.size)
    result: dict[str, Any] = {
        "framework": framework,
        "version": version,
        "shape": args.shape,
        "size": args.size,
        "tasks": tasks,
        "total_s": total,
        "import_s": import_seconds,
        "warm_up_s": warm_up,
        "define_s": define,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "python": sys.version.split()[0],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if settle is None:
        return
    recorded = settle(warm_up_tasks + tasks, deadline)
    result["recorded_tasks"] = recorded - warm_up_tasks
    if recorded >= warm_up_tasks + tasks:
        result["recorded_s"] = time.perf_counter() - run_start
    args.out.write_text(json.dumps(result, indent=2) + "\n")
