"""The three no-op DAGs as Airflow DAGs of TaskFlow tasks, run by ``dag.test()``.

Run by bench/compare/run.py inside .venv-bench/airflow. ``dag.test()`` is
Airflow's way to run a DAG in one process without a scheduler: it writes the
DAG run and its task instances to the metadata database (SQLite here, in the
run's scratch folder), then loops, scheduling what is ready and running each
task in process. It only runs a DAG that its DAG processor can find, so each
DAG is also written as a small file into the DAGs folder that builds it with
``make_dag``; the tasks that run are this module's. The for_each fan-out is
Airflow's dynamic task mapping (``expand``) over the items, with the limit on
mapped tasks (1,024 by default) raised for the 10,000 items.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRATCH = Path.cwd()
DAGS = SCRATCH / "dags"
os.environ["AIRFLOW_HOME"] = str(SCRATCH / "airflow-home")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__MAX_MAP_LENGTH"] = "100000"

_START = time.perf_counter()
import airflow  # noqa: E402
from airflow.sdk import DAG, dag, task  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _START

import measure  # noqa: E402


@task
def no_op(item: int = 0) -> dict[str, Any]:
    return measure.no_op()


def make_dag(shape: str, n: int) -> DAG:
    """The DAG of one shape and size; its id names both."""

    @dag(dag_id=f"{shape.replace('/', '_').replace('-', '_')}_{n}", schedule=None)
    def noop_dag() -> None:
        if shape == "chain":
            previous = no_op.override(task_id="step_0")()
            for i in range(1, n):
                step = no_op.override(task_id=f"step_{i}")()
                previous >> step
                previous = step
        elif shape == "fan-out/fan-in":
            root = no_op.override(task_id="root")()
            middles = [no_op.override(task_id=f"middle_{i}")() for i in range(n)]
            root >> middles >> no_op.override(task_id="sink")()
        else:
            split = no_op.override(task_id="split")()
            each = no_op.override(task_id="each").expand(item=list(range(n)))
            split >> each >> no_op.override(task_id="done")()

    return noop_dag()


def build(shape: str, n: int) -> Callable[[], None]:
    """Write the DAG's file for the DAG processor, set up the database once, define."""
    DAGS.mkdir(exist_ok=True)
    source = f"from bench_airflow import make_dag\n\ndag = make_dag({shape!r}, {n})\n"
    (DAGS / f"noop_{len(list(DAGS.iterdir()))}.py").write_text(source)
    if not (SCRATCH / "airflow-home" / "airflow.db").exists():
        from airflow.utils import db

        db.initdb()
    noop_dag = make_dag(shape, n)
    return lambda: _test(noop_dag)


def _test(noop_dag: DAG) -> None:
    run = noop_dag.test()
    if run.state != "success":
        raise RuntimeError(f"{noop_dag.dag_id}: {run.state}")


if __name__ == "__main__":
    measure.main("airflow", airflow.__version__, IMPORT_SECONDS, build, measure.parse_args())
