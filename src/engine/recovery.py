"""Recovery: driving on after a crash (repair) and re-running a failed session (retry).

A mixin of :class:`engine.reducer.Reducer`: each step here is one the reducer
takes anyway (its conditional writes and idempotent edge counts), applied to
what a session's records say, so a repair of a healthy session changes
nothing and a retry never runs a succeeded job again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import Conflict
from engine.events import AttemptFinished
from engine.scope import Context
from engine.state import TERMINAL_JOB, JobStatus, Outcome, Session, SessionStatus


class Recovery:
    """``repair`` and ``retry`` for the reducer (they use its ports and steps)."""

    def repair(self, session_id: str, now: str, lost: str) -> None:
        """Drive on a session left half-done by a reducer or driver that died.

        Every step is one the reducer would have taken and is idempotent, so a
        repair of a healthy session changes nothing: attempts that were running
        when the driver died count as failed (``lost`` is their error) and retry
        if they may; retries whose timers were lost are due now; edges of
        finished runs are counted again (counted ones are ignored) and ready
        jobs decided; queued runs get a chance at a free slot; the counters
        are recounted, and the session closed if every job is done.
        """
        session = self.store.get_session(session_id)
        if session.status.terminal:
            return
        call = Context(
            session, self.pipelines(session.pipeline, session.version), now, secrets=self.secrets
        )
        pipeline, graph = call.pipeline, call.pipeline.graph
        runs = self.store.runs(session_id)
        for run in runs:
            fan_parent = run.index is None and pipeline.job(run.job_id).fan_out is not None
            if run.status is JobStatus.RUNNING and not fan_parent:
                # The attempt's work may outlive its driver: stop it before running it again.
                self.dispatcher.stop(run, str(pipeline.job(run.job_id).type))
                self._attempt_finished(
                    call, AttemptFinished(session_id, run.key, run.attempt, now, error=lost)
                )
            elif run.status is JobStatus.RETRYING:
                self._start(call, run)
        for run in self.store.runs(session_id):
            if run.index is not None and run.status.terminal:
                self._count_item(call, run)
            elif run.index is None and run.status.terminal:
                for child in graph.children(run.job_id):
                    self.store.count_edge(
                        session_id,
                        child,
                        child,
                        None,
                        run.job_id,
                        Outcome.of(run.status),
                        graph.in_degree(child),
                    )
        for run in self.store.runs(session_id, {JobStatus.WAITING}):
            if run.index is None and run.done == run.expected:
                call.ready.append(run.job_id)
            elif run.index is not None:
                # An item created by a fan-out whose driver died before starting it.
                fan = self.store.get_run(session_id, run.job_id)
                if fan is not None and fan.status is JobStatus.RUNNING:
                    self._start(call, run)
        for job_id in graph.roots():
            if self.store.get_run(session_id, job_id) is None:
                call.ready.append(job_id)
        for run in self.store.runs(session_id, {JobStatus.QUEUED}):
            self._start(call, run)
        while call.ready:
            self._decide(call, call.ready.popleft())
        session = self.store.recount(session_id)
        if session.finished >= session.total:
            self._close(call, session)

    def retry(
        self, session_id: str, now: str, parameters: Mapping[str, Any] | None = None
    ) -> Session:
        """Re-run a failed or cancelled session's failed and cancelled jobs and what they
        skipped, keeping the outputs of the jobs that succeeded.

        Args:
            session_id: A session that ended FAILED or CANCELLED.
            now: The time.
            parameters: New parameter values (already checked), if they change.

        Raises:
            Conflict: the session is not failed or cancelled.
        """
        session = self.store.get_session(session_id)
        if session.status not in (SessionStatus.FAILED, SessionStatus.CANCELLED):
            raise Conflict(
                f"session '{session_id}' is {session.status.value}; only a failed or "
                "cancelled session can be retried."
            )
        pipeline = self.pipelines(session.pipeline, session.version)
        graph = pipeline.graph
        kept = {
            run.job_id: run
            for run in self.store.runs(session_id)
            if run.index is None
            and run.status.terminal
            and run.status is not JobStatus.CANCELLED
            and run.status is not JobStatus.FAILED
            and run.status is not JobStatus.UPSTREAM_FAILED
            and not (run.status is JobStatus.SKIPPED and (run.reason or "").startswith("trigger"))
        }
        redo = [
            job_id
            for job_id in graph.topological_order
            if job_id not in kept or any(p not in kept for p in graph.ancestors(job_id))
        ]
        redo_set = set(redo)
        # Reset in place rather than delete: attempt numbers go on (attempt 3 after 2), so
        # a dispatch id, an idempotency token or a log file is never used twice.
        for run in self.store.runs(session_id):
            if run.job_id not in redo_set or run.status not in TERMINAL_JOB:
                continue
            if run.index is not None and run.status is JobStatus.SUCCEEDED:
                continue  # a succeeded item is kept if the fan-out expands to it again
            reset: dict[str, Any] = {
                "status": JobStatus.WAITING,
                "output": None,
                "error": None,
                "reason": None,
                "inputs": None,
                "handle": None,
                "started_at": None,
                "ended_at": None,
                "updated_at": now,
                "parents_done": {},
                "base_attempt": run.attempt,
            }
            if run.index is None:
                reset["expected"] = graph.in_degree(run.job_id)
            self.store.transition(session_id, run.key, {run.status}, reset)
        changes: dict[str, Any] = {"ended_at": None, "reason": None}
        if parameters is not None:
            changes["parameters"] = self._keep(session_id, pipeline, parameters)
        reopened = self.store.set_session_status(
            session_id,
            {SessionStatus.FAILED, SessionStatus.CANCELLED},
            SessionStatus.RUNNING,
            changes,
        )
        if reopened is None:
            raise Conflict(f"session '{session_id}' changed while it was being retried.")
        self.store.recount(session_id)
        self._history(session_id, now, "session_retried", detail={"jobs": redo})
        call = Context(reopened, pipeline, now, secrets=self.secrets)
        for job_id in redo:
            parents = graph.parents(job_id)
            if any(p in redo_set for p in parents):
                continue  # counted when that parent ends
            if not parents:
                call.ready.append(job_id)
            for parent in parents:
                edge = self.store.count_edge(
                    session_id,
                    job_id,
                    job_id,
                    None,
                    parent,
                    Outcome.of(kept[parent].status),
                    len(parents),
                )
                if edge is not None and edge.done == edge.expected:
                    call.ready.append(job_id)
        while call.ready:
            self._decide(call, call.ready.popleft())
        return self.store.get_session(session_id)
