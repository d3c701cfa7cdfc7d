"""The reducer: takes one event of a session, records it, and drives the graph on.

This is the design card's loop. For an attempt that finished it records the
outcome (a conditional write), counts the edge to each child (idempotent),
decides every child whose parents are now all done — trigger rule,
condition, ``${...}`` inputs — claims it (conditional write) and dispatches
it; when every job is terminal it closes the session. Nothing here waits,
polls, reads a clock or draws a random number: time comes with the event,
jitter from a hash of (session, run, attempt).

Every step tolerates the event arriving twice, late, or while another
reducer handles another event of the same session: a step whose condition
fails has lost a race (or is a duplicate) and does nothing more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from engine.errors import (
    DispatchFailed,
    ExpressionError,
    InputTooLarge,
    OutputTooLarge,
)
from engine.events import (
    AttemptFinished,
    AttemptTimedOut,
    CancelRequested,
    Event,
    HistoryEntry,
    PauseRequested,
    ResumeRequested,
    RetryDue,
    SessionStarted,
    SessionTimedOut,
)
from engine.expressions import truth
from engine.inputs import fan_out_items, job_inputs
from engine.parameters import REDACTED, redacted
from engine.pipeline import JobBase, Pipeline
from engine.ports import Dispatch, Dispatcher, Secrets, Store, Timers
from engine.recovery import Recovery
from engine.scope import Context, MemorySecrets, RunScope
from engine.semantics import Readiness, read_result, retry_delay, trigger
from engine.state import (
    TERMINAL_JOB,
    JobRun,
    JobStatus,
    Outcome,
    Session,
    SessionStatus,
    run_key,
)
from engine.templates import parse_condition

PipelineSource = Callable[[str, int], Pipeline]
"""Gives the pinned pipeline version of a session: (name, version) -> Pipeline."""

_LIVE = {SessionStatus.RUNNING, SessionStatus.PAUSED}
_DRAIN_LOOKAHEAD = 20


def later(now: str, seconds: float) -> str:
    """The ISO time ``seconds`` after ``now``."""
    return (datetime.fromisoformat(now) + timedelta(seconds=seconds)).isoformat()


def _uniform(*parts: object) -> float:
    """A reproducible draw from [0, 1): retries of one attempt always get the same jitter."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Reducer(Recovery):
    """Handles events of sessions against the ports.

    Args:
        store: Sessions, runs and history.
        dispatcher: Starts and stops work.
        timers: Brings retry and timeout events back.
        pipelines: The pinned pipeline of a session.
    """

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        timers: Timers,
        pipelines: PipelineSource,
        secrets: Secrets | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.timers = timers
        self.pipelines = pipelines
        self.secrets = secrets if secrets is not None else MemorySecrets()

    def _keep(self, session_id: str, pipeline: Pipeline, values: Mapping[str, Any]) -> dict:
        """Put the secret values aside; what the store gets has ``******`` in their place."""
        # A value still masked (a retry re-sending the stored parameters) keeps the
        # secret already kept.
        hidden = {
            p.name
            for p in pipeline.parameters
            if p.secret and p.name in values and values[p.name] != REDACTED
        }
        if hidden:
            self.secrets.put(session_id, {name: values[name] for name in hidden})
        return dict(redacted(pipeline.parameters, values))

    # ------------------------------------------------------------------ entry points

    def create(
        self,
        pipeline: Pipeline,
        version: int,
        parameters: Mapping[str, Any],
        session_id: str,
        now: str,
    ) -> Session:
        """Write a new session without starting anything: a SessionStarted event starts it.

        Args:
            pipeline: The pipeline (already validated).
            version: The stored version it is; the session pins it.
            parameters: Checked parameter values (``resolve_parameters``).
            session_id: A new id.
            now: The time, ISO-8601.
        """
        session = Session(
            id=session_id,
            pipeline=pipeline.name,
            version=version,
            parameters=self._keep(session_id, pipeline, parameters),
            total=len(pipeline.jobs),
            created_at=now,
        )
        self.store.create_session(session)
        # The root jobs' runs, in one batch: a child's run is made by its first parent's
        # edge count, so no job costs a write of its own to come into being.
        self.store.put_new_runs(
            [JobRun(session_id, job_id, job_id) for job_id in pipeline.graph.roots()]
        )
        self._history(session_id, now, "session_started", detail={"version": version})
        if pipeline.timeout:
            due = later(now, pipeline.timeout)
            self.timers.schedule(SessionTimedOut(session_id, due), due)
        return session

    def start(
        self,
        pipeline: Pipeline,
        version: int,
        parameters: Mapping[str, Any],
        session_id: str,
        now: str,
    ) -> Session:
        """:meth:`create` a session and dispatch its root jobs at once."""
        self.create(pipeline, version, parameters, session_id, now)
        self.handle(SessionStarted(session_id, now))
        return self.store.get_session(session_id)

    def handle(self, event: Event) -> bool:
        """Apply one event; safe to call twice with the same event, or out of order.

        Returns:
            False when the session had ended already (the event changed nothing).
        """
        session = self.store.get_session(event.session_id)
        if session.status.terminal:
            return False  # a late event of a finished session changes nothing
        call = Context(
            session,
            self.pipelines(session.pipeline, session.version),
            event.now,
            secrets=self.secrets,
        )
        if isinstance(event, SessionStarted):
            call.ready.extend(call.pipeline.graph.roots())
        elif isinstance(event, AttemptFinished):
            self._attempt_finished(call, event)
        elif isinstance(event, RetryDue):
            run = self.store.get_run(session.id, event.key)
            if run and run.status is JobStatus.RETRYING and run.attempt == event.attempt:
                self._start(call, run)
        elif isinstance(event, AttemptTimedOut):
            self._timed_out(call, event)
        elif isinstance(event, SessionTimedOut):
            timeout = call.pipeline.timeout or 0
            self._cancel(call, SessionStatus.FAILED, f"session timed out after {timeout:g}s")
        elif isinstance(event, CancelRequested):
            self._cancel(call, SessionStatus.CANCELLED, event.reason)
        elif isinstance(event, PauseRequested):
            if self.store.set_session_status(
                session.id, {SessionStatus.RUNNING}, SessionStatus.PAUSED
            ):
                self._history(session.id, call.now, "session_paused")
        elif isinstance(event, ResumeRequested):
            self._resume(call)
        while call.ready:
            self._decide(call, call.ready.popleft())
        return True

    # ------------------------------------------------------------------ deciding

    def _decide(self, call: Context, job_id: str) -> None:
        """A job whose parents are all done: skip it, fail it, fan it out or start it."""
        job = call.pipeline.job(job_id)
        parents = call.pipeline.graph.parents(job_id)
        run = self.store.get_run(call.session.id, job_id)
        if run is None:
            self.store.put_run(JobRun(call.session.id, job_id, job_id, expected=len(parents)))
            run = self.store.get_run(call.session.id, job_id)
        if run is None or run.status is not JobStatus.WAITING:
            return  # decided already (a duplicate delivery got here too)
        readiness = trigger(job.trigger_rule, [run.parents_done[p] for p in parents])
        if readiness is Readiness.UPSTREAM_FAILED:
            failed = [p for p in parents if run.parents_done[p] is Outcome.FAILURE]
            self._end(
                call, run, JobStatus.UPSTREAM_FAILED, reason=f"upstream failed: {', '.join(failed)}"
            )
            return
        if readiness is Readiness.SKIP:
            self._end(
                call,
                run,
                JobStatus.SKIPPED,
                reason=f"trigger rule {job.trigger_rule.value} not met",
            )
            return
        scope = RunScope(self.store, call, job, run)
        try:
            if not self._condition_holds(job, scope):
                self._end(
                    call, run, JobStatus.SKIPPED, reason=f"condition is false: {job.condition}"
                )
                return
            fan = job.fan_out
            items = fan_out_items(fan, scope) if fan is not None else None
        except ExpressionError as exc:
            self._end(call, run, JobStatus.FAILED, error=str(exc))
            return
        if items is None:
            self._start(call, run)
        else:
            self._fan_out(call, run, items)

    @staticmethod
    def _condition_holds(job: JobBase, scope: RunScope) -> bool:
        if job.condition is None:
            return True
        if isinstance(job.condition, bool):
            return job.condition
        return truth(parse_condition(job.condition).evaluate(scope), job.condition)

    def _fan_out(self, call: Context, run: JobRun, items: list[Any]) -> None:
        if not items:
            self._end(call, run, JobStatus.SUCCEEDED, reason="no items")
            return
        # Claim the fan-out before its items exist: a duplicate decision stops here.
        # The fan-out's record already counts its parents' edges; its items' edges come
        # on top, so it is complete when done == parents + items.
        claimed = self.store.transition(
            call.session.id,
            run.key,
            {JobStatus.WAITING},
            {
                "status": JobStatus.RUNNING,
                "expected": run.expected + len(items),
                "started_at": call.now,
                "updated_at": call.now,
            },
        )
        if claimed is None:
            return
        self._history(
            call.session.id, call.now, "fan_out_started", run.key, detail={"items": len(items)}
        )
        self.store.expect_items(call.session.id, run.key, len(items))
        earlier = {
            r.index: r
            for r in self.store.runs(call.session.id, job_id=run.job_id)
            if r.index is not None
        }
        if not earlier:
            # The first expansion: no one else writes these keys (a sweeper expands a
            # fan-out only after a reducer's whole run time), so one batch writes them.
            fresh = [
                JobRun(call.session.id, run_key(run.job_id, i), run.job_id, index=i, item=item)
                for i, item in enumerate(items)
            ]
            self.store.put_new_runs(fresh)
            for item_run in fresh:
                self._start(call, item_run)
            return
        self._expand_again(call, run, items, earlier)

    def _expand_again(
        self, call: Context, run: JobRun, items: list[Any], earlier: dict[int, JobRun]
    ) -> None:
        """Expand a fan-out whose items an earlier run of the session left (a retry):
        reuse them, so their attempt numbers go on. A succeeded item for the very same
        value keeps its output."""
        kept: list[JobRun] = []
        for index, item in enumerate(items):
            key = run_key(run.job_id, index)
            before = earlier.get(index)
            if before is None:
                self.store.put_run(JobRun(call.session.id, key, run.job_id, index=index, item=item))
            elif before.status is JobStatus.SUCCEEDED and before.item == item:
                kept.append(before)
            elif before.status is JobStatus.SUCCEEDED:
                self.store.transition(
                    call.session.id,
                    key,
                    {JobStatus.SUCCEEDED},
                    {
                        "status": JobStatus.WAITING,
                        "item": item,
                        "output": None,
                        "ended_at": None,
                        "base_attempt": before.attempt,
                    },
                )
            else:
                self.store.transition(call.session.id, key, {JobStatus.WAITING}, {"item": item})
        stale = [r.key for i, r in earlier.items() if i >= len(items)]
        if stale:
            self.store.delete_runs(call.session.id, stale)
        for item_run in kept:
            self._count_item(call, item_run)
        for index in range(len(items)):
            item_run = self.store.get_run(call.session.id, run_key(run.job_id, index))
            if item_run is not None and item_run.status is JobStatus.WAITING:
                self._start(call, item_run)

    # ------------------------------------------------------------------ starting

    def _start(self, call: Context, run: JobRun) -> bool:
        """Claim the next attempt of a run and dispatch it, or queue it behind a limit.

        Returns:
            Whether the run was claimed and dispatched.
        """
        if call.session.status is not SessionStatus.RUNNING:
            self._queue(call, run)
            return False
        if not self._acquire(call, run):
            if not (self._queue(call, run) and self._acquire(call, run)):
                return False
            # A slot was freed between the first try and queueing: its releaser may
            # have looked for queued runs before this one was queued, so take it now.
            queued = self.store.get_run(call.session.id, run.key)
            if queued is None or queued.status is not JobStatus.QUEUED:
                self._release(call, run)
                return False
            run = queued
        return self._claim(call, run)

    def _queue(self, call: Context, run: JobRun) -> bool:
        if run.status is JobStatus.QUEUED:
            return True
        queued = self.store.transition(
            call.session.id,
            run.key,
            {run.status},
            {"status": JobStatus.QUEUED, "updated_at": call.now},
            attempt=run.attempt,
        )
        return queued is not None

    def _limits(self, call: Context, run: JobRun) -> list[tuple[str | None, int]]:
        job = call.pipeline.job(run.job_id)
        limits: list[tuple[str | None, int]] = []
        fan = job.fan_out
        if run.index is not None and fan is not None and fan.max_concurrency:
            limits.append((run.job_id, fan.max_concurrency))
        if call.pipeline.max_concurrency:
            limits.append((None, call.pipeline.max_concurrency))
        return limits

    def _acquire(self, call: Context, run: JobRun) -> bool:
        taken: list[str | None] = []
        for scope, limit in self._limits(call, run):
            if not self.store.acquire_slot(call.session.id, scope, limit):
                for held in taken:
                    self.store.release_slot(call.session.id, held)
                return False
            taken.append(scope)
        return True

    def _release(self, call: Context, run: JobRun) -> None:
        limits = self._limits(call, run)
        for scope, _ in limits:
            self.store.release_slot(call.session.id, scope)
        call.freed.extend(scope for scope, _ in limits)
        if call.draining:
            return  # the loop below, up the stack, hands this slot on
        call.draining = True
        try:
            # Each freed slot goes to a queued run of its scope, in key order. A queued
            # run may still be held by its other limit (a fan-out's), so look a little
            # further.
            while call.freed:
                scope = call.freed.popleft()
                for queued in self.store.runs(
                    call.session.id, {JobStatus.QUEUED}, job_id=scope, limit=_DRAIN_LOOKAHEAD
                ):
                    if self._start(call, queued):
                        break
        finally:
            call.draining = False

    def _claim(self, call: Context, run: JobRun) -> bool:
        job = call.pipeline.job(run.job_id)
        try:
            inputs = job_inputs(job, RunScope(self.store, call, job, run))
            # What is recorded never holds a secret: those stay ${name} there.
            shown = (
                job_inputs(
                    job,
                    RunScope(self.store, call, job, run, hide_secrets=True),
                    keep_unresolved=True,
                )
                if call.secret_names
                else inputs
            )
        except ExpressionError as exc:
            self._end(call, run, JobStatus.FAILED, error=str(exc))
            self._release(call, run)  # after the end: the run is no longer queued
            return False
        attempt = run.attempt + 1
        changes: dict[str, Any] = {
            "status": JobStatus.RUNNING,
            "attempt": attempt,
            "inputs": shown,
            "updated_at": call.now,
            "error": None,
            "handle": None,  # the last attempt's work is not this one's
        }
        if run.started_at is None:
            changes["started_at"] = call.now
        try:
            claimed = self.store.transition(
                call.session.id, run.key, {run.status}, changes, attempt=run.attempt
            )
        except InputTooLarge as exc:  # the store cannot keep inputs this large
            self._end(call, run, JobStatus.FAILED, error=str(exc))
            self._release(call, run)
            return False
        if claimed is None:
            self._release(call, run)  # another reducer claimed this attempt
            return False
        self._history(call.session.id, call.now, "job_dispatched", run.key, attempt)
        self._arm_timeout(call, run, attempt)
        try:
            handle = self.dispatcher.dispatch(self._order(call, run, attempt, inputs))
        except DispatchFailed as exc:
            self._attempt_failed(call, claimed, str(exc))
            return True
        if handle is not None:
            self.store.transition(
                call.session.id, run.key, {JobStatus.RUNNING}, {"handle": handle}, attempt=attempt
            )
        return True

    def _arm_timeout(self, call: Context, run: JobRun, attempt: int) -> None:
        """The attempt's timeout, if its job has one, from now."""
        timeout = call.pipeline.job(run.job_id).timeout
        if timeout:
            due = later(call.now, timeout)
            self.timers.schedule(AttemptTimedOut(call.session.id, run.key, attempt, due), due)

    @staticmethod
    def _order(call: Context, run: JobRun, attempt: int, inputs: Any) -> Dispatch:
        """What the dispatcher starts for an attempt; the same order every time it is
        built for that attempt (its dispatch id is the services' idempotency token)."""
        job = call.pipeline.job(run.job_id)
        return Dispatch(
            call.session.id,
            run.key,
            run.job_id,
            str(job.type),
            attempt,
            inputs,
            job.timeout,
            f"{call.session.id}/{run.key}/{attempt}",
        )

    # ------------------------------------------------------------------ results

    def _attempt_finished(self, call: Context, event: AttemptFinished) -> None:
        run = self.store.get_run(call.session.id, event.key)
        if run is None or run.status is not JobStatus.RUNNING or run.attempt != event.attempt:
            return  # a duplicate, or the result of an attempt that timed out or was cancelled
        if event.handle is not None and run.handle is None:
            run = run.but(handle=event.handle)  # written with the outcome, in the same write
        if event.error is not None:
            self._attempt_failed(call, run, event.error)
            return
        result = read_result(event.result)
        if not result.succeeded:
            self._attempt_failed(call, run, result.error or "failed")
            return
        try:
            self._end(call, run, JobStatus.SUCCEEDED, output=result.output)
        except OutputTooLarge as exc:
            self._attempt_failed(call, run, str(exc))

    def _timed_out(self, call: Context, event: AttemptTimedOut) -> None:
        run = self.store.get_run(call.session.id, event.key)
        if run is None or run.status is not JobStatus.RUNNING or run.attempt != event.attempt:
            return
        job_type = str(call.pipeline.job(run.job_id).type)
        if run.handle is None and self.dispatcher.started(run, job_type) is False:
            # Its start was lost (a reducer died between the claim and the start): the
            # attempt never ran, so it starts now, with a new timeout, instead of failing.
            self._start_again(call, run)
            return
        self.dispatcher.stop(run, job_type)
        timeout = call.pipeline.job(run.job_id).timeout or 0
        self._attempt_failed(call, run, f"timed out after {timeout:g}s")

    def _attempt_failed(self, call: Context, run: JobRun, error: str) -> None:
        job = call.pipeline.job(run.job_id)
        this_try = run.attempt - run.base_attempt  # retries count from a session retry
        delay = retry_delay(job, this_try, _uniform(call.session.id, run.key, run.attempt))
        if delay is None:
            self._end(call, run, JobStatus.FAILED, error=error)
            return
        waiting = self.store.transition(
            call.session.id,
            run.key,
            {JobStatus.RUNNING},
            {
                "status": JobStatus.RETRYING,
                "error": error,
                "handle": run.handle,
                "updated_at": call.now,
            },
            attempt=run.attempt,
        )
        if waiting is None:
            return
        self._history(
            call.session.id,
            call.now,
            "job_retrying",
            run.key,
            run.attempt,
            {"error": error, "delay": delay},
        )
        due = later(call.now, delay)
        self.timers.schedule(RetryDue(call.session.id, run.key, run.attempt, due), due)
        self._release(call, run)

    # ------------------------------------------------------------------ ending

    def _end(
        self,
        call: Context,
        run: JobRun,
        status: JobStatus,
        *,
        output: Any = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Make a run terminal, then count it where it counts: its fan-out or its children."""
        if run.status.terminal:
            return  # an ended run never changes; counting it twice would corrupt the counts
        ended = self.store.transition(
            call.session.id,
            run.key,
            {run.status},
            {
                "status": status,
                "output": output,
                "error": error,
                "reason": reason,
                "handle": run.handle,
                "ended_at": call.now,
                "updated_at": call.now,
            },
            attempt=run.attempt,
        )
        if ended is None:
            return  # lost to another reducer, or a duplicate
        self._history(
            call.session.id,
            call.now,
            f"job_{status.value}",
            run.key,
            run.attempt,
            {k: v for k, v in (("error", error), ("reason", reason)) if v},
        )
        if run.status is JobStatus.RUNNING and not (
            run.index is None and call.pipeline.job(run.job_id).fan_out
        ):
            self._release(call, run)
        if run.index is not None:
            self._count_item(call, ended)
            return
        session = self.store.count_finished(call.session.id, failed=status is JobStatus.FAILED)
        graph = call.pipeline.graph
        for child in graph.children(run.job_id):
            edge = self._count_parent(call.session.id, graph, run.job_id, child, status)
            if edge is not None and edge.done == edge.expected:
                call.ready.append(child)
        if session.finished >= session.total:
            self._close(call, session)

    def _count_item(self, call: Context, item: JobRun) -> None:
        fan = self.store.count_edge(
            call.session.id,
            item.job_id,
            item.job_id,
            None,
            f"[{item.index}]",
            Outcome.of(item.status),
            0,
        )
        if fan is None:
            # Counted before: by a duplicate, or by a reducer that died before ending
            # the fan-out. Ending it again is safe: _end is a conditional write.
            fan = self.store.get_run(call.session.id, item.job_id)
            if fan is None or fan.status is not JobStatus.RUNNING:
                return
        if fan.done < fan.expected:
            return
        # Item edges are "[i]"; the others are the fan-out's parents, all succeeded.
        failed = sorted(
            (k for k, v in fan.parents_done.items() if k[0] == "[" and v is not Outcome.SUCCESS),
            key=lambda k: int(k[1:-1]),
        )
        if failed:
            total = fan.expected - call.pipeline.graph.in_degree(fan.job_id)
            shown = ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
            self._end(
                call,
                fan,
                JobStatus.FAILED,
                error=f"{len(failed)} of {total} items failed: {shown}",
            )
        else:
            self._end(call, fan, JobStatus.SUCCEEDED)

    def _close(self, call: Context, session: Session) -> None:
        status = SessionStatus.FAILED if session.failed else SessionStatus.SUCCEEDED
        closed = self.store.set_session_status(session.id, _LIVE, status, {"ended_at": call.now})
        if closed is not None:
            self._history(session.id, call.now, f"session_{status.value}")

    def _cancel(self, call: Context, final: SessionStatus, reason: str) -> None:
        if self.store.set_session_status(call.session.id, _LIVE, SessionStatus.CANCELLING) is None:
            return
        live = set(JobStatus) - TERMINAL_JOB
        for run in self.store.runs(call.session.id, live):
            if run.status is JobStatus.RUNNING:
                self.dispatcher.stop(run, str(call.pipeline.job(run.job_id).type))
            cancelled = self.store.transition(
                call.session.id,
                run.key,
                {run.status},
                {
                    "status": JobStatus.CANCELLED,
                    "reason": reason,
                    "ended_at": call.now,
                    "updated_at": call.now,
                },
            )
            if cancelled is not None:
                self._history(
                    call.session.id,
                    call.now,
                    "job_cancelled",
                    run.key,
                    run.attempt,
                    {"reason": reason},
                )
        self.store.recount(call.session.id)  # cancelled runs count as finished
        self.store.set_session_status(
            call.session.id,
            {SessionStatus.CANCELLING},
            final,
            {"ended_at": call.now, "reason": reason},
        )
        self._history(
            call.session.id, call.now, f"session_{final.value}", detail={"reason": reason}
        )

    def _resume(self, call: Context) -> None:
        resumed = self.store.set_session_status(
            call.session.id, {SessionStatus.PAUSED}, SessionStatus.RUNNING
        )
        if resumed is None:
            return
        call.session = resumed
        self._history(call.session.id, call.now, "session_resumed")
        for run in self.store.runs(call.session.id, {JobStatus.QUEUED}):
            self._start(call, run)

    def _history(
        self,
        session_id: str,
        at: str,
        kind: str,
        key: str | None = None,
        attempt: int | None = None,
        detail: Any = None,
    ) -> None:
        self.store.append_history(HistoryEntry(session_id, at, kind, key, attempt, detail))


__all__ = ["PipelineSource", "Reducer", "later"]
