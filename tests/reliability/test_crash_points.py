"""The reducer dies at each step boundary of an event; a redelivery, the sweeper, or (on
the local backend) a resumed driver brings the session to its end.

A pipeline ``a -> (b, c) -> d`` runs on DynamoDB (moto, through the reducer and sweeper
Lambda handlers, with the real AwsDispatcher: ``a`` and ``d`` are Lambda jobs, ``b`` an
ECS task, ``c`` a Step Functions execution) and on SQLite, two ways: the reducer with
every store call its own commit, as each DynamoDB request is, and the local backend's
driver (:class:`~engine.local.backend.EventLoop`: one transaction per event, work
started once it has committed). ``c``'s first run fails, so a retry is part of
every session. Every job has ``timeout: 60`` and ``retries: 2``.

The reducer dies by :class:`~tests.reliability.faults.Crash`, a BaseException raised from
a wrapped store or dispatcher method, at one point per test; each point is named by what
was durable when it died. Then one recovery path runs:

- ``redelivery``: the event is delivered again at once (EventBridge's retry of a failed
  invocation), then the session goes on; the sweeper runs only if nothing else moves;
- ``sweeper``: the event is never delivered again (its retries ended in the dead-letter
  queue); the sweeper runs whenever nothing else moves;
- ``resume`` (the local driver): its process died with its in-memory queue, timers and
  running jobs; a new driver resumes the session (``Reducer.repair``).

Every test asserts: the session SUCCEEDED with every job SUCCEEDED, the counters equal
a recount of the runs, every attempt was started at most once (on AWS: each ECS
``clientToken`` and execution name is the one derived from its attempt's dispatch id,
and no two starts share one), and the outcome of :data:`EXPECTED`: whether the sweeper
had to act, which claimed attempts were never started, which jobs' work ran more often
than in a session without a crash.

``BUNSUI_CRASH_TABLE=1`` prints the outcome of each test, the rows of the table in
docs/reliability.md.
"""

from __future__ import annotations

import os
import queue
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

import pytest

from engine.aws.dispatch import client_token, execution_name
from engine.events import AttemptFinished, Event, SessionStarted
from engine.loader import load_pipeline
from engine.local.backend import LOST, EventLoop
from engine.local.store import SqliteStore
from engine.pipeline import Pipeline
from engine.ports import Dispatch
from engine.recovery import LOST_AFTER_SECONDS
from engine.reducer import Reducer
from engine.state import JobRun, JobStatus, Session, SessionStatus
from tests.reliability.faults import (
    STATE_MACHINE,
    T0,
    TASK_DEFINITION,
    Crash,
    Flow,
    Stack,
    Started,
    Trap,
    Tripwire,
    moto_account,
    stack,
)

__all__ = ["moto_account", "stack"]

SID = "s-crash"
GRACE = 300.0
SWEEP_AFTER = 1000.0
"""How long nothing moves before the sweeper runs: past its grace period (300 s)."""
JOBS = ("a", "b", "c", "d")
CLEAN_RUNS = {"a": 1, "b": 1, "c": 2, "d": 1}
"""How often each job's work starts in a session without a crash (c fails once)."""


def _pipeline(types: dict[str, str], b: str = "timeout: 60, retries: 2") -> str:
    """``a -> (b, c) -> d``; ``b`` with its own timeout and retries."""
    lines = ['version: "1.1"', "name: crash", "jobs:"]
    parents = {"a": "[]", "b": "[a]", "c": "[a]", "d": "[b, c]"}
    for job in JOBS:
        limits = b if job == "b" else "timeout: 60, retries: 2"
        lines.append(
            f"  - {{id: {job}, type: {types[job]}, depends_on: {parents[job]}, {limits}, "
            f"retry_delay: 5, parameters: {PARAMETERS[types[job]]}}}"
        )
    return "\n".join(lines) + "\n"


