"""Random pipelines and a hostile world for the reducer: the delivery-chaos suite's parts.

:func:`cases` draws a DAG (jobs, trigger rules, conditions, retries,
timeouts, fan-outs, a concurrency limit) and the script of every attempt
(success, failure, refusal, timeout, late completion), as data that
:mod:`tests.reliability.reference` interprets and :func:`pipeline_text`
writes as a pipeline for the real engine.

:class:`World` plays the services and the timers for several reducers at
once: each dispatch is recorded, and its completion, like each timer, is
delivered one to three times, in an order :class:`Choices` picks, in
batches that concurrent reducer threads (each with its own store client)
handle at the same moment. A completion may even be handled by another
reducer before the dispatching one has returned from the service call.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hypothesis import strategies as st

from engine.errors import DispatchFailed
from engine.events import AttemptFinished, AttemptTimedOut, Event
from engine.ports import Dispatch
from engine.reducer import Reducer
from engine.state import JobRun
from tests.reliability.reference import (
    PARAMETER,
    Attempt,
    Condition,
    Dag,
    FanOut,
    Job,
    Kind,
    Plan,
    Script,
    item_key,
)

T0 = "2026-01-01T00:00:00+00:00"
DRAWN_UP_TO = 24
"""DAGs of up to this many jobs are drawn choice by choice, so hypothesis shrinks them
well; larger ones come from a drawn seed (hypothesis' buffer holds a few thousand
choices, a 300-job DAG and its script make more)."""
WORKERS = 3
"""Concurrent reducers, each with its own Reducer and store client."""
MAX_ITEMS = 4
"""Items of a literal fan-out; a fan-out over an upstream output's list has 1 to 3."""
TIMEOUT = 60
STATUSES = ("succeeded", "failed", "skipped", "upstream_failed")
RULES = (
    *(["all_success"] * 8),
    "all_failed",
    "all_done",
    "all_skipped",
    "one_success",
    "one_failed",
    "one_done",
    "none_failed",
    "none_skipped",
    "none_failed_min_one_success",
    "always",
)


class Choices(Protocol):
    """Where every random choice comes from: hypothesis' draws or a seeded generator."""

    def integer(self, low: int, high: int) -> int: ...


class DrawnChoices:
    """Choices drawn from hypothesis one by one (shrinkable)."""

    def __init__(self, draw: Callable[[st.SearchStrategy[int]], int]) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return low if low == high else self._draw(st.integers(low, high))


