"""Load: many sessions at once on the local backend, many completions at once on AWS.

Locally, a hundred sessions of one small pipeline (a job, a fan-out under a
concurrency limit beside a retried job, a fan-in) are started at the same
moment, each by its own driver thread with its own backend on one
``state.db``, as a hundred ``bunsui session start`` would be; a few more are
started by real ``bunsui session start`` processes at once. Every job is a
real subprocess that appends its dispatch id to a shared file, so the file
says how often each attempt ran. On AWS, the completions of a 1,000-item
fan-out reach the reducer from twelve concurrent invocations (Lambda
containers, tests/e2e/aws/harness.py ``workers``), each event twice, both
copies at the same moment.

Nothing may be lost or repeated: every attempt ran once, every session ended
as its plan says, counters, slots and history agree with the runs.

Larger runs: ``BUNSUI_LOAD_SESSIONS``, ``BUNSUI_LOAD_PROCESSES``,
``BUNSUI_LOAD_FAN_OUT`` and ``BUNSUI_LOAD_WORKERS`` raise the figures; ``-rP``
shows each AWS run's line of figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.aws import service
from engine.aws.store import DynamoStore
from engine.local.backend import LocalBackend
from engine.local.store import SqliteStore
from engine.state import JobRun, JobStatus, Session, SessionStatus
from tests.e2e.aws.harness import AwsHarness
from tests.e2e.aws.services import LAMBDA_SUCCESS, JobCode

SESSIONS = int(os.environ.get("BUNSUI_LOAD_SESSIONS", "100"))
"""Sessions started at once on the local backend by threads of this process."""
FAN_OUT = int(os.environ.get("BUNSUI_LOAD_FAN_OUT", "1000"))
"""Jobs of the AWS fan-out whose completions arrive at once."""
PROCESSES = int(os.environ.get("BUNSUI_LOAD_PROCESSES", "10"))
"""Sessions started at once as separate ``bunsui session start`` processes."""
WORKERS = int(os.environ.get("BUNSUI_LOAD_WORKERS", "12"))
"""Reducer invocations at once on the AWS flow (Lambda containers, as threads)."""
JOBS = Path(__file__).resolve().parents[1] / "e2e" / "aws" / "jobs"
BUNSUI = str(Path(sys.executable).with_name("bunsui"))
ITEMS = 4
"""Items of each session's fan-out (odd ones may fail their first attempt)."""
CHECK_RETRIES = 2
HANG_GUARD = 240.0 + 2 * max(SESSIONS, PROCESSES)
"""Seconds after which a driver that has not returned is stuck, not slow."""

RUN = 'echo "$BUNSUI_DISPATCH_ID" >> "$RUNS"; test "$BUNSUI_ATTEMPT" -gt "$FAIL_ATTEMPTS"'
"""Every job: note this attempt ran, then fail unless more than FAIL_ATTEMPTS attempts were made
(an append of one short line to an O_APPEND file is atomic, whichever process writes it)."""


def pipeline_text(runs: Path) -> str:
    """``prepare`` -> (``each`` over ITEMS items, 2 at a time | ``check``) -> ``report``, at most
    3 jobs of a session at once; ``item_fails``/``check_fails`` say how many first attempts of
    the odd items and of ``check`` fail."""

    def job(job_id: str, fails: str, extra: str = "") -> str:
        return (
            f"  - id: {job_id}\n    type: custom\n{extra}"
            f"    parameters:\n      command: {json.dumps(RUN)}\n"
            f'      environment: {{RUNS: "{runs}", FAIL_ATTEMPTS: "{fails}"}}\n'
        )

    items = ", ".join(str(i) for i in range(ITEMS))
    return (
        'version: "1.1"\nname: load\nmax_concurrency: 3\nparameters:\n'
        "  - {name: item_fails, type: integer, default: 0}\n"
        "  - {name: check_fails, type: integer, default: 0}\n"
        "jobs:\n"
        + job("prepare", "0")
        + job(
            "each",
            "${item % 2 * item_fails}",
            f"    depends_on: [prepare]\n    retries: 1\n    retry_delay: 0\n"
            f"    for_each: {{items: [{items}], max_concurrency: 2}}\n",
        )
        + job(
            "check",
            "${check_fails}",
            f"    depends_on: [prepare]\n    retries: {CHECK_RETRIES}\n    retry_delay: 0\n",
        )
        + job("report", "0", "    depends_on: [each, check]\n")
    )


