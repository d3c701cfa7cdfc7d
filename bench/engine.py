"""Engine overhead per job: the local driver's event loop on SQLite with no-op jobs.

Run: .venv/bin/python bench/engine.py [--quick] [--repeat N] [--json FILE] [--cli]

Prints Markdown tables for docs/benchmarks.md. Three shapes: a 100-job
chain, a 1,000-job fan-out/fan-in, and a 10,000-item for_each fan-out. Each
runs through what ``bunsui run`` drives a session with
(:class:`engine.local.backend.EventLoop`: events handled in batches, one
SQLite transaction each, dispatches started after the commit and their
handles written after), on a file database in WAL mode, but with no-op jobs
that finish at once in process: what is measured is the engine (the store's
conditional writes, edge counting, decisions, history, commits), not the
cost of starting a process. Every run ends with every transition committed.
The baseline calls the same no-op in topological order in a plain Python loop.

The first table is wall time per job, the fastest of ``--repeat`` runs. The
second says where it goes: the process's CPU time per job (what a loaded
machine does not inflate much), the same loop on ``":memory:"`` (the SQL without
a file, a WAL or a commit that lasts), and the SQL statements and commits per
job (counted in one more run; the same on any machine). ``--cli`` adds a third:
a whole ``bunsui run`` of the 100-job chain with ``command: 'true'`` jobs,
beside what it cannot go below on this machine (the CLI's start-up, and 100
processes started one after the other).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from engine.events import AttemptFinished, Event, SessionStarted  # noqa: E402
from engine.loader import load_pipeline  # noqa: E402
from engine.local.backend import EventLoop  # noqa: E402
from engine.local.store import SqliteStore  # noqa: E402
from engine.ports import Dispatch  # noqa: E402
from engine.state import JobRun, SessionStatus  # noqa: E402

NOW = "2026-01-01T00:00:00+00:00"
CLI_CHAIN = 100


def no_op(payload: Any) -> dict[str, Any]:
    return {"ok": True}


def job(job_id: str, parents: list[str], extra: str = "", command: str = "x") -> str:
    return (
        f"  - {{id: {job_id}, type: custom, depends_on: [{', '.join(parents)}],{extra}"
        f" parameters: {{command: {command}}}}}"
    )


def chain(n: int, command: str = "x") -> str:
    jobs = [job(f"j{i}", [f"j{i - 1}"] if i else [], command=command) for i in range(n)]
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
    """Dispatcher and timers: a no-op job finishes at once, its result queued (as the local
    dispatcher's worker thread would queue it), and a handle returned for the loop to write."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.jobs = 0

    def dispatch(self, order: Dispatch) -> str:
        self.jobs += 1
        result = no_op(order.inputs)
        self.events.put(AttemptFinished(order.session_id, order.key, order.attempt, NOW, result))
        return f"local:{self.jobs}"

    def stop(self, run: JobRun, job_type: str) -> None:
        pass

    def started(self, run: JobRun, job_type: str) -> bool | None:
        return True

    def schedule(self, event: Event, at: str) -> None:
        self.events.put(event)


@dataclass
class Run:
    """One session through the loop."""

    seconds: float
    cpu_seconds: float
    jobs: int
    peak_bytes: int = 0
    statements: Counter[str] = field(default_factory=Counter)
    """SQL statements executed, by first word (COMMIT, UPDATE, SELECT...); traced runs only."""


def run_engine(text: str, folder: Path | None, tag: str, trace: bool) -> Run:
    """One session to its end, on a file in ``folder`` (None: ``":memory:"``, nothing
    durable). ``trace`` also takes the peak traced memory and counts the SQL statements
    (both slow it down: such a run is not the timed one)."""
    pipeline = load_pipeline(text)
    store = SqliteStore(":memory:" if folder is None else folder / f"{pipeline.name}-{tag}.db")
    world = InProcess()
    loop = EventLoop(store, world, world, lambda name, version: pipeline, world.events, lambda: NOW)
    statements: Counter[str] = Counter()
    if trace:
        with store._connection() as conn:  # the loop's thread: the one connection it uses
            conn.set_trace_callback(lambda sql: statements.update([sql.split(None, 1)[0]]))
    gc.collect()
    if trace:
        tracemalloc.start()
    cpu = time.process_time()
    start = time.perf_counter()
    with store.batch():  # as LocalBackend.create_session writes a session
        loop.reducer.create(pipeline, 1, {}, "s", NOW)
    loop.step(lambda reducer: reducer.handle(SessionStarted("s", NOW)))
    ended = loop.run("s")
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak = 0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    store.close()
    assert ended.status is SessionStatus.SUCCEEDED, ended
    return Run(seconds, cpu, world.jobs, peak, statements)


def run_baseline(text: str) -> float:
    pipeline = load_pipeline(text)
    start = time.perf_counter()
    for job_id in pipeline.graph.topological_order:
        job = pipeline.job(job_id)
        count = len(job.fan_out.items) if job.fan_out and isinstance(job.fan_out.items, list) else 1
        for _ in range(count):
            no_op({})
    return time.perf_counter() - start


def engine_rows(quick: bool, repeat: int) -> list[dict[str, Any]]:
    shapes = [
        ("chain", chain, 100),
        ("fan-out/fan-in", fan_in, 1_000),
        ("for_each", for_each, 10_000),
    ]
    if quick:
        shapes = [(label, make, n // 10) for label, make, n in shapes]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, make, n in shapes:
            text = make(n)
            runs = [run_engine(text, Path(folder), str(i), trace=False) for i in range(repeat)]
            best = min(runs, key=lambda run: run.seconds)
            traced = run_engine(text, Path(folder), "traced", trace=True)
            memory = min(
                run_engine(text, None, str(i), trace=False).cpu_seconds for i in range(repeat)
            )
            baseline = run_baseline(text)
            jobs = best.jobs
            rows.append(
                {
                    "shape": f"{label} {n:,}",
                    "jobs": jobs,
                    "seconds": best.seconds,
                    "all_seconds": [run.seconds for run in runs],
                    "ms_per_job": best.seconds / jobs * 1000,
                    "cpu_ms_per_job": min(run.cpu_seconds for run in runs) / jobs * 1000,
                    "peak_bytes": traced.peak_bytes,
                    "statements_per_job": sum(traced.statements.values()) / jobs,
                    "commits_per_job": traced.statements["COMMIT"] / jobs,
                    "memory_cpu_ms_per_job": memory / jobs * 1000,
                    "plain_loop_us_per_job": baseline / jobs * 1e6,
                }
            )
    return rows


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (the command and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


SPAWN_CHAIN = (
    "import subprocess\n"
    f"for _ in range({CLI_CHAIN}):\n"
    "    subprocess.run(['/bin/sh', '-c', 'true'], check=True)\n"
)
"""The floor of a chain of command jobs: the processes started one after the other."""


def cli_rows(repeat: int) -> list[dict[str, Any]]:
    python = sys.executable
    script = Path(python).with_name("bunsui")  # the console script `bunsui` runs
    bunsui = [str(script)] if script.exists() else [python, "-m", "bunsui.cli"]
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "chain.yaml").write_text(chain(CLI_CHAIN, "'true'"))
        for i in range(repeat):
            env = {**os.environ, "BUNSUI_HOME": str(base / f"home-{i}")}
            commands = {
                f"bunsui run (chain of {CLI_CHAIN} `true` jobs)": [*bunsui, "run", "chain.yaml"],
                "CLI start-up (`bunsui --help`)": [*bunsui, "--help"],
                f"{CLI_CHAIN} `sh -c true` one after the other, from Python": [
                    python,
                    "-c",
                    SPAWN_CHAIN,
                ],
            }
            for label, command in commands.items():
                rows.setdefault(label, []).append(timed(command, env, base))
    return [
        {
            "command": label,
            "wall_seconds": min(wall for wall, _ in times),
            "cpu_seconds": min(cpu for _, cpu in times),
            "all_wall_seconds": [wall for wall, _ in times],
        }
        for label, times in rows.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each shape; the fastest is shown"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--cli", action="store_true", help="also time a whole `bunsui run`")
    args = parser.parse_args()
    rows = engine_rows(args.quick, max(args.repeat, 1))
    print("| shape | jobs run | engine total | per job | peak traced memory | plain loop per job |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['shape']} | {row['jobs']:,} | {row['seconds']:.2f} s "
            f"| {row['ms_per_job']:.3f} ms | {row['peak_bytes'] / 1e6:.1f} MB "
            f"| {row['plain_loop_us_per_job']:.2f} µs |"
        )
    print()
    print(
        "| shape | CPU per job | same, on `:memory:` (nothing durable) "
        "| SQL statements per job | commits per job |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['shape']} | {row['cpu_ms_per_job']:.3f} ms "
            f"| {row['memory_cpu_ms_per_job']:.3f} ms "
            f"| {row['statements_per_job']:.1f} | {row['commits_per_job']:.3f} |"
        )
    commands = cli_rows(max(args.repeat, 1)) if args.cli else []
    if commands:
        print()
        print("| command | wall | CPU |")
        print("| --- | ---: | ---: |")
        for row in commands:
            print(
                f"| {row['command']} | {row['wall_seconds']:.2f} s | {row['cpu_seconds']:.2f} s |"
            )
    if args.json:
        document = {
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "python": sys.version.split()[0],
            "repeat": args.repeat,
            "engine": rows,
            "commands": commands,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
