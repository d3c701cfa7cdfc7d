"""Engine overhead per job: the reducer on the local SQLite store with no-op jobs.

Run: .venv/bin/python bench/engine.py [--quick]
Prints a Markdown table for docs/benchmarks.md. Three shapes: a 100-job
chain, a 1,000-job fan-out/fan-in, and a 10,000-item for_each fan-out. Jobs
are no-ops that finish at once (in process), so what is measured is the
engine: the store's conditional writes, edge counting, decisions and
history. The baseline calls the same no-op in topological order in a plain
Python loop.
"""

from __future__ import annotations

import argparse
import gc
import queue
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from engine.events import AttemptFinished, Event  # noqa: E402
from engine.loader import load_pipeline  # noqa: E402
from engine.local.store import SqliteStore  # noqa: E402
from engine.ports import Dispatch  # noqa: E402
from engine.reducer import Reducer  # noqa: E402
from engine.state import SessionStatus  # noqa: E402

NOW = "2026-01-01T00:00:00+00:00"


def no_op(payload: Any) -> dict[str, Any]:
    return {"ok": True}


def job(job_id: str, parents: list[str], extra: str = "", command: str = "x") -> str:
    return (
        f"  - {{id: {job_id}, type: custom, depends_on: [{', '.join(parents)}],{extra}"
        f" parameters: {{command: {command}}}}}"
    )


def chain(n: int) -> str:
    jobs = [job(f"j{i}", [f"j{i - 1}"] if i else []) for i in range(n)]
    return "\n".join(['version: "1.1"', f"name: chain-{n}", "jobs:", *jobs]) + "\n"


def fan_in(n: int) -> str:
    middle = [f"m{i}" for i in range(n)]
    jobs = [job("root", []), *(job(m, ["root"]) for m in middle), job("sink", middle)]
    return "\n".join(['version: "1.1"', f"name: fan-{n}", "jobs:", *jobs]) + "\n"


def for_each(n: int) -> str:
    items = ", ".join(map(str, range(n)))
    jobs = [
        job("split", []),
        job("each", ["split"], f" for_each: {{items: [{items}]}},", '"run ${item}"'),
        job("done", ["each"]),
    ]
    return "\n".join(['version: "1.1"', f"name: each-{n}", "jobs:", *jobs]) + "\n"


class InProcess:
    """Dispatcher and timers: a no-op job finishes at once, its result queued."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.jobs = 0

    def dispatch(self, order: Dispatch) -> str:
        self.jobs += 1
        result = no_op(order.inputs)
        self.events.put(AttemptFinished(order.session_id, order.key, order.attempt, NOW, result))
        return "h"

    def stop(self, session_id: str, key: str, handle: Any) -> None:
        pass

    def schedule(self, event: Event, at: str) -> None:
        self.events.put(event)


def run_engine(text: str, folder: Path, trace: bool) -> tuple[float, int, int]:
    """Seconds, jobs run and peak traced memory (0 unless ``trace``: tracing slows it)."""
    pipeline = load_pipeline(text)
    store = SqliteStore(folder / f"{pipeline.name}-{trace}.db")
    world = InProcess()
    reducer = Reducer(store, world, world, lambda name, version: pipeline)
    gc.collect()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    reducer.start(pipeline, 1, {}, "s", NOW)
    while True:
        try:
            event = world.events.get_nowait()
        except queue.Empty:
            break
        reducer.handle(event)
    seconds = time.perf_counter() - start
    peak = 0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert store.get_session("s").status is SessionStatus.SUCCEEDED
    return seconds, world.jobs, peak


def run_baseline(text: str) -> float:
    pipeline = load_pipeline(text)
    start = time.perf_counter()
    for job_id in pipeline.graph.topological_order:
        job = pipeline.job(job_id)
        count = len(job.fan_out.items) if job.fan_out and isinstance(job.fan_out.items, list) else 1
        for _ in range(count):
            no_op({})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    quick = parser.parse_args().quick
    shapes = [
        ("chain", chain, 100),
        ("fan-out/fan-in", fan_in, 1_000),
        ("for_each", for_each, 10_000),
    ]
    if quick:
        shapes = [(label, make, n // 10) for label, make, n in shapes]
    print("| shape | jobs run | engine total | per job | peak traced memory | plain loop per job |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for label, make, n in shapes:
            text = make(n)
            seconds, jobs, _ = run_engine(text, Path(folder), trace=False)
            _, _, peak = run_engine(text, Path(folder), trace=True)
            baseline = run_baseline(text)
            print(
                f"| {label} {n:,} | {jobs:,} | {seconds:.2f} s | {seconds / jobs * 1000:.3f} ms "
                f"| {peak / 1e6:.1f} MB | {baseline / jobs * 1e6:.2f} µs |"
            )


if __name__ == "__main__":
    main()