PARAMETERS = {
    "custom": "{command: work}",
    "lambda": "{function_name: work, payload: {}}",
    "ecs": f"{{task_definition: '{TASK_DEFINITION}', container_name: main}}",
    "step_function": f"{{state_machine_arn: '{STATE_MACHINE}', input: {{}}}}",
}
SUCCEEDED = JobStatus.SUCCEEDED
LOCAL_TYPES = dict.fromkeys(JOBS, "custom")
AWS_TYPES = {"a": "lambda", "b": "ecs", "c": "step_function", "d": "lambda"}


# ---------------------------------------------------------------------- the crash points


def _changes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return args[3] if len(args) > 3 else kwargs.get("changes", {})


def _ended(key: str) -> Callable[..., bool]:
    return lambda a, k, r: r is not None and r.key == key and r.status.terminal


@dataclass(frozen=True)
class CrashPoint:
    """Where the reducer dies, named by what was durable then."""

    name: str
    durable: str
    target: str
    trap: Trap
    local_only: bool = False
    in_driver: bool = True


POINTS = [
    CrashPoint(
        "before-outcome",
        "nothing of a's completion (it died writing a's end)",
        "store",
        Trap(
            "transition",
            after=False,
            when=lambda a, k, r: (
                a[1] == "a" and _changes(a, k).get("status") is JobStatus.SUCCEEDED
            ),
        ),
    ),
    CrashPoint(
        "outcome-recorded",
        "a ended SUCCEEDED; not counted in the session, no edge counted",
        "store",
        Trap("transition", after=True, when=_ended("a")),
    ),
    CrashPoint(
        "retry-recorded",
        "c's failed attempt 1 recorded (RETRYING); its retry timer not set",
        "store",
        Trap(
            "transition",
            after=True,
            when=lambda a, k, r: r is not None and r.key == "c" and r.status is JobStatus.RETRYING,
        ),
    ),
    CrashPoint(
        "session-counted",
        "a ended and counted in the session; no edge counted",
        "store",
        Trap("count_finished", after=True, when=lambda a, k, r: r.finished == 1),
    ),
    CrashPoint(
        "edge-1-counted",
        "a ended, counted; edge a->b counted, a->c not",
        "store",
        Trap("count_edge", after=True, when=lambda a, k, r: a[1] == "b" and a[4] == "a"),
    ),
    CrashPoint(
        "edges-counted",
        "both edges of a counted (b and c ready); neither decided",
        "store",
        Trap("count_edge", after=True, when=lambda a, k, r: a[1] == "c" and a[4] == "a"),
    ),
    CrashPoint(
        "claimed",
        "b claimed (RUNNING, attempt 1); no timeout timer, nothing started; c not decided",
        "store",
        Trap(
            "transition",
            after=True,
            when=lambda a, k, r: (
                r is not None
                and r.key == "b"
                and r.status is JobStatus.RUNNING
                and "attempt" in _changes(a, k)
            ),
        ),
    ),
    CrashPoint(
        "timer-set",
        "b claimed and its timeout timer set; nothing started; c not decided",
        "dispatcher",
        Trap("dispatch", after=False, when=lambda a, k, r: a[0].key == "b" and a[0].attempt == 1),
    ),
    CrashPoint(
        "dispatched",
        "b's work started; nothing after it (locally its handle), c not decided",
        "dispatcher",
        Trap("dispatch", after=True, when=lambda a, k, r: a[0].key == "b" and a[0].attempt == 1),
    ),
    CrashPoint(
        "handle-recorded",
        "b started and its handle recorded; c not decided",
        "store",
        Trap(
            "transition",
            after=True,
            when=lambda a, k, r: a[1] == "b" and set(_changes(a, k)) == {"handle"},
        ),
        local_only=True,  # on AWS nothing is written at dispatch
        in_driver=False,  # the local driver writes it in the next event's transaction
    ),
    CrashPoint(
        "all-counted",
        "d ended and the session counts every job finished; not closed",
        "store",
        Trap("count_finished", after=True, when=lambda a, k, r: r.finished == r.total),
    ),
    CrashPoint(
        "closing",
        "every job ended and counted; it died writing the session's close",
        "store",
        Trap("set_session_status", after=False, when=lambda a, k, r: a[2].terminal),
    ),
    CrashPoint(
        "closed",
        "the session closed; nothing after it (locally its history line)",
        "store",
        Trap(
            "set_session_status",
            after=True,
            when=lambda a, k, r: a[2].terminal and r is not None,
        ),
    ),
]
BY_NAME = {point.name: point for point in POINTS}


