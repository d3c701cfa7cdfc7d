"""Dollars per million jobs on AWS, by component, beside Step Functions for the same DAGs.

Run: .venv/bin/python bench/aws_cost.py [--sizes 10,1000] [--requests FILE] [--json FILE]
Prints Markdown tables for docs/benchmarks.md.

The request accounting is bench/aws_requests.py's: its quick shapes (a diamond, a 10-job
chain, for_each fan-outs of 10 and 1,000 items, 10 and 1,000 jobs into one fan-in) run
here on the moto-server flow, with every AWS request of Bunsui's functions counted. The
same run meters what the counts cannot say (bench/coldstart.py's :class:`Meter`): the
reducer's and the history projector's CPU per invocation, the log bytes they write, the
stream records per projector batch, and the table's bytes per job. ``--requests FILE``
adds the shapes of a JSON that ``aws_requests.py --json FILE`` wrote (the 10,000-item
fan-out, say), priced with the per-job figures metered here for the same kind of shape.

Prices are us-east-1's public on-demand prices (:data:`PRICES`: each with its page and
the date it was read); free tiers are left out (this is the cost at scale). What cannot
be measured on moto is an assumption, stated in the output (:data:`ASSUMPTIONS`): request
latencies (Lambda bills wall time: an I/O-bound reducer mostly waits), the CPU share of the
function's memory size, platform log lines, X-Ray's sampling rate, storage retention.

Step Functions Standard runs the same DAG as the state machine one would write for it: a
chain is a chain of Task states, a fan-out a Map state over a Task, n independent jobs a
Parallel state of n branches, and every join the state after it. It is billed per state
transition: each state entered (a Map or Parallel state once, plus the states of each
iteration or branch). The jobs themselves (the user's Lambda functions) cost the same
either way and are left out of both. Express is shown for reference: billed by request
and duration (64 MB, in 100 ms steps) for as long as the workflow waits on its jobs,
here 100 ms per job on the critical path; it is limited to 5 minutes and runs at least once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src"), str(ROOT)]

import aws_requests as requests_bench  # noqa: E402
import coldstart  # noqa: E402

# ---------------------------------------------------------------------- prices

READ_ON = "2026-11-27"


@dataclass(frozen=True)
class Price:
    dollars: float
    unit: str
    source: str


DYNAMODB = "https://aws.amazon.com/dynamodb/pricing/on-demand/"
EVENTBRIDGE = "https://aws.amazon.com/eventbridge/pricing/"
LAMBDA = "https://aws.amazon.com/lambda/pricing/"
STEP_FUNCTIONS = "https://aws.amazon.com/step-functions/pricing/"

PRICES = {
    "wru": Price(0.625 / 1e6, "DynamoDB on-demand write request unit", DYNAMODB),
    "rru": Price(0.125 / 1e6, "DynamoDB on-demand read request unit", DYNAMODB),
    "storage": Price(0.25, "DynamoDB Standard storage, GB-month", DYNAMODB),
    "event": Price(1.00 / 1e6, "EventBridge custom event (64 KB)", EVENTBRIDGE),
    "scheduler": Price(1.00 / 1e6, "EventBridge Scheduler invocation", EVENTBRIDGE),
    "lambda_request": Price(0.20 / 1e6, "Lambda request", LAMBDA),
    "lambda_gbs": Price(0.0000133334, "Lambda duration, arm64, GB-second", LAMBDA),
    "sqs": Price(0.40 / 1e6, "SQS standard request", "https://aws.amazon.com/sqs/pricing/"),
    "logs": Price(
        0.50,
        "CloudWatch Logs ingestion (Lambda logs' first tier), GB",
        "https://aws.amazon.com/cloudwatch/pricing/",
    ),
    "trace": Price(5.00 / 1e6, "X-Ray trace recorded", "https://aws.amazon.com/xray/pricing/"),
    "http_api": Price(
        1.00 / 1e6, "API Gateway HTTP API request", "https://aws.amazon.com/api-gateway/pricing/"
    ),
    "transition": Price(0.025 / 1000, "Step Functions Standard state transition", STEP_FUNCTIONS),
    "express_request": Price(1.00 / 1e6, "Step Functions Express request", STEP_FUNCTIONS),
    "express_gbs": Price(0.00001667, "Step Functions Express duration, GB-second", STEP_FUNCTIONS),
}
"""us-east-1, read on :data:`READ_ON` (DynamoDB's on-demand prices are those of the cut of
1 November 2024). A Lambda destination's record is a PutEvents call on the user's bus
(Lambda's asynchronous invocation docs), so it is a custom event, not a free AWS event."""

# ---------------------------------------------------------------------- assumptions

LATENCY_MS = {
    ("dynamodb", "GetItem"): 5.0,
    ("dynamodb", "Query"): 6.0,
    ("dynamodb", "BatchGetItem"): 8.0,
    ("dynamodb", "PutItem"): 7.0,
    ("dynamodb", "UpdateItem"): 7.0,
    ("dynamodb", "DeleteItem"): 7.0,
    ("dynamodb", "BatchWriteItem"): 15.0,
    ("dynamodb", "TransactWriteItems"): 15.0,
    ("events", "PutEvents"): 20.0,
    ("lambda", "Invoke"): 25.0,
    ("scheduler", "CreateSchedule"): 30.0,
    ("scheduler", "DeleteSchedule"): 30.0,
}
OTHER_LATENCY_MS = 20.0
FULL_CPU_MB = 1769
"""Lambda gives a function one vCPU at 1,769 MB, a share in proportion below that."""
MEMORY_MB = {"reducer": 1024, "history": 512, "api": 512}
"""template.yaml: the reducer's MemorySize, the Globals' for the others."""
API_SECONDS = 0.08
"""The API function's duration for ``POST /sessions`` (checks, two writes, one event)."""
PLATFORM_LOG_BYTES = 700
"""Lambda's own JSON lines per invocation (``platform.start``, ``platform.report``)."""
LOG_EVENT_OVERHEAD = 26
"""Bytes CloudWatch Logs counts per log event beyond its message."""
API_LOG_BYTES = 1500
TRACE_SAMPLE = 0.05
"""X-Ray's default rule: 1 trace a second, then 5% of invocations (Tracing: Active)."""
RETENTION_MONTHS = 3.0
"""Items kept 90 days (history items expire after ``HistoryDays``, 90 by default)."""
ITEM_OVERHEAD = 100
"""Bytes DynamoDB adds to each item's stored size."""
GSI_WRITES_PER_SESSION = 6
"""The session item is the only one the indexes project: created into two indexes, its
status key moved (delete + put) when it ends, its ``ended_at`` set in the other."""
EXPRESS_STEP_SECONDS = 0.1
EXPRESS_MAP_CONCURRENCY = 40

ASSUMPTIONS = [
    "Request latencies (Lambda bills wall time): "
    + ", ".join(f"{svc} {op} {ms:.0f} ms" for (svc, op), ms in LATENCY_MS.items())
    + f", others {OTHER_LATENCY_MS:.0f} ms.",
    f"CPU time scales by {FULL_CPU_MB} MB / memory (Lambda's CPU share): the reducer at "
    f"{MEMORY_MB['reducer']} MB, the history projector at {MEMORY_MB['history']} MB; "
    "the CPU measured on this machine stands for arm64's.",
    f"Logs: the handlers' own bytes (measured) + {PLATFORM_LOG_BYTES} bytes of platform lines "
    f"per invocation + {LOG_EVENT_OVERHEAD} bytes per log event.",
    f"X-Ray records {TRACE_SAMPLE:.0%} of invocations (the default sampling rule at volume).",
    f"Storage: bytes the session's items hold (measured, + {ITEM_OVERHEAD} bytes an item), "
    f"kept {RETENTION_MONTHS:.0f} months.",
    "DynamoDB writes: the larger of the stream's changes (1 unit a KB of the larger image) "
    "and the items written (a transaction's at 2 units); reads: 1 unit a request "
    f"(strongly consistent, items under 4 KB); index writes: {GSI_WRITES_PER_SESSION} a session.",
    f"The API: one HTTP API request and one {API_SECONDS * 1000:.0f} ms invocation a session.",
    "Not per job, so not here: the KMS key ($1 a month), EMF custom metrics (per metric "
    "a month), alarms, the sweeper's rate schedule; SQS is the dead-letter queues' alone "
    "(nothing on the success path); the DynamoDB stream is read free by Lambda.",
]

# ---------------------------------------------------------------------- measured shapes

BUNSUI = ("api", "reducer", "history", "sweeper", "start")
WRITES = requests_bench.WRITES
READS = ("GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems")


@dataclass
class Runtime:
    """Per-job figures that request counts cannot give, metered on a shape."""

    reducer_cpu_ms: float
    """Mean CPU per reducer invocation."""
    reducer_log_bytes: float
    reducer_log_lines: float
    history_invocations_per_record: float
    history_cpu_ms: float
    history_log_bytes: float
    history_log_lines: float
    history_records_per_job: float
    state_bytes_per_job: float
    history_bytes_per_job: float


@dataclass
class ShapeCounts:
    """One shape's counts: aws_requests.py's record, and the runtime figures."""

    label: str
    runs: int
    edges: int
    delivered: int
    write_units: dict[str, int]
    requests: list[dict[str, Any]]
    runtime: Runtime
    outcome: str

    def count(
        self,
        actors: Iterable[str],
        service: str,
        ops: Iterable[str] | None = None,
        items: bool = False,
    ) -> int:
        wanted = set(ops) if ops is not None else None
        return sum(
            r["items" if items else "requests"]
            for r in self.requests
            if r["actor"] in actors
            and r["service"] == service
            and (wanted is None or r["operation"] in wanted)
        )

    def latency_ms(self, actor: str) -> float:
        return sum(
            r["requests"] * LATENCY_MS.get((r["service"], r["operation"]), OTHER_LATENCY_MS)
            for r in self.requests
            if r["actor"] == actor
        )


def table_bytes(harness: Any) -> Counter[str]:
    """The table's items' bytes (DynamoDB's size, + its per-item overhead): history, state."""
    from tests.e2e.aws.harness import item_bytes

    table = harness.env("BUNSUI_TABLE")
    sizes: Counter[str] = Counter()
    for page in harness.aws.dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            kind = "history" if item.get("sk", {}).get("S", "").startswith("H#") else "state"
            sizes[kind] += item_bytes(item) + ITEM_OVERHEAD
    return sizes


def measure(sizes: Iterable[int]) -> list[ShapeCounts]:
    """aws_requests.py's shapes (its ``--quick`` ones by default), metered."""
    shapes = [requests_bench.diamond(), requests_bench.chain(10)]
    for n in sizes:
        shapes += [requests_bench.fan_out(n), requests_bench.fan_in(n)]
    found = []
    with coldstart.metered_harness() as (harness, meters):
        for shape in shapes:
            for meter in meters.values():
                meter.reset()
            before = table_bytes(harness)
            with contextlib.redirect_stdout(io.StringIO()):
                measured = requests_bench.run(harness, shape)
            grown = table_bytes(harness) - before
            record = requests_bench.record(shape, measured)
            reducer, history = meters["reducer"].summary(), meters["history"].summary()
            records = max(1, history.get("records", 0))
            runtime = Runtime(
                reducer_cpu_ms=reducer["cpu_ms_mean"],
                reducer_log_bytes=reducer["log_bytes_mean"],
                reducer_log_lines=reducer["log_lines_mean"],
                history_invocations_per_record=history.get("invocations", 0) / records,
                history_cpu_ms=history.get("cpu_ms_mean", 0.0),
                history_log_bytes=history.get("log_bytes_mean", 0.0),
                history_log_lines=history.get("log_lines_mean", 0.0),
                history_records_per_job=history.get("records", 0) / shape.runs,
                state_bytes_per_job=grown["state"] / shape.runs,
                history_bytes_per_job=grown["history"] / shape.runs,
            )
            found.append(counts(record, runtime))
            print(f"measured {shape.label}", file=sys.stderr, flush=True)
    return found


def counts(record: Mapping[str, Any], runtime: Runtime) -> ShapeCounts:
    return ShapeCounts(
        record["label"],
        record["runs"],
        record["edges"],
        record["delivered"],
        dict(record["write_units"]),
        list(record["requests"]),
        runtime,
        record["outcome"],
    )


def kind(label: str) -> str:
    """The kind of a shape's label (``for_each 10,000`` -> ``for_each``)."""
    return "fan-in" if "fan-in" in label else label.split()[0]


# ---------------------------------------------------------------------- Bunsui's cost


def lambda_seconds(cpu_ms: float, wait_ms: float, memory_mb: int) -> float:
    """Billed seconds of one invocation: CPU at the function's share, plus the waits,
    rounded up to the millisecond."""
    return math.ceil(cpu_ms * max(1.0, FULL_CPU_MB / memory_mb) + wait_ms) / 1000


@dataclass(frozen=True)
class Function:
    """One of Bunsui's functions in a session: its invocations and what each costs."""

    calls: float
    cpu_ms: float
    wait_ms: float
    memory_mb: int
    log_bytes: float
    log_lines: float

    def gb_seconds(self) -> float:
        billed = lambda_seconds(self.cpu_ms, self.wait_ms, self.memory_mb)
        return self.calls * billed * self.memory_mb / 1024

    def logged(self) -> float:
        """Log bytes: its own lines, the platform's two, CloudWatch's overhead for each."""
        lines = self.log_lines + 2
        return self.calls * (self.log_bytes + PLATFORM_LOG_BYTES + LOG_EVENT_OVERHEAD * lines)


def bunsui_costs(shape: ShapeCounts) -> dict[str, float]:
    """Dollars per job, by component."""
    p = {name: price.dollars for name, price in PRICES.items()}
    n, rt = shape.runs, shape.runtime
    writers = set(BUNSUI) - {"history"}
    state_items = shape.count(writers, "dynamodb", WRITES, items=True) + shape.count(
        writers, "dynamodb", ("TransactWriteItems",), items=True
    )  # a transaction's items count twice
    history_items = shape.count({"history"}, "dynamodb", WRITES, items=True)
    state_wru = max(shape.write_units.get("state", 0), state_items) + GSI_WRITES_PER_SESSION
    history_wru = max(shape.write_units.get("history", 0), history_items)
    reads = sum(shape.count(BUNSUI, "dynamodb", (op,)) for op in READS)
    invokes = shape.count({"reducer"}, "lambda", ("Invoke",))
    schedules = shape.count(BUNSUI, "scheduler", ("CreateSchedule",))
    own_events = shape.count(BUNSUI, "events", ("PutEvents",), items=True) + schedules
    reducer_calls = shape.delivered
    history_calls = rt.history_invocations_per_record * rt.history_records_per_job * n
    functions = [
        Function(
            reducer_calls,
            rt.reducer_cpu_ms,
            shape.latency_ms("reducer") / max(1, reducer_calls),
            MEMORY_MB["reducer"],
            rt.reducer_log_bytes,
            rt.reducer_log_lines,
        ),
        Function(
            history_calls,
            rt.history_cpu_ms,
            shape.latency_ms("history") / max(1.0, history_calls),
            MEMORY_MB["history"],
            rt.history_log_bytes,
            rt.history_log_lines,
        ),
        Function(1, 0.0, API_SECONDS * 1000, MEMORY_MB["api"], API_LOG_BYTES, 3),
    ]
    gb_seconds = sum(f.gb_seconds() for f in functions)
    log_bytes = sum(f.logged() for f in functions)
    stored_gb = (rt.state_bytes_per_job + rt.history_bytes_per_job) * n / 1e9
    total = {
        "DynamoDB writes: state": state_wru * p["wru"],
        "DynamoDB writes: history": history_wru * p["wru"],
        "DynamoDB reads": reads * p["rru"],
        "DynamoDB storage (3 months)": stored_gb * RETENTION_MONTHS * p["storage"],
        "DynamoDB stream read": 0.0,
        "EventBridge: Lambda destination events": invokes * p["event"],
        "EventBridge: Bunsui's events": own_events * p["event"],
        "Lambda requests": (reducer_calls + history_calls + 1) * p["lambda_request"],
        "Lambda duration": gb_seconds * p["lambda_gbs"],
        "Scheduler invocations": schedules * p["scheduler"],
        "SQS": 0.0,
        "CloudWatch Logs ingestion": log_bytes / 1e9 * p["logs"],
        "X-Ray traces": (reducer_calls + history_calls + 1) * TRACE_SAMPLE * p["trace"],
        "API Gateway (session start)": p["http_api"],
    }
    return {name: dollars / n for name, dollars in total.items()}


# ---------------------------------------------------------------------- Step Functions


def transitions(shape: ShapeCounts) -> int:
    """State transitions of the equivalent Standard state machine's execution."""
    label, n = shape.label, shape.runs
    if label == "diamond":
        return 5  # Task a, Parallel (b, c), Task d
    if label.startswith("chain"):
        return n  # one Task state a job
    return n + 1  # a Map (or a Parallel) state, a Task each item (or branch), the join


def critical_path(shape: ShapeCounts) -> int:
    """Jobs one after another on the longest path (a Map runs 40 items at a time)."""
    label, n = shape.label, shape.runs
    if label == "diamond":
        return 3
    if label.startswith("chain"):
        return n
    if label.startswith("for_each"):
        return math.ceil((n - 1) / EXPRESS_MAP_CONCURRENCY) + 1
    return 2


def express_cost(shape: ShapeCounts) -> float:
    """Dollars per job of an Express execution of the same DAG (see the module's note)."""
    seconds = math.ceil(critical_path(shape) * EXPRESS_STEP_SECONDS * 10) / 10
    dollars = PRICES["express_request"].dollars + seconds * 0.0625 * PRICES["express_gbs"].dollars
    return dollars / shape.runs


# ---------------------------------------------------------------------- report


def money(dollars_per_job: float) -> str:
    per_million = dollars_per_job * 1e6
    return f"${per_million:,.2f}" if per_million >= 0.01 or per_million == 0 else "<$0.01"


def report(shapes: list[ShapeCounts]) -> tuple[str, list[dict[str, Any]]]:
    costs = [bunsui_costs(shape) for shape in shapes]
    header = "| per million jobs | " + " | ".join(s.label for s in shapes) + " |"
    lines = [header, "| --- |" + " ---: |" * len(shapes)]
    for component in costs[0]:
        cells = " | ".join(money(c[component]) for c in costs)
        lines.append(f"| {component} | {cells} |")
    totals = [sum(c.values()) for c in costs]
    sfn = [transitions(s) * PRICES["transition"].dollars / s.runs for s in shapes]
    rows = {
        "**Bunsui, total**": [f"**{money(t)}**" for t in totals],
        "Step Functions Standard: transitions per job": [
            f"{transitions(s) / s.runs:.3f}" for s in shapes
        ],
        "**Step Functions Standard**": [f"**{money(x)}**" for x in sfn],
        "Standard / Bunsui": [f"{x / t:.1f}x" for x, t in zip(sfn, totals, strict=True)],
        "at least 10x cheaper": [
            "yes" if x / t >= 10 else f"**no** ({t / (x / 10):.1f}x over)"
            for x, t in zip(sfn, totals, strict=True)
        ],
        "Step Functions Express (reference)": [money(express_cost(s)) for s in shapes],
        "session outcome": [s.outcome for s in shapes],
    }
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    data = [
        {
            "label": s.label,
            "runs": s.runs,
            "components": {k: v * 1e6 for k, v in c.items()},
            "total": t * 1e6,
            "step_functions_standard": x * 1e6,
            "step_functions_express": express_cost(s) * 1e6,
            "transitions": transitions(s),
            "runtime": vars(s.runtime),
        }
        for s, c, t, x in zip(shapes, costs, totals, sfn, strict=True)
    ]
    return "\n".join(lines), data


def dominant(data: list[dict[str, Any]]) -> str:
    """The largest components, summed over the shapes, each as a share of the total."""
    summed: Counter[str] = Counter()
    for shape in data:
        for name, dollars in shape["components"].items():
            summed[name] += dollars / shape["total"] / len(data)
    return ", ".join(f"{name} {share:.0%}" for name, share in summed.most_common(5))


def price_table() -> str:
    lines = [f"Prices (us-east-1, read {READ_ON}):", "", "| item | price | page |"]
    lines.append("| --- | ---: | --- |")
    for price in PRICES.values():
        per = price.dollars * (1e6 if price.dollars < 1e-3 else 1)
        unit = "per million" if price.dollars < 1e-3 else "each"
        lines.append(f"| {price.unit} | ${per:,.4g} {unit} | {price.source} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,1000", help="fan-out and fan-in sizes to run")
    parser.add_argument("--requests", type=Path, help="a JSON of aws_requests.py --json")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    shapes = measure(int(size) for size in args.sizes.split(","))
    if args.requests:
        known = {s.label for s in shapes}
        metered = {kind(s.label): s.runtime for s in reversed(shapes)}  # the largest of a kind
        for record in json.loads(args.requests.read_text(encoding="utf-8")):
            if record["label"] not in known and kind(record["label"]) in metered:
                shapes.append(counts(record, metered[kind(record["label"])]))
    table, data = report(shapes)
    print(price_table(), end="\n\n")
    print(table, end="\n\n")
    print("Largest components (mean share of the total): " + dominant(data), end="\n\n")
    print("Assumptions:\n" + "\n".join(f"- {line}" for line in ASSUMPTIONS))
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
