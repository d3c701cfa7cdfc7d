"""The three no-op DAGs as Prefect flows of tasks, with Prefect's defaults.

Run by bench/compare/run.py inside .venv-bench/prefect. The chain calls its
task directly, one after the other (a direct call in a flow runs the task and
returns its result, so each waits for the one before). The fan-outs submit
to the flow's default task runner (a thread pool): ``.submit`` for the 1,000
middles, ``.map`` for the for_each items, and the sink waits for all of them
through ``wait_for``. Results are not persisted (Prefect's default); every
task run's states still go to the Prefect API, here the temporary local
server Prefect starts when no API is configured, with its SQLite database in
the run's scratch folder. The server records them from events after the
flow has returned, so ``settle`` also measures when the last one is
recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["PREFECT_HOME"] = str(Path.cwd() / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# The temporary server's default 20 s to start is too short on a loaded machine.
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"

_START = time.perf_counter()
import prefect  # noqa: E402
from prefect import flow, get_client, task  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _START

import measure  # noqa: E402


@task
def no_op(item: int) -> dict[str, Any]:
    return measure.no_op()


@flow
def chain(n: int) -> None:
    for i in range(n):
        no_op(i)


@flow
def fan_in(n: int) -> None:
    root = no_op.submit(-1)
    middles = [no_op.submit(i, wait_for=[root]) for i in range(n)]
    no_op.submit(n, wait_for=middles).result()


@flow
def for_each(n: int) -> None:
    split = no_op.submit(-1)
    each = no_op.map(range(n), wait_for=[split])
    no_op.submit(n, wait_for=each).result()


def build(shape: str, n: int) -> Callable[[], None]:
    """A Prefect flow is defined at import; a run is one call of it."""
    flows = {"chain": chain, "fan-out/fan-in": fan_in, "for_each": for_each}
    return lambda: flows[shape](n)


def settle(calls: int, deadline: float) -> int:
    """Poll the API's count of completed task runs until all ``calls`` are there."""
    completed = {"task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    with get_client(sync_client=True) as client:
        while True:
            # The sync client has no count method; the REST route is public.
            count = client._client.post("/task_runs/count", json=completed).json()
            if count >= calls or time.monotonic() > deadline:
                return int(count)
            time.sleep(1)


if __name__ == "__main__":
    args = measure.parse_args()
    measure.main("prefect", prefect.__version__, IMPORT_SECONDS, build, args, settle)