@dataclass(frozen=True)
class Outcome:
    """What recovering from one crash took and cost.

    Attributes:
        swept: The sweeper had to act (nothing else would have moved the session).
        never_started: ``key/attempt`` of attempts claimed but never started; each
            ended by its job's timeout (or was counted lost by a resume) and took one
            of its job's retries.
        extra_runs: Jobs whose work started more often than without the crash.
    """

    swept: bool
    never_started: tuple[str, ...] = ()
    extra_runs: tuple[str, ...] = ()


# What each crash point costs, by recovery path. The same on both stores unless noted.
HEALED = Outcome(swept=False)
SWEPT = Outcome(swept=True)
EXPECTED: dict[tuple[str, str], Outcome] = {
    ("before-outcome", "redelivery"): HEALED,
    # Past the event's first write a redelivery finds it done (the run ended, or claimed)
    # and does nothing more: what the event left undone waits for the sweeper.
    # The completion is lost: a's timeout timer fails the attempt; a runs again.
    ("before-outcome", "sweeper"): Outcome(swept=False, extra_runs=("a",)),
    ("outcome-recorded", "redelivery"): SWEPT,
    ("outcome-recorded", "sweeper"): SWEPT,
    ("retry-recorded", "redelivery"): SWEPT,
    ("retry-recorded", "sweeper"): SWEPT,
    ("session-counted", "redelivery"): SWEPT,
    ("session-counted", "sweeper"): SWEPT,
    ("edge-1-counted", "redelivery"): SWEPT,
    ("edge-1-counted", "sweeper"): SWEPT,
    ("edges-counted", "redelivery"): SWEPT,
    ("edges-counted", "sweeper"): SWEPT,
    # b's attempt 1 was claimed and never started: the sweeper (no timer was set) finds
    # no trace of its work at the service and starts it, with its attempt's token.
    ("claimed", "redelivery"): SWEPT,
    ("claimed", "sweeper"): SWEPT,
    # The timer was set: at b's timeout the reducer finds no trace of its work and starts
    # it then, with a new timeout, instead of failing it; c still needs the sweeper.
    ("timer-set", "redelivery"): SWEPT,
    ("timer-set", "sweeper"): SWEPT,
    ("dispatched", "redelivery"): SWEPT,
    ("dispatched", "sweeper"): SWEPT,
    ("handle-recorded", "redelivery"): SWEPT,
    ("handle-recorded", "sweeper"): SWEPT,
    ("all-counted", "redelivery"): SWEPT,
    ("all-counted", "sweeper"): SWEPT,
    ("closing", "redelivery"): SWEPT,
    ("closing", "sweeper"): SWEPT,
    ("closed", "redelivery"): HEALED,
    ("closed", "sweeper"): HEALED,
    # The local driver handles each event in one transaction and starts work after its
    # commit: a crash inside the transaction undoes the whole event, whose completion
    # was in memory only; the resumed driver counts that job's attempt lost and runs it
    # again. (c's lost run of retry-recorded was its failing one: no run more.)
    ("before-outcome", "resume"): Outcome(swept=False, extra_runs=("a",)),
    ("outcome-recorded", "resume"): Outcome(swept=False, extra_runs=("a",)),
    ("retry-recorded", "resume"): HEALED,
    ("session-counted", "resume"): Outcome(swept=False, extra_runs=("a",)),
    ("edge-1-counted", "resume"): Outcome(swept=False, extra_runs=("a",)),
    ("edges-counted", "resume"): Outcome(swept=False, extra_runs=("a",)),
    ("claimed", "resume"): Outcome(swept=False, extra_runs=("a",)),
    # After the commit: the starts of b and c were never made; both run as attempt 2.
    ("timer-set", "resume"): Outcome(swept=False, never_started=("b/1", "c/1")),
    ("dispatched", "resume"): Outcome(swept=False, never_started=("c/1",), extra_runs=("b",)),
    ("all-counted", "resume"): Outcome(swept=False, extra_runs=("d",)),
    ("closing", "resume"): Outcome(swept=False, extra_runs=("d",)),
    ("closed", "resume"): Outcome(swept=False, extra_runs=("d",)),
}