@dataclass(frozen=True)
class Plan:
    """What one session is asked to do, and so what it must end as."""

    item_fails: int = 0
    check_fails: int = 0

    @property
    def doomed(self) -> bool:
        return self.check_fails > CHECK_RETRIES

    def attempts(self) -> dict[str, int]:
        """Attempts each dispatched run makes (report makes none when check failed)."""
        made = {"prepare": 1, "check": min(self.check_fails, CHECK_RETRIES) + 1}
        made.update({f"each[{i}]": 1 + (i % 2) * self.item_fails for i in range(ITEMS)})
        if not self.doomed:
            made["report"] = 1
        return made

    def statuses(self) -> dict[str, JobStatus]:
        """Every run's final status (the fan-out ``each`` is a run too)."""
        done = JobStatus.SUCCEEDED
        found = {key: done for key in ("prepare", "each", *(f"each[{i}]" for i in range(ITEMS)))}
        found["check"] = JobStatus.FAILED if self.doomed else done
        found["report"] = JobStatus.UPSTREAM_FAILED if self.doomed else done
        return found

    @property
    def session_status(self) -> SessionStatus:
        return SessionStatus.FAILED if self.doomed else SessionStatus.SUCCEEDED

    def history(self) -> Counter[tuple[str, str | None]]:
        """The session's history as (kind, key) pairs, counted."""
        kinds: Counter[tuple[str, str | None]] = Counter()
        kinds[("session_started", None)] += 1
        kinds[("fan_out_started", "each")] += 1
        made = self.attempts()
        for key, status in self.statuses().items():
            kinds[(f"job_{status.value}", key)] += 1
            kinds[("job_dispatched", key)] += made.get(key, 0)
            kinds[("job_retrying", key)] += max(made.get(key, 0) - 1, 0)  # all but the last
        kinds[(f"session_{self.session_status.value}", None)] += 1
        return +kinds


# ---------------------------------------------------------------- local: 100 sessions at once


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A state folder with the load pipeline stored, as ``bunsui pipeline create`` leaves it."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "load.yaml").write_text(pipeline_text(tmp_path / "runs.log"), encoding="utf-8")
    backend = LocalBackend(tmp_path / ".bunsui")
    backend.save_pipeline(folder / "load.yaml")
    backend.store.close()
    yield tmp_path


def start_all(home: Path, plans: list[Plan]) -> list[Session]:
    """Start every session at the same moment, each as its own ``bunsui session start`` does:
    its own backend on the shared state folder, create the session, drive it to its end."""
    gate = threading.Barrier(len(plans))
    ended: list[Session | None] = [None] * len(plans)
    errors: list[BaseException] = []

    def start(index: int, plan: Plan) -> None:
        backend = LocalBackend(home / ".bunsui")
        try:
            gate.wait()
            values = {"item_fails": plan.item_fails, "check_fails": plan.check_fails}
            session = backend.create_session("load", values)
            ended[index] = backend.drive(session.id)
        except BaseException as exc:  # reported below, with every other one
            errors.append(exc)
        finally:
            backend.store.close()

    drivers = [
        threading.Thread(target=start, args=(i, plan), name=f"driver-{i}", daemon=True)
        for i, plan in enumerate(plans)
    ]
    for driver in drivers:
        driver.start()
    for driver in drivers:
        driver.join(HANG_GUARD)
    stuck = [driver.name for driver in drivers if driver.is_alive()]
    assert not stuck, f"drivers that never returned: {stuck}"
    assert not errors, f"{len(errors)} drivers raised; the first: {errors[0]!r}"
    return [session for session in ended if session is not None]


def failing_plans(count: int) -> list[Plan]:
    """Every tenth session's check fails all its attempts (the session fails, report never
    runs); the others' odd items and check fail their first attempt and succeed on retry."""
    return [Plan(1, CHECK_RETRIES + 1) if i % 10 == 0 else Plan(1, 1) for i in range(count)]