class SeededChoices:
    """Choices from a generator seeded by one hypothesis draw (for large sessions)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)


def _pick(choices: Choices, among: list[str]) -> str:
    return among[choices.integer(0, len(among) - 1)]


# -- DAGs ---------------------------------------------------------------------------------


def _parents(choices: Choices, earlier: list[str]) -> tuple[str, ...]:
    """Up to three parents among the last dozen jobs (so large DAGs are deep too)."""
    window = earlier[-12:]
    if not window:
        return ()
    picked: list[str] = []
    for _ in range(choices.integer(0, min(3, len(window)))):
        parent = _pick(choices, window)
        if parent not in picked:
            picked.append(parent)
    return tuple(picked)


def _condition(choices: Choices, upstream: list[str], plain: list[str]) -> Condition | None:
    if choices.integer(0, 99) < 75:
        return None
    kinds = [Kind.LITERAL, Kind.NULL, Kind.PARAMETER]
    if upstream:
        kinds.append(Kind.STATUS)
    if plain:  # jobs.<a>.output and plain names need an upstream job that is not a fan-out
        kinds += [Kind.OUTPUT, Kind.NAME, Kind.NUMBER]
    kind = kinds[choices.integer(0, len(kinds) - 1)]
    if kind is Kind.LITERAL:
        return Condition(kind, value=choices.integer(0, 1) == 1)
    if kind is Kind.NULL:
        return Condition(kind)
    if kind is Kind.PARAMETER or kind is Kind.NAME:
        return Condition(kind, value=choices.integer(0, 9))
    if kind is Kind.STATUS:
        return Condition(kind, _pick(choices, upstream), STATUSES[choices.integer(0, 3)])
    if kind is Kind.OUTPUT:
        return Condition(kind, _pick(choices, plain), choices.integer(0, 9))
    return Condition(kind, _pick(choices, plain))


def _fan_out(choices: Choices, plain: list[str]) -> FanOut | None:
    if choices.integer(0, 99) >= 15:
        return None
    limit = choices.integer(0, 2) or None
    if plain and choices.integer(0, 2) == 0:
        return FanOut(source=_pick(choices, plain), max_concurrency=limit)
    return FanOut(items=choices.integer(1, MAX_ITEMS), max_concurrency=limit)


def build_dag(choices: Choices, size: int) -> Dag:
    """A random DAG of ``size`` jobs, listed parents first."""
    jobs: list[Job] = []
    ancestors: dict[str, set[str]] = {}
    fan_outs: set[str] = set()
    order: dict[str, int] = {}
    for index in range(size):
        job_id = f"j{index}"
        parents = _parents(choices, [job.id for job in jobs])
        rule = RULES[choices.integer(0, len(RULES) - 1)]
        upstream_set = set(parents).union(*(ancestors[p] for p in parents))
        upstream = sorted(upstream_set, key=order.__getitem__)
        plain = [a for a in upstream if a not in fan_outs]
        fan = _fan_out(choices, plain)
        condition = _condition(choices, upstream, plain)
        retries = (0, 0, 1, 2, 3)[choices.integer(0, 4)]
        timeout = choices.integer(0, 3) == 0
        reads = _pick(choices, plain) if plain and choices.integer(0, 9) == 0 else None
        jobs.append(Job(job_id, parents, rule, condition, retries, timeout, reads, fan))
        ancestors[job_id] = upstream_set
        order[job_id] = index
        if fan is not None:
            fan_outs.add(job_id)
    limit = choices.integer(1, 4) if choices.integer(0, 4) == 0 else None
    return Dag(tuple(jobs), limit, choices.integer(0, 9))


def _plans(choices: Choices, job: Job) -> tuple[Plan, ...]:
    """The attempts of one run, up to its first success (or all of them failing).

    Out of 100: 72 succeed; 12 fail (2 of them by a statusCode 500 result); 4 are
    refused by the service; with a timeout, 12 time out (a third of them complete late),
    else 12 more fail.
    """
    plans: list[Plan] = []
    for _ in range(job.retries + 1):
        roll = choices.integer(0, 99)
        if roll < 72:
            fast = choices.integer(0, 6) == 0
            value, width = choices.integer(0, 9), choices.integer(1, 3)
            plans.append(Plan(Attempt.OK, value, width, fast))
            break
        if roll < 84 or (roll >= 88 and not job.timeout):
            outcome = Attempt.FAIL_RESULT if roll in (82, 83) else Attempt.FAIL
            plans.append(Plan(outcome, fast=choices.integer(0, 6) == 0))
        elif roll < 88:
            plans.append(Plan(Attempt.REFUSED))
        else:
            plans.append(Plan(Attempt.TIMEOUT if roll < 96 else Attempt.LATE))
    return tuple(plans)


def build_script(choices: Choices, dag: Dag) -> dict[str, tuple[Plan, ...]]:
    """What every attempt of every run that may exist will do."""
    script: dict[str, tuple[Plan, ...]] = {}
    for job in dag.jobs:
        if job.fan_out is None:
            script[job.id] = _plans(choices, job)
            continue
        width = job.fan_out.items if job.fan_out.items is not None else 3
        for index in range(width):
            script[item_key(job.id, index)] = _plans(choices, job)
    return script


@dataclass(frozen=True)
class Case:
    """One example: a DAG, its script, and how its schedule is chosen."""

    dag: Dag
    script: Script
    seed: int | None
    """None: the DAG was drawn choice by choice; else the seed it was made from."""

    def __repr__(self) -> str:
        plans = {key: [p.outcome.value for p in plans] for key, plans in self.script.items()}
        return f"Case(seed={self.seed},\n{pipeline_text(self.dag)}\nscript={plans})"


@st.composite
def cases(draw: Any, max_jobs: int) -> Case:
    """Most DAGs small (1 to 12 jobs), some mid-sized, a few large, some ``max_jobs``.

    The thresholds allow for hypothesis drawing small integers more often than large
    ones: about 80 % of examples are small, 15 % mid-sized and 5 % larger than 60 jobs.
    """
    bucket = draw(st.integers(0, 99))
    if bucket < 70:
        size = draw(st.integers(1, 12))
    elif bucket < 88:
        size = draw(st.integers(13, min(60, max_jobs)))
    elif bucket < 95:
        size = draw(st.integers(min(61, max_jobs), max_jobs))
    else:
        size = max_jobs
    seed: int | None = None
    choices: Choices = DrawnChoices(draw)
    if size > DRAWN_UP_TO:
        seed = draw(st.integers(0, 2**32 - 1))
        choices = SeededChoices(seed)
    dag = build_dag(choices, size)
    return Case(dag, build_script(choices, dag), seed)


# -- the pipeline as the engine reads it --------------------------------------------------


def _condition_text(condition: Condition) -> bool | str:
    kind, target, value = condition.kind, condition.target, condition.value
    if kind is Kind.LITERAL:
        return bool(value)
    return {
        Kind.NULL: "${null}",
        Kind.PARAMETER: f"${{{PARAMETER} >= {value}}}",
        Kind.OUTPUT: f"${{default(jobs.{target}.output.v, -1) >= {value}}}",
        Kind.STATUS: f"${{jobs.{target}.status == '{value}'}}",
        Kind.NAME: f"${{v >= {value}}}",
        Kind.NUMBER: f"${{default(jobs.{target}.output.v, 1)}}",
    }[kind]


def _job_document(job: Job) -> dict[str, Any]:
    command = "run" + (" ${item}" if job.fan_out else "")
    if job.reads is not None:
        command += f" ${{jobs.{job.reads}.output.v}}"
    doc: dict[str, Any] = {
        "id": job.id,
        "type": "custom",
        "parameters": {"command": command},
        "retries": job.retries,
        "retry_delay": 1,
    }
    if job.parents:
        doc["depends_on"] = list(job.parents)
    if job.rule != "all_success":
        doc["trigger_rule"] = job.rule
    if job.condition is not None:
        doc["condition"] = _condition_text(job.condition)
    if job.timeout:
        doc["timeout"] = TIMEOUT
    fan = job.fan_out
    if fan is not None:
        listed = f"${{jobs.{fan.source}.output.items}}"
        doc["for_each"] = {"items": list(range(fan.items)) if fan.items is not None else listed}
        if fan.max_concurrency:
            doc["for_each"]["max_concurrency"] = fan.max_concurrency
    return doc


def pipeline_text(dag: Dag) -> str:
    """The pipeline as JSON text (which the loader reads as YAML), one job a line."""
    head: dict[str, Any] = {
        "version": "1.1",
        "name": "chaos",
        "parameters": [{"name": PARAMETER, "type": "integer", "default": dag.parameter}],
    }
    if dag.max_concurrency:
        head["max_concurrency"] = dag.max_concurrency
    jobs = ",\n  ".join(json.dumps(_job_document(job)) for job in dag.jobs)
    return json.dumps(head)[:-1] + ',\n "jobs": [\n  ' + jobs + "\n]}"


# -- the world ----------------------------------------------------------------------------

Gate = tuple[str, str, int]
"""(``done`` or ``timeout``, run key, attempt): what must have been handled first."""


@dataclass
class Delivery:
    """One copy of an event in the pool; ``gate`` holds it back until that was handled."""

    event: Event
    gate: Gate | None = None


@dataclass
class Stats:
    """What the suite ran: the figures a long run prints."""

    schedules: int = 0
    jobs: int = 0
    runs: int = 0
    max_jobs: int = 0
    dispatches: int = 0
    events: int = 0
    duplicates: int = 0
    batches: int = 0
    concurrent: int = 0
    fast: int = 0
    refused: int = 0
    timeouts: int = 0
    late: int = 0

    def line(self, store: str) -> str:
        return (
            f"delivery chaos on {store}: {self.schedules} schedules, {self.jobs} jobs "
            f"({self.runs} runs; largest DAG {self.max_jobs} jobs), {self.dispatches} dispatches, "
            f"{self.events} events delivered ({self.duplicates} duplicates; "
            f"{self.concurrent} of {self.batches} batches concurrent), "
            f"{self.fast} completions before their dispatch returned, {self.refused} refused "
            f"dispatches, {self.timeouts} timeouts, {self.late} late completions"
        )


def _completion(order: Dispatch, plan: Plan) -> AttemptFinished | None:
    """The event the service sends when the attempt ends (None: it never does)."""
    handle = f"work-{order.attempt}" if order.attempt % 2 else None
    args = (order.session_id, order.key, order.attempt, T0)
    if plan.outcome in (Attempt.OK, Attempt.LATE):
        return AttemptFinished(*args, result=plan.output(), handle=handle)
    if plan.outcome is Attempt.FAIL:
        return AttemptFinished(*args, error=f"attempt {order.attempt} failed", handle=handle)
    if plan.outcome is Attempt.FAIL_RESULT:
        return AttemptFinished(*args, result={"statusCode": 500, "body": '{"why": "bad"}'})
    return None


def _sort_key(made: tuple[Event, int, Gate | None]) -> str:
    return f"{type(made[0]).__name__} {made[0]!r}"


class World:
    """The services and timers of one session, shared by every reducer handling it.

    Dispatches and timers may come from any reducer thread; the main thread
    turns what they produced into copies in the pool after each batch, in a
    canonical order, so a schedule's choices replay the same way.
    """

    def __init__(self, script: Script, stats: Stats) -> None:
        self.script = script
        self.stats = stats
        self.claims: Counter[tuple[str, int]] = Counter()
        self.errors: list[str] = []
        self.handled: set[Gate] = set()
        self._made: list[tuple[Event, int, Gate | None]] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    # -- Dispatcher and Timers

    def dispatch(self, order: Dispatch) -> str | None:
        with self._lock:
            self.claims[(order.key, order.attempt)] += 1
            self.stats.dispatches += 1
        plans = self.script.get(order.key, ())
        if order.attempt > len(plans):
            with self._lock:
                self.errors.append(f"{order.key} dispatched beyond its attempts: {order.attempt}")
            return None
        plan = plans[order.attempt - 1]
        if plan.outcome is Attempt.REFUSED:
            with self._lock:
                self.stats.refused += 1
            raise DispatchFailed(f"the service refused attempt {order.attempt}")
        if plan.outcome in (Attempt.TIMEOUT, Attempt.LATE):
            with self._lock:
                self.stats.timeouts += 1
                self.stats.late += plan.outcome is Attempt.LATE
        event = _completion(order, plan)
        if event is not None:
            gate = ("timeout", order.key, order.attempt) if plan.outcome is Attempt.LATE else None
            if plan.fast and self._side() is not None:
                self._handle_now(event)
                self._made_event(event, 1, None)
            else:
                self._made_event(event, 0, gate)
        return f"h-{order.key}-{order.attempt}" if order.attempt % 2 else None

    def stop(self, run: JobRun, job_type: str) -> None:
        """Stopping work is best effort; a late completion may still come (LATE)."""

    def started(self, run: JobRun, job_type: str) -> bool | None:
        """Every start here reaches the service: its work is known once dispatched."""
        with self._lock:
            return (run.key, run.attempt) in self.claims

    def schedule(self, event: Event, at: str) -> None:
        gate: Gate | None = None
        if isinstance(event, AttemptTimedOut):
            plan = self.script[event.key][event.attempt - 1]
            # A timer fires at its due time, after a completion that came in time.
            if plan.outcome in (Attempt.OK, Attempt.FAIL, Attempt.FAIL_RESULT):
                gate = ("done", event.key, event.attempt)
        self._made_event(event, 0, gate)

    # -- the fast path: another reducer handles the completion during the dispatch call

    def serve(self, side: Reducer | None) -> None:
        """Called by a reducer thread: the reducer that handles its fast completions."""
        self._local.side = side
        self._local.depth = 0

    def _side(self) -> Reducer | None:
        """The other reducer, unless this thread is already inside a fast completion."""
        side = getattr(self._local, "side", None)
        return side if side is not None and self._local.depth == 0 else None

    def _handle_now(self, event: AttemptFinished) -> None:
        side = self._side()
        assert side is not None
        self._local.depth += 1
        try:
            side.handle(event)
        except Exception as exc:  # surfaced by the test, not to the dispatching reducer
            with self._lock:
                self.errors.append(f"fast completion of {event.key}: {exc!r}")
        finally:
            self._local.depth -= 1
        with self._lock:
            self.handled.add(("done", event.key, event.attempt))
            self.stats.fast += 1

    def emit(self, event: Event) -> None:
        """An event from outside the services (the session's start)."""
        self._made_event(event, 0, None)

    def _made_event(self, event: Event, delivered: int, gate: Gate | None) -> None:
        with self._lock:
            self._made.append((event, delivered, gate))

    def take(self) -> list[tuple[Event, int, Gate | None]]:
        """What the last batch produced, in a canonical order."""
        with self._lock:
            made, self._made = self._made, []
        return sorted(made, key=_sort_key)


def handled_gate(event: Event) -> Gate | None:
    """What handling ``event`` opens."""
    if isinstance(event, AttemptFinished):
        return ("done", event.key, event.attempt)
    if isinstance(event, AttemptTimedOut):
        return ("timeout", event.key, event.attempt)
    return None


class Reducers:
    """Reducer threads: each handles one event of a batch, all released at once."""

    def __init__(self, reducers: list[tuple[Reducer, Reducer | None]], world: World) -> None:
        self._inboxes: list[list[Any]] = []
        self._threads: list[threading.Thread] = []
        self._ready = threading.Condition()
        self._done = 0
        self.errors: list[BaseException] = []
        for main, side in reducers:
            inbox: list[Any] = []
            self._inboxes.append(inbox)
            thread = threading.Thread(target=self._work, args=(inbox, main, side, world))
            thread.daemon = True
            self._threads.append(thread)
            thread.start()

    def _work(self, inbox: list[Any], main: Reducer, side: Reducer | None, world: World) -> None:
        world.serve(side)
        while True:
            with self._ready:
                self._ready.wait_for(lambda: bool(inbox))
                task = inbox.pop()
            if task is None:
                return
            event, barrier = task
            try:
                barrier.wait(timeout=60)
                main.handle(event)
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)
            with self._ready:
                self._done += 1
                self._ready.notify_all()

    def handle(self, events: list[Event]) -> None:
        """Handle the events at the same moment, one per thread; return when all are done."""
        barrier = threading.Barrier(len(events))
        with self._ready:
            self._done = 0
            for inbox, event in zip(self._inboxes, events, strict=False):
                inbox.append((event, barrier))
            self._ready.notify_all()
            if not self._ready.wait_for(lambda: self._done == len(events), timeout=120):
                raise TimeoutError("a reducer did not finish its event within 120 s")

    def close(self) -> None:
        with self._ready:
            for inbox in self._inboxes:
                inbox.append(None)
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)