# ---------------------------------------------------------------------- the worlds


class World(Protocol):
    """One session on one backend, whose reducer dies once."""

    crashed: Any
    crashes: int

    def start(self) -> Any: ...

    def step(self) -> bool:
        """Deliver the next completion, else fire the next timer; whether there was one."""

    def redeliver(self) -> None: ...

    def sweep(self) -> bool:
        """Run the sweeper after a quiet while; whether it acted."""

    def resume(self) -> None: ...

    def session(self) -> Session: ...

    def runs(self) -> list[JobRun]: ...

    def starts(self) -> list[tuple[str, int]]:
        """``(key, attempt)`` of every start of work, in order."""


@dataclass
class LocalServices:
    """The jobs' side locally: each start answered once (c's first run fails), timers kept."""

    completions: list[AttemptFinished] = field(default_factory=list)
    timers: list[tuple[str, Event]] = field(default_factory=list)
    orders: list[Dispatch] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)

    def dispatch(self, order: Dispatch) -> str:
        self.orders.append(order)
        failing = order.key == "c" and sum(o.key == "c" for o in self.orders) == 1
        self.completions.append(
            AttemptFinished(
                order.session_id,
                order.key,
                order.attempt,
                "",
                None if failing else {"attempt": order.attempt},
                "exit code 1" if failing else None,
            )
        )
        return f"pid-{order.key}-{order.attempt}"

    def stop(self, run: JobRun, job_type: str) -> None:
        self.stopped.append(f"{run.key}/{run.attempt}")

    def started(self, run: JobRun, job_type: str) -> bool:
        return any((o.key, o.attempt) == (run.key, run.attempt) for o in self.orders)

    def schedule(self, event: Event, at: str) -> None:
        self.timers.append((at, event))


