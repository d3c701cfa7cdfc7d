"""The three no-op DAGs as Luigi tasks, built by the local scheduler with one worker.

Run by bench/compare/run.py inside .venv-bench/luigi. ``luigi.build`` with
``local_scheduler=True`` and ``workers=1`` keeps the scheduler in memory and
runs each task in this process. A Luigi task is done when ``complete()``
says so, usually because its output file exists; these tasks write no file,
so ``complete()`` reads an in-memory set that ``run()`` adds to, and nothing
touches the disk. Luigi has no construct that maps a task over items, so the
for_each fan-out is the same graph as the fan-out/fan-in, with its own task
classes: a task per item, required by the task after them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_START = time.perf_counter()
import luigi  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _START

import measure  # noqa: E402

_done: set[str] = set()


class NoOp(luigi.Task):
    """Runs the no-op; done once it has run in this process."""

    def run(self) -> None:
        measure.no_op()
        _done.add(self.task_id)

    def complete(self) -> bool:
        return self.task_id in _done


class Step(NoOp):
    index = luigi.IntParameter()

    def requires(self) -> list[luigi.Task]:
        return [Step(index=self.index - 1)] if self.index else []


class Root(NoOp):
    pass


class Middle(NoOp):
    index = luigi.IntParameter()

    def requires(self) -> Root:
        return Root()


class Sink(NoOp):
    width = luigi.IntParameter()

    def requires(self) -> list[Middle]:
        return [Middle(index=i) for i in range(self.width)]


class Split(NoOp):
    pass


class Each(NoOp):
    item = luigi.IntParameter()

    def requires(self) -> Split:
        return Split()


class Done(NoOp):
    items = luigi.IntParameter()

    def requires(self) -> list[Each]:
        return [Each(item=i) for i in range(self.items)]


def build(shape: str, n: int) -> Callable[[], None]:
    """Name the final task; Luigi finds the rest through ``requires``.

    The set of finished tasks is emptied so that a run after the warm-up,
    whose tasks share ids with it, runs them again.
    """
    _done.clear()
    final = {"chain": lambda: Step(index=n - 1), "fan-out/fan-in": lambda: Sink(width=n)}.get(
        shape, lambda: Done(items=n)
    )()
    return lambda: _build(final)


def _build(final: luigi.Task) -> None:
    result = luigi.build([final], local_scheduler=True, workers=1, detailed_summary=True)
    if result.status is not luigi.execution_summary.LuigiStatusCode.SUCCESS:
        raise RuntimeError(f"{final.task_id}: {result.status}")


if __name__ == "__main__":
    measure.main("luigi", luigi.__version__, IMPORT_SECONDS, build, measure.parse_args())
