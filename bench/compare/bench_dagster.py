"""The three no-op DAGs as Dagster jobs of ops, executed in process.

Run by bench/compare/run.py inside .venv-bench/dagster. Each job runs with
``execute_in_process``: Dagster's in-process executor, one step after
another, outputs handed on by the in-memory IO manager, the run's events kept
by an ephemeral instance in in-memory storage, so nothing lasts the run. The
chain and the fan-out/fan-in are built from one op reused under aliases (a
job is a static graph, so a DAG of 1,002 ops is 1,002 invocations); the
for_each fan-out is Dagster's own construct for items known at run time:
a ``DynamicOut`` mapped over and collected. (No ``from __future__ import
annotations``: Dagster reads the ``context`` annotation as a type.)
"""

import time
from collections.abc import Callable, Iterator
from typing import Any

_START = time.perf_counter()
import dagster  # noqa: E402
from dagster import DynamicOut, DynamicOutput, JobDefinition, OpExecutionContext, job, op  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _START

import measure  # noqa: E402


@op
def start() -> dict[str, Any]:
    return measure.no_op()


@op
def step(upstream: Any) -> dict[str, Any]:
    """A no-op after its upstream: one parent's result, or a fan-in's list of them."""
    return measure.no_op()


@op(out=DynamicOut())
def split(context: OpExecutionContext) -> Iterator[DynamicOutput[int]]:
    measure.no_op()
    for item in range(context.op_config["items"]):
        yield DynamicOutput(item, mapping_key=str(item))


def chain_job(n: int) -> JobDefinition:
    @job(name=f"chain_{n}")
    def chain() -> None:
        result = start()
        for i in range(1, n):
            result = step.alias(f"step_{i}")(result)

    return chain


def fan_in_job(n: int) -> JobDefinition:
    @job(name=f"fan_in_{n}")
    def fan_in() -> None:
        root = start()
        middles = [step.alias(f"middle_{i}")(root) for i in range(n)]
        step.alias("sink")(middles)

    return fan_in


@job
def for_each() -> None:
    each = split().map(step)
    step.alias("done")(each.collect())


def build(shape: str, n: int) -> Callable[[], None]:
    """Define the job (the for_each one takes its item count as run config)."""
    if shape == "for_each":
        config = {"ops": {"split": {"config": {"items": n}}}}
        return lambda: _execute(for_each, config)
    graph = chain_job(n) if shape == "chain" else fan_in_job(n)
    return lambda: _execute(graph, None)


def _execute(graph: JobDefinition, config: dict[str, Any] | None) -> None:
    result = graph.execute_in_process(run_config=config)
    if not result.success:
        raise RuntimeError(f"{graph.name} did not succeed")


if __name__ == "__main__":
    measure.main("dagster", dagster.__version__, IMPORT_SECONDS, build, measure.parse_args())