class LocalWorld:
    """The reducer on SQLite.

    Two ways: every store call its own commit, as each DynamoDB request is (the engine's
    own guarantees, for redelivery and the sweeper), or as the local backend's driver runs
    it (``driver``): an :class:`~engine.local.backend.EventLoop` handles each event in one
    transaction and starts its work once that has committed; ``resume`` repairs.
    """

    def __init__(self, pipeline: Pipeline, driver: bool = False) -> None:
        self.pipeline = pipeline
        self.driver = driver
        self.now = T0
        self.sqlite = SqliteStore(":memory:")
        self.store = Tripwire(self.sqlite)
        self.services = LocalServices()
        self.dispatcher = Tripwire(self.services)
        self.loop: EventLoop | None = None
        self.reducer = self._reducer()
        self.crashed: Event | None = None
        self.crashes = 0

    def _reducer(self) -> Reducer:
        if not self.driver:
            return Reducer(self.store, self.dispatcher, self.services, lambda *_: self.pipeline)
        self.loop = EventLoop(
            cast(SqliteStore, self.store),
            self.dispatcher,
            self.services,
            lambda *_: self.pipeline,
            queue.SimpleQueue(),
            clock=self._iso,
        )
        return self.loop.reducer

    def _iso(self) -> str:
        return self.now.isoformat()

    def _handle(self, event: Event) -> None:
        try:
            if self.loop is not None:
                self.loop.handle(event)
            else:
                self.reducer.handle(event)
        except Crash:
            self.crashed = event
            self.crashes += 1

    def start(self) -> None:
        with self.sqlite.batch():
            self.reducer.create(self.pipeline, 1, {}, SID, self._iso())
        self._handle(SessionStarted(SID, self._iso()))

    def step(self) -> bool:
        if self.services.completions:
            self.now += timedelta(seconds=1)
            event = self.services.completions.pop(0)
            self._handle(AttemptFinished(**{**event.__dict__, "now": self._iso()}))
            return True
        if not self.services.timers:
            return False
        self.services.timers.sort(key=lambda timer: timer[0])
        at, event = self.services.timers.pop(0)
        self.now = max(self.now, datetime.fromisoformat(at))
        self._handle(event)
        return True

    def redeliver(self) -> None:
        assert self.crashed is not None
        self._handle(self.crashed)

    def sweep(self) -> bool:
        self.now += timedelta(seconds=SWEEP_AFTER)
        return bool(self.reducer.sweep(SID, self._iso(), GRACE))

    def resume(self) -> None:
        """The driver died with its in-process queue, its timers and its running jobs; a
        new one repairs the session (``bunsui session resume``)."""
        assert self.driver, "only the local driver resumes"
        self.services.completions.clear()
        self.services.timers.clear()
        self.now += timedelta(seconds=30)
        self.reducer = self._reducer()
        assert self.loop is not None
        self.loop.step(lambda reducer: reducer.repair(SID, self._iso(), LOST))

    def session(self) -> Session:
        return self.sqlite.get_session(SID)

    def runs(self) -> list[JobRun]:
        return self.sqlite.runs(SID)

    def starts(self) -> list[tuple[str, int]]:
        return [(order.key, order.attempt) for order in self.services.orders]


def _c_fails_first(start: Started, before: list[Started]) -> bool:
    return start.key == "c" and not any(s.key == "c" for s in before)


