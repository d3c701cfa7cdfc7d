"""A harness that plays the world's part for the reducer: dispatches are recorded,
results and timers are delivered when a test says so (twice, late, out of order)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.events import AttemptFinished, Event
from engine.loader import load_pipeline
from engine.local.store import SqliteStore
from engine.parameters import resolve_parameters
from engine.pipeline import Pipeline
from engine.ports import Dispatch
from engine.reducer import Reducer, later
from engine.state import JobRun, JobStatus, SessionStatus

T0 = "2026-01-01T00:00:00+00:00"


@dataclass
class Recorder:
    """Dispatcher and Timers in one: remembers what the reducer asked for."""

    orders: list[Dispatch] = field(default_factory=list)
    stopped: list[tuple[str, str | None]] = field(default_factory=list)
    timers: list[tuple[str, Event]] = field(default_factory=list)
    fail_dispatch: set[str] = field(default_factory=set)

    def dispatch(self, order: Dispatch) -> str | None:
        from engine.errors import DispatchFailed

        if order.job_id in self.fail_dispatch:
            raise DispatchFailed(f"cannot start {order.job_id}")
        self.orders.append(order)
        return f"handle-{order.key}-{order.attempt}"

    def stop(self, run: JobRun, job_type: str) -> None:
        self.stopped.append((run.key, run.handle))

    def started(self, run: JobRun, job_type: str) -> bool:
        """Whether this attempt's work was started (a service that can be asked)."""
        return any((o.key, o.attempt) == (run.key, run.attempt) for o in self.orders)

    def schedule(self, event: Event, at: str) -> None:
        self.timers.append((at, event))


class Harness:
    """One session of one pipeline on a fresh store."""

    def __init__(
        self, text: str, parameters: dict[str, Any] | None = None, store: Any = None
    ) -> None:
        self.pipeline: Pipeline = load_pipeline(text)
        self.store = store or SqliteStore(":memory:")
        self.world = Recorder()
        self.reducer = Reducer(self.store, self.world, self.world, lambda name, v: self.pipeline)
        self.now = T0
        values = resolve_parameters(self.pipeline.parameters, parameters or {})
        self.session_id = "s-1"
        self.reducer.start(self.pipeline, 1, values, self.session_id, self.now)

    # -- time and events
    def tick(self, seconds: float = 1.0) -> str:
        self.now = later(self.now, seconds)
        return self.now

    def fire_timers(self) -> int:
        """Deliver every timer due by now, oldest first; how many fired."""
        due = sorted((t for t in self.world.timers if t[0] <= self.now), key=lambda t: t[0])
        self.world.timers = [t for t in self.world.timers if t[0] > self.now]
        for _, event in due:
            self.reducer.handle(event)
        return len(due)

    def finish(
        self, key: str, result: Any = None, error: str | None = None, attempt: int | None = None
    ) -> None:
        run = self.store.get_run(self.session_id, key)
        number = attempt if attempt is not None else (run.attempt if run else 1)
        self.reducer.handle(
            AttemptFinished(self.session_id, key, number, self.tick(), result, error)
        )

    # -- reading
    def status(self, key: str) -> JobStatus | None:
        run = self.store.get_run(self.session_id, key)
        return run.status if run else None

    def run(self, key: str):
        return self.store.get_run(self.session_id, key)

    def session_status(self) -> SessionStatus:
        return self.store.get_session(self.session_id).status

    def dispatched(self) -> list[str]:
        return [order.key for order in self.world.orders]

    def running(self) -> list[str]:
        return [
            r.key
            for r in self.store.runs(self.session_id, {JobStatus.RUNNING})
            if not (r.index is None and self.pipeline.job(r.job_id).fan_out)
        ]
