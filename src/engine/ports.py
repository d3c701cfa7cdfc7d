"""The ports: what the engine needs from the world, as protocols both backends implement.

The local backend implements them on SQLite, an in-process queue, threads
and subprocesses; the AWS backend on DynamoDB, EventBridge, Scheduler and
the services' APIs. The reducer is written against these alone.

Every write the reducer relies on for correctness is conditional and
idempotent, so two reducers handling events of one session at once, or the
same event twice, cannot both win:

- :meth:`Store.count_edge` counts an edge at most once, and exactly one
  caller sees the count reach ``expected``;
- :meth:`Store.transition` applies a change only if the run is still in the
  status (and attempt) the caller saw;
- :meth:`Store.acquire_slot` never lets more than ``limit`` holders in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.events import Event, HistoryEntry
from engine.state import JobRun, JobStatus, Outcome, Session, SessionStatus


class Store(Protocol):
    """Sessions, job runs and history."""

    def create_session(self, session: Session) -> None:
        """Write a new session (its id is new; raises Conflict if it exists)."""

    def get_session(self, session_id: str) -> Session:
        """The session (raises SessionNotFound)."""

    def set_session_status(
        self,
        session_id: str,
        expect: set[SessionStatus],
        status: SessionStatus,
        changes: Mapping[str, Any] | None = None,
    ) -> Session | None:
        """Change the status if it is one of ``expect``; None when it was not."""

    def count_finished(self, session_id: str, failed: bool) -> Session:
        """Atomically add one finished run (and one failed, if so); the updated session."""

    def recount(self, session_id: str) -> Session:
        """Set ``finished``/``failed`` from the job runs themselves (a repair after a crash
        between ending a run and counting it)."""

    def sessions(
        self,
        pipeline: str | None = None,
        statuses: set[SessionStatus] | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """Sessions, newest first, optionally of one pipeline and in some statuses."""

    def acquire_slot(self, session_id: str, scope: str | None, limit: int) -> bool:
        """Take one of ``limit`` running slots of the session (scope None) or of a fan-out.

        Slots are counted, not owned: the reducer releases one exactly once, after
        the conditional write that ends (or loses) the attempt holding it. A reducer
        that dies in between leaks the slot until the session ends (a sweeper's job).
        """

    def release_slot(self, session_id: str, scope: str | None) -> None:
        """Give back a slot taken by :meth:`acquire_slot`."""

    def put_run(self, run: JobRun) -> bool:
        """Write a run if no run has its key yet; whether it was written."""

    def put_new_runs(self, runs: Sequence[JobRun]) -> None:
        """Write runs no one else writes yet, in as few requests as the store allows:
        a session's root jobs when it is created (before any event of it is handled),
        a fan-out's items when its claim first expands it. Unconditional."""

    def get_run(self, session_id: str, key: str) -> JobRun | None: ...

    def transition(
        self,
        session_id: str,
        key: str,
        expect: set[JobStatus],
        changes: Mapping[str, Any],
        attempt: int | None = None,
    ) -> JobRun | None:
        """Apply ``changes`` if the run's status is in ``expect`` (and its attempt is
        ``attempt``, when given); the updated run, or None when the condition failed."""

    def count_edge(
        self,
        session_id: str,
        key: str,
        job_id: str,
        index: int | None,
        edge: str,
        outcome: Outcome,
        expected: int,
        position: int | None = None,
    ) -> JobRun | None:
        """Record that ``edge`` (a parent job id, or a fan-out item ``[i]``) finished.

        Creates the run (status WAITING, with ``expected``) if it has no record
        yet; ``expected`` is ignored for a run that exists (a fan-out sets its
        own when it claims its items). Idempotent: returns None when this edge
        was counted before, so exactly one caller sees ``done == expected``; that
        caller's run carries every outcome in ``parents_done`` (as :class:`Outcome`),
        the others' only the count. ``position`` is a parent's place among the
        run's ``expected`` parents (:meth:`engine.graph.Graph.position`), the same
        for every count of the edge: a store may count a wide join in parts by it.
        """

    def expect_items(self, session_id: str, key: str, count: int) -> None:
        """The fan-out run ``key`` is about to count ``count`` items ``[0]`` to
        ``[count - 1]``: called once its items are claimed, before any is counted, and
        again (harmless) by a sweeper that expands it again. A store may prepare to
        count them in parts, so that no one record grows with the fan-out's width."""

    def runs(
        self,
        session_id: str,
        statuses: set[JobStatus] | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[JobRun]:
        """Runs of a session ordered by job id then item index (display, cancel, queues)."""

    def delete_runs(self, session_id: str, keys: Sequence[str]) -> None:
        """Forget runs (a session retry re-runs them)."""

    def append_history(self, entry: HistoryEntry) -> None: ...

    def history(self, session_id: str, after: int = 0) -> list[tuple[int, HistoryEntry]]:
        """The session's history entries after sequence number ``after``."""


@dataclass(frozen=True)
class Dispatch:
    """An order to start one attempt of a run.

    Attributes:
        dispatch_id: ``session/key/attempt``: the same for a re-sent order,
            so a service (or a job's own code) can de-duplicate.
    """

    session_id: str
    key: str
    job_id: str
    job_type: str
    attempt: int
    inputs: Mapping[str, Any]
    timeout: float | None
    dispatch_id: str


class Dispatcher(Protocol):
    """Starts and stops work; results come back later as AttemptFinished events."""

    def dispatch(self, order: Dispatch) -> str | None:
        """Start the work; the service's handle for it (to stop it), if any.

        Raises:
            DispatchFailed: the work could not be started (counts as a failed attempt).
        """

    def stop(self, run: JobRun, job_type: str) -> None:
        """Stop the run's current attempt where the service allows it (best effort).

        The run carries what finds the work: its ``handle`` when the dispatcher
        returned one, else its session, key and attempt (the dispatch id) and the
        ``inputs`` it was dispatched with (cluster, state machine, queue...).
        """

    def started(self, run: JobRun, job_type: str) -> bool | None:
        """Whether the service has any trace of the run's current attempt's work, in any
        state: True or False where a lookup can tell, None where it cannot (an
        asynchronous Lambda invocation leaves nothing to look up).

        The sweeper asks this of an attempt that has been running without a result
        for a long time, to tell work whose start was lost (a reducer died between
        claiming the attempt and starting it) from work that is still running.
        """


class Secrets(Protocol):
    """Where the values of ``secret: true`` parameters live, out of the store.

    The store keeps ``******`` in their place, so neither the session record,
    the runs' recorded inputs nor the history ever hold a secret.
    """

    def put(self, session_id: str, values: Mapping[str, Any]) -> None: ...

    def get(self, session_id: str) -> Mapping[str, Any]: ...


class Timers(Protocol):
    """Puts an event back to the reducer at a time (a retry, a timeout)."""

    def schedule(self, event: Event, at: str) -> None: ...
