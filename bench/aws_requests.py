"""AWS requests per job: Bunsui's stack on a moto server, no-op Lambda jobs, every request counted.

Run: .venv/bin/python bench/aws_requests.py [--quick] [--sizes 10,1000,10000] [--json FILE]
Prints a Markdown table for docs/benchmarks.md; ``--json`` also writes every shape's counts
(each actor's requests and items by service and operation), which bench/aws_cost.py prices.

Each pipeline runs through the flow test's harness (tests/e2e/aws/harness.py):
the API starts the session, the reducer gets every event through the
template's own rules, the no-op jobs run in process and report through
Lambda destinations, the history projector reads the table's stream. The
harness counts every AWS request each handler makes (a botocore hook), so
the figures are the requests the deployed functions would make, per job
run: DynamoDB writes (PutItem, UpdateItem, DeleteItem, BatchWriteItem and
TransactWriteItems requests, and the items they write), DynamoDB reads
(GetItem, Query...), the events delivered to the reducer, EventBridge
PutEvents, Lambda Invoke and Scheduler calls, for the reducer and for the
history projector apart. The API's requests are per session.

The target (issue 5): reducer DynamoDB writes per job at most 3 plus one per
outgoing edge, flat across sizes. "edges" is the DAG's edges per job run
(a fan-out's items each count one edge into their fan-out). A session may
cost a constant few writes more (:data:`SESSION_WRITES`), whatever its size;
the table shows them ("writes beyond"): a figure that grows with the size
is a cost per job over the target. A job with more than 25 parents misses it
by design: its edges are counted in parts (engine.aws.store), one write more
for every 25 parents, so that no write grows with the join's width in write
units, which DynamoDB bills. The exit code is 1 when a session did not succeed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from engine.pipeline import MAX_JOBS  # noqa: E402
from tests.e2e.aws.calls import Tally  # noqa: E402
from tests.e2e.aws.harness import AwsHarness  # noqa: E402
from tests.e2e.aws.services import JobCode  # noqa: E402

JOBS = ROOT / "tests" / "e2e" / "aws" / "jobs"
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
SESSION_WRITES = 10
"""Writes a session may cost beyond 3 a job run and 1 an edge, whatever its size: its own
(closing it) and those of runs that are not job runs of the count (a fan-out's own run)."""


def lambda_job(job_id: str, depends: list[str] | None = None, extra: str = "") -> str:
    needs = f"    depends_on: [{', '.join(depends)}]\n" if depends else ""
    return (
        f"  - id: {job_id}\n    type: lambda\n{needs}{extra}"
        "    parameters:\n      function_name: flow-noop\n      payload: {item: 1}\n"
    )


def document(name: str, jobs: list[str]) -> str:
    return f'version: "1.1"\nname: {name}\njobs:\n' + "".join(jobs)


@dataclass(frozen=True)
class Shape:
    label: str
    text: str
    runs: int
    """Job runs dispatched (fan-out items each count one)."""
    edges: int
    """Edges counted: depends_on edges, plus one per fan-out item into its fan-out."""


def fan_out(n: int) -> Shape:
    """A for_each over n items, then one job that depends on the fan-out."""
    items = ", ".join(str(i) for i in range(n))
    jobs = [
        lambda_job("each", extra=f"    for_each: [{items}]\n"),
        lambda_job("total", ["each"]),
    ]
    return Shape(f"for_each {n:,}", document(f"bench-each-{n}", jobs), n + 1, n + 1)


def fan_in(n: int) -> Shape:
    """n independent jobs and one job that depends on all of them (n - 1 at 10,000: a
    pipeline has at most 10,000 jobs)."""
    n = min(n, MAX_JOBS - 1)
    middle = [f"m{i}" for i in range(n)]
    jobs = [*(lambda_job(m) for m in middle), lambda_job("sink", middle)]
    return Shape(f"{n:,} jobs + fan-in", document(f"bench-fan-{n}", jobs), n + 1, n)


def chain(n: int) -> Shape:
    jobs = [lambda_job(f"c{i}", [f"c{i - 1}"] if i else None) for i in range(n)]
    return Shape(f"chain {n}", document(f"bench-chain-{n}", jobs), n, n - 1)


def diamond() -> Shape:
    jobs = [
        lambda_job("a"),
        lambda_job("b", ["a"]),
        lambda_job("c", ["a"]),
        lambda_job("d", ["b", "c"]),
    ]
    return Shape("diamond", document("bench-diamond", jobs), 4, 4)


@dataclass(frozen=True)
class Measured:
    """What one session of a shape cost."""

    used: Tally
    delivered: int
    """Events delivered to the reducer."""
    units: Counter[str]
    """DynamoDB write units of the table's changes (``state``, ``history``)."""
    seconds: float
    outcome: str


def run(harness: AwsHarness, shape: Shape) -> Measured:
    """Start the pipeline through the API and play until the session ends."""
    status, body = harness.api("POST", "/pipelines", {"document": shape.text})
    assert status == 201, body
    harness.project()  # the pipeline's own items are not the session's
    before, delivered = harness.calls.snapshot(), len(harness.delivered)
    units = Counter(harness.write_units)
    started = time.perf_counter()
    status, body = harness.api("POST", "/sessions", {"pipeline": body["name"]})
    assert status == 201, body
    session_id = body["session"]["id"]
    harness.settle()
    seconds = time.perf_counter() - started
    used = harness.calls.snapshot() - before
    status, body = harness.api("GET", f"/sessions/{session_id}")
    return Measured(
        used,
        len(harness.delivered) - delivered,
        harness.write_units - units,
        seconds,
        body["session"]["status"],
    )


HEADER = (
    "| shape | job runs | edges per job | reducer DynamoDB writes per job (items) "
    "| writes beyond 3 + edges, per session | write units per job | reducer reads per job "
    "| reducer invocations per job | reducer PutEvents per job | Lambda Invoke per job "
    "| Scheduler calls per job | history writes per job (items) | history write units per job "
    "| history reads per job "
    "| history PutEvents per session | API requests per session | time | target met |"
)


def row(shape: Shape, measured: Measured) -> tuple[str, bool]:
    """One table row; whether the session succeeded within 3 writes a job + 1 an edge, give or
    take a constant of the session (:data:`SESSION_WRITES`)."""
    n, used = shape.runs, measured.used

    def per(actor: str, service: str, operations: Any = None, items: bool = False) -> float:
        return used.count(actor, service, operations, items) / n

    writes = used.count("reducer", "dynamodb", WRITES)
    history = per("history", "dynamodb", WRITES)
    beyond = writes - (3 * n + shape.edges)
    ok = beyond <= SESSION_WRITES and measured.outcome == "succeeded"
    cells = [
        shape.label,
        f"{n:,}",
        f"{shape.edges / n:.2f}",
        f"**{writes / n:.2f}** ({per('reducer', 'dynamodb', WRITES, True):.2f})",
        f"{beyond:+d}",
        f"{measured.units['state'] / n:.1f}",
        f"{used.reads('reducer') / n:.2f}",
        f"{measured.delivered / n:.2f}",
        f"{per('reducer', 'events', 'PutEvents'):.3f}",
        f"{per('reducer', 'lambda', 'Invoke'):.2f}",
        f"{per('reducer', 'scheduler'):.2f}",
        f"{history:.3f} ({per('history', 'dynamodb', WRITES, True):.2f})",
        f"{measured.units['history'] / n:.1f}",
        f"{used.reads('history') / n:.2f}",
        f"{used.count('history', 'events', 'PutEvents')}",
        f"{used.count('api'):,}",
        f"{measured.seconds:.1f} s",
        "yes" if ok else "**no**",
    ]
    return "| " + " | ".join(cells) + " |", ok


def record(shape: Shape, measured: Measured) -> dict[str, Any]:
    """A shape's counts as JSON: what :func:`row` reads, and every request."""
    used = measured.used
    return {
        "label": shape.label,
        "runs": shape.runs,
        "edges": shape.edges,
        "outcome": measured.outcome,
        "seconds": round(measured.seconds, 3),
        "delivered": measured.delivered,
        "write_units": dict(measured.units),
        "requests": [
            {
                "actor": a,
                "service": s,
                "operation": o,
                "requests": n,
                "items": used.items[(a, s, o)],
            }
            for (a, s, o), n in sorted(used.requests.items())
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10 and 1,000 only")
    parser.add_argument("--sizes", default="10,1000,10000", help="fan-out sizes")
    parser.add_argument("--json", type=Path, help="also write every shape's counts here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 1000]
    shapes = [diamond(), chain(10)]
    for n in sizes:
        shapes.append(fan_out(n))
        shapes.append(fan_in(n))
    print(HEADER)
    print("|" + " --- |" * 1 + " ---: |" * 16 + " --- |")
    failed = False
    records = []
    with AwsHarness([JobCode(JOBS)]) as harness:
        for shape in shapes:
            with contextlib.redirect_stdout(io.StringIO()):  # the handlers' metric lines
                measured = run(harness, shape)
            line, _ = row(shape, measured)
            failed |= measured.outcome != "succeeded"
            print(line, flush=True)
            records.append(record(shape, measured))
            if args.json:  # after each shape: a long run's file holds what it measured so far
                args.json.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