class AwsWorld(Flow):
    """The stack on moto, driven through the reducer and sweeper handlers; c's first run
    fails."""

    def __init__(self, stack: Stack, text: str) -> None:
        super().__init__(stack, text, _c_fails_first)
        reducer = stack.engine.reducer
        self.store = reducer.store = Tripwire(reducer.store)
        self.dispatcher = reducer.dispatcher = Tripwire(reducer.dispatcher)
        self.crashed: dict[str, Any] | None = None
        self.crashes = 0

    def deliver(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().deliver(event)
        except Crash:
            self.crashed = event
            self.crashes += 1
            return {}

    def redeliver(self) -> None:
        assert self.crashed is not None
        self.deliver(self.crashed)

    def sweep(self) -> bool:  # type: ignore[override]
        reply = super().sweep(SWEEP_AFTER)
        assert reply["failed"] == 0, reply
        return reply["repaired"] > 0

    def resume(self) -> None:
        raise AssertionError("no driver to resume on AWS: the sweeper takes its part")


# ---------------------------------------------------------------------- playing it out


@dataclass
class Played:
    outcome: Outcome
    sweeps: int


def play(world: World, point: CrashPoint, path: str) -> Played:
    """Run the session with the reducer dying at ``point``, then recover by ``path``."""
    getattr(world, point.target).arm(point.trap)
    world.start()
    recovered = False
    swept = False
    sweeps = 0
    for _ in range(200):
        if world.crashed is not None and not recovered:
            recovered = True
            if path == "redelivery":
                world.redeliver()
            elif path == "resume":
                world.resume()
            continue
        if world.session().status.terminal:
            break
        if world.step():
            continue
        sweeps += 1
        assert sweeps <= 4, f"stuck: {[(r.key, r.status.value) for r in world.runs()]}"
        swept = world.sweep() or swept
    assert world.crashes == 1, "the reducer died once, at the point armed"
    return Played(Outcome(swept, _never_started(world), _extra_runs(world)), sweeps)


def _never_started(world: World) -> tuple[str, ...]:
    started = set(world.starts())
    return tuple(
        f"{run.key}/{attempt}"
        for run in world.runs()
        for attempt in range(1, run.attempt + 1)
        if (run.key, attempt) not in started
    )


def _extra_runs(world: World) -> tuple[str, ...]:
    runs = Counter(key for key, _ in world.starts())
    return tuple(key for key in JOBS if runs[key] > CLEAN_RUNS[key])


def assert_ended_well(world: World) -> None:
    """Nothing lost: every job succeeded, the counters are a recount, no attempt ran twice."""
    session = world.session()
    runs = world.runs()
    assert session.status is SessionStatus.SUCCEEDED, [(r.key, r.status.value) for r in runs]
    assert {run.key: run.status for run in runs} == dict.fromkeys(JOBS, JobStatus.SUCCEEDED)
    ended = [run for run in runs if run.status.terminal]
    failed = [run for run in ended if run.status is JobStatus.FAILED]
    assert (session.finished, session.failed, session.total) == (len(ended), len(failed), 4)
    twice = [start for start, n in Counter(world.starts()).items() if n > 1]
    assert twice == [], "an attempt was started twice"


def assert_tokens_are_the_attempts(starts: list[Started]) -> None:
    """Each ECS task and execution carries the token derived from its own attempt."""
    for start in starts:
        if start.job_type == "ecs":
            assert start.token == client_token(start.dispatch_id)
        elif start.job_type == "step_function":
            assert start.token == execution_name(start.dispatch_id)
    tokens = [start.token for start in starts if start.token is not None]
    assert len(tokens) == len(set(tokens))
    assert len({start.dispatch_id for start in starts}) == len(starts)


def _report(store: str, point: CrashPoint, path: str, played: Played) -> None:
    """With ``BUNSUI_CRASH_TABLE=1`` (and ``-s``), print the test's row of the table."""
    if os.environ.get("BUNSUI_CRASH_TABLE"):
        outcome = played.outcome
        cells = [
            store,
            point.name,
            path,
            "yes" if outcome.swept else "no",
            ", ".join(outcome.never_started) or "-",
            ", ".join(outcome.extra_runs) or "-",
        ]
        print("\n| " + " | ".join(cells) + " |")


LOCAL_CASES = [
    pytest.param(point, path, id=f"{point.name}-{path}")
    for point in POINTS
    for path in ("redelivery", "sweeper", "resume")
    if point.in_driver or path != "resume"
]
AWS_CASES = [
    pytest.param(point, path, id=f"{point.name}-{path}")
    for point in POINTS
    if not point.local_only
    for path in ("redelivery", "sweeper")
]


@pytest.mark.parametrize(("point", "path"), LOCAL_CASES)
def test_sqlite_session_completes_after_a_crash(point: CrashPoint, path: str):
    world = LocalWorld(load_pipeline(_pipeline(LOCAL_TYPES)), driver=path == "resume")
    played = play(world, point, path)
    _report("sqlite", point, path, played)
    assert_ended_well(world)
    assert played.outcome == EXPECTED[(point.name, path)]


@pytest.mark.parametrize(("point", "path"), AWS_CASES)
def test_dynamodb_session_completes_after_a_crash(stack: Stack, point: CrashPoint, path: str):
    world = AwsWorld(stack, _pipeline(AWS_TYPES))
    played = play(world, point, path)
    _report("dynamodb", point, path, played)
    assert_ended_well(world)
    assert_tokens_are_the_attempts(stack.services.started)
    assert played.outcome == EXPECTED[(point.name, path)]
    assert all(reply.get("handled") is not None for reply in world.replies)


# ---------------------------------------------------------------------- what is not healed

NO_TIMEOUT = "retries: 2"
NO_RETRIES = "timeout: 60, retries: 0"


@pytest.mark.parametrize(
    ("job_type", "limits"),
    [
        pytest.param("ecs", NO_TIMEOUT, id="ecs-no-timeout"),
        pytest.param("step_function", NO_TIMEOUT, id="step_function-no-timeout"),
        pytest.param("ecs", NO_RETRIES, id="ecs-no-retries"),
    ],
)
def test_dynamodb_claim_whose_start_was_lost_still_runs_once(
    stack: Stack, job_type: str, limits: str
):
    """The reducer died after claiming b and before starting it; the event is delivered
    again and the sweeper runs. b's work still starts, once, with the token of its
    attempt (ECS ``clientToken``, execution name): the sweeper (or b's timeout, whichever
    comes first) finds no trace of the work at the service and starts it."""
    world = AwsWorld(stack, _pipeline(AWS_TYPES | {"b": job_type}, b=limits))
    play(world, BY_NAME["timer-set"], "redelivery")
    assert_ended_well(world)
    [started] = stack.services.of("b")
    assert_tokens_are_the_attempts([started])
    assert world.run_of("b").attempt == 1


def test_dynamodb_lambda_claim_whose_start_was_lost_fails_once_no_result_can_come(
    stack: Stack,
):
    """An asynchronous Lambda invocation cannot be looked up, so a lost start is not
    told from a long queue: b's attempt stays running until no result can come any more
    (Lambda keeps an invocation up to six hours and runs it up to fifteen minutes), then
    fails as lost and retries, and the retry runs once."""
    world = AwsWorld(stack, _pipeline(AWS_TYPES | {"b": "lambda"}, b=NO_TIMEOUT))
    point = BY_NAME["timer-set"]
    getattr(world, point.target).arm(point.trap)
    world.start()
    while world.crashed is None and world.step():
        pass
    world.redeliver()
    while world.step():
        pass
    world.sweep()
    assert world.run_of("b").status is JobStatus.RUNNING, "still within Lambda's bounds"
    assert stack.services.of("b") == []
    assert Flow.sweep(world, LOST_AFTER_SECONDS)["failed"] == 0
    while world.step():
        pass
    assert_ended_well(world)
    b = world.run_of("b")
    assert b.attempt == 2
    [started] = stack.services.of("b")
    assert_tokens_are_the_attempts([started])
    assert world.run_of("b").error is None  # attempt 1 failed as lost; attempt 2 ran


@pytest.mark.parametrize("limits", [NO_TIMEOUT, NO_RETRIES], ids=["no-timeout", "no-retries"])
def test_sqlite_resume_starts_a_claim_whose_start_was_lost(limits: str):
    """Locally the driver's death takes its jobs with it, and ``resume`` counts every
    running attempt lost at once: a claim never started is retried whatever its timeout."""
    world = LocalWorld(load_pipeline(_pipeline(LOCAL_TYPES, b=limits)), driver=True)
    played = play(world, BY_NAME["timer-set"], "resume")
    if limits == NO_RETRIES:
        assert world.session().status is SessionStatus.FAILED
        assert world.sqlite.get_run(SID, "b").error == LOST
        assert [key for key, _ in world.starts()].count("b") == 0
        return
    assert_ended_well(world)
    assert played.outcome == Outcome(swept=False, never_started=("b/1", "c/1"))


def test_the_local_driver_loses_no_history_line_in_a_crash():
    """Each step the runs show has its history line (``bunsui session logs``): every
    attempt claimed (job_dispatched), every attempt but the last retried, every end, the
    session's end. The driver writes a line in the transaction of its step, so a crash
    takes both or neither."""
    lost: list[str] = []
    for point in (point for point in POINTS if point.in_driver):
        world = LocalWorld(load_pipeline(_pipeline(LOCAL_TYPES)), driver=True)
        play(world, point, "resume")
        lines = {(e.kind, e.key, e.attempt) for _, e in world.sqlite.history(SID)}
        wanted = {("session_succeeded", None, None)}
        for run in world.runs():
            wanted.add((f"job_{run.status.value}", run.key, run.attempt))
            wanted.update(("job_dispatched", run.key, n) for n in range(1, run.attempt + 1))
            wanted.update(("job_retrying", run.key, n) for n in range(1, run.attempt))
        lost += [
            f"{point.name}: {kind} {key}/{n}" for kind, key, n in sorted(wanted - lines, key=str)
        ]
    assert lost == []