def start_processes(home: Path, plans: list[Plan]) -> list[Session]:
    """Start every session at once from its own ``bunsui session start`` process (each drives
    its session in the foreground, as in a terminal of its own), all on one state folder."""
    env = {**os.environ, "BUNSUI_HOME": str(home / ".bunsui")}
    commands = [
        [BUNSUI, "session", "start", "--pipeline", "load", "--format", "json", "--parameters",
         f"item_fails={plan.item_fails}", f"check_fails={plan.check_fails}"]
        for plan in plans
    ]  # fmt: skip
    starts = [
        subprocess.Popen(
            command, env=env, cwd=home, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for command in commands
    ]
    ended = []
    backend = LocalBackend(home / ".bunsui")
    try:
        for plan, start in zip(plans, starts, strict=True):
            out, err = start.communicate(timeout=HANG_GUARD)
            assert start.returncode == (1 if plan.doomed else 0), out + err
            ended.append(backend.store.get_session(json.loads(out)["session_id"]))
    finally:
        for start in starts:
            if start.poll() is None:
                start.kill()
        backend.store.close()
    return ended


def check_sessions(home: Path, plans: list[Plan], ended: list[Session]) -> None:
    """Each session ended as its plan says, its attempts ran once each, and its counters,
    slots and history agree with its runs."""
    assert len(ended) == len(plans)
    ran = Counter((home / "runs.log").read_text().split())
    backend = LocalBackend(home / ".bunsui")
    store = backend.store
    expected_runs: Counter[str] = Counter()
    try:
        for plan, session in zip(plans, ended, strict=True):
            assert session.status is plan.session_status, session
            runs = {run.key: run for run in store.runs(session.id)}
            assert {key: run.status for key, run in runs.items()} == plan.statuses()
            made = plan.attempts()
            assert {k: r.attempt for k, r in runs.items() if r.attempt} == made
            expected_runs.update(
                f"{session.id}/{key}/{attempt}"
                for key, attempts in made.items()
                for attempt in range(1, attempts + 1)
            )
            check_counters(store.get_session(session.id), runs)
            assert all_slots_free(store, session.id)
            history = Counter((entry.kind, entry.key) for _, entry in store.history(session.id))
            assert history == plan.history(), session.id
    finally:
        store.close()
    # Every attempt of every session ran exactly once; nothing else ran.
    assert ran == expected_runs


def check_counters(session: Session, runs: dict[str, JobRun]) -> None:
    """The session's counters and the fan-in's edge counts agree with the runs."""
    jobs = [run for run in runs.values() if run.index is None]
    assert session.total == len(jobs) == 4
    assert session.finished == session.total
    assert session.failed == sum(run.status is JobStatus.FAILED for run in jobs)
    assert session.running == 0
    fan = runs["each"]
    assert fan.done == fan.expected == 1 + ITEMS  # its parent's edge and each item's
    assert runs["report"].done == runs["report"].expected == 2


def all_slots_free(store: SqliteStore, session_id: str) -> bool:
    """Whether every slot of the session was given back: the fan-out's limit of 2 can be
    taken twice, and not a third time (taken after the session ended, so harmless)."""
    taken = [store.acquire_slot(session_id, "each", 2) for _ in range(3)]
    return taken == [True, True, False]


@pytest.mark.timeout(HANG_GUARD + 60)
def test_a_hundred_sessions_started_at_once_all_succeed(home):
    plans = [Plan() for _ in range(SESSIONS)]
    check_sessions(home, plans, start_all(home, plans))


@pytest.mark.timeout(HANG_GUARD + 60)
def test_a_hundred_sessions_with_failing_attempts_retry_and_fail_where_planned(home):
    plans = failing_plans(SESSIONS)
    check_sessions(home, plans, start_all(home, plans))


@pytest.mark.timeout(HANG_GUARD + 60)
def test_sessions_started_at_once_by_separate_processes_share_one_database(home):
    plans = failing_plans(PROCESSES)
    check_sessions(home, plans, start_processes(home, plans))


# ---------------------------------------------------------------- AWS: 1,000 completions at once


@pytest.fixture
def aws() -> Iterator[AwsHarness]:
    """The stack on moto, its reducer run by WORKERS containers at once; every event is
    delivered twice, both copies at the same moment, the pairs of each round shuffled."""
    with AwsHarness(
        [JobCode(JOBS)], duplicates=True, together=True, seed=11, workers=WORKERS
    ) as harness:
        yield harness


@pytest.fixture
def lost_writes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Conditional writes the reducers lost (to a concurrent reducer, or to a duplicate that
    got there first), summed over every invocation of every container."""
    lost: Counter[str] = Counter()
    take = service.CountingStore.take_lost

    def counted(store: service.CountingStore) -> int:
        found = take(store)
        lost["writes"] += found
        return found

    monkeypatch.setattr(service.CountingStore, "take_lost", counted)
    return lost


def fan_out_document() -> str:
    items = ", ".join(str(i) for i in range(FAN_OUT))
    return (
        'version: "1.1"\nname: load-fan-out\njobs:\n'
        "  - id: each\n    type: lambda\n"
        f"    for_each: [{items}]\n"
        '    parameters: {function_name: flow-noop, payload: {item: "${item}"}}\n'
        "  - id: total\n    type: lambda\n    depends_on: [each]\n"
        '    parameters: {function_name: flow-total, payload: {results: "${jobs.each.outputs}"}}\n'
    )


def api(aws: AwsHarness, method: str, path: str, body: Any = None) -> Any:
    status, reply = aws.api(method, path, body)
    assert status in (200, 201), reply
    return reply


@pytest.mark.timeout(900)  # about 70 s on a quiet machine: moto answers ~15,000 requests in Python
def test_a_thousand_completions_at_once_from_concurrent_reducers(aws, lost_writes, capsys):
    name = api(aws, "POST", "/pipelines", {"document": fan_out_document()})["name"]
    before = aws.calls.snapshot()
    session_id = api(aws, "POST", "/sessions", {"pipeline": name})["session"]["id"]
    aws.settle()
    used = aws.calls.snapshot() - before

    assert api(aws, "GET", f"/sessions/{session_id}")["session"]["status"] == "succeeded"
    store = DynamoStore(aws.env("BUNSUI_TABLE"), aws.aws.dynamodb)
    runs = {run.key: run for run in store.runs(session_id)}
    items = [run for run in runs.values() if run.index is not None]
    assert len(items) == FAN_OUT
    assert all(run.status is JobStatus.SUCCEEDED and run.attempt == 1 for run in items)
    assert sorted(run.output["item"] for run in items) == list(range(FAN_OUT))
    assert runs["total"].output == {"count": FAN_OUT}  # the fan-in saw every item's output

    # Each attempt was claimed, hence invoked, once; its completion reached a reducer twice.
    invoked = Counter(i.payload["bunsui"]["dispatch_id"] for i in aws.lambda_.invoked)
    assert len(invoked) == FAN_OUT + 1 and set(invoked.values()) == {1}
    completions = Counter(
        event["detail"]["requestPayload"]["bunsui"]["dispatch_id"]
        for _, event in aws.delivered
        if event.get("detail-type") == LAMBDA_SUCCESS
    )
    assert completions == Counter({dispatch_id: 2 for dispatch_id in invoked})
    assert aws.peak_concurrency == WORKERS  # the reducers did run side by side

    # Counters and edges agree with the runs.
    session = store.get_session(session_id)
    assert (session.total, session.finished, session.failed) == (2, 2, 0)
    assert runs["each"].done == runs["each"].expected == FAN_OUT
    assert runs["total"].done == runs["total"].expected == 1

    # The history (projected from the table's stream) has each step once.
    history = Counter((entry.kind, entry.key) for _, entry in store.history(session_id))
    expected = Counter({("session_started", None): 1, ("fan_out_started", "each"): 1})
    for key in [*(f"each[{i}]" for i in range(FAN_OUT)), "total"]:
        expected.update({("job_dispatched", key): 1, ("job_succeeded", key): 1})
    expected.update({("job_succeeded", "each"): 1, ("session_succeeded", None): 1})
    assert history == expected
    # A race costs the loser one conditional write; nothing else grows with concurrency.
    writes = used.writes("reducer")
    assert writes <= (FAN_OUT + 1) * 4 + 20 + lost_writes["writes"], used.table()
    capsys.readouterr()  # the handlers' metric lines: only the figures are kept for -rP
    print(
        f"load: {FAN_OUT + 1} jobs, {len(aws.delivered)} events delivered "
        f"({sum(completions.values())} completions, each twice), {WORKERS} reducers at once "
        f"(peak {aws.peak_concurrency}), {lost_writes['writes']} conditional writes lost, "
        f"{writes} reducer write requests"
    )