def deliver(world: World, choices: Choices, reducers: Reducers, limit: int) -> int:
    """Deliver every event until none is left: copies, order and batches from ``choices``.

    Returns:
        How many events were handled.

    Raises:
        AssertionError: more than ``limit`` events (the session never settles), or
            events held back forever (a completion that was never handled).
    """
    pool: list[Delivery] = []
    delivered = 0
    while True:
        for event, already, gate in world.take():
            copies = choices.integer(1, 3)
            world.stats.events += copies
            world.stats.duplicates += copies - 1
            pool.extend(Delivery(event, gate) for _ in range(copies - already))
        ready = [i for i, d in enumerate(pool) if d.gate is None or d.gate in world.handled]
        if not ready:
            break
        batch: list[int] = []
        for _ in range(choices.integer(1, min(WORKERS, len(ready)))):
            batch.append(ready.pop(choices.integer(0, len(ready) - 1)))
        events = [pool[i].event for i in batch]
        taken = set(batch)
        pool = [d for i, d in enumerate(pool) if i not in taken]
        reducers.handle(events)
        world.stats.batches += 1
        world.stats.concurrent += len(events) > 1
        for event in events:
            opened = handled_gate(event)
            if opened is not None:
                world.handled.add(opened)
        delivered += len(events)
        if delivered > limit:
            raise AssertionError(f"{delivered} events delivered and the session goes on")
    if pool:
        raise AssertionError(f"events held back forever: {[d.event for d in pool][:5]}")
    return delivered
