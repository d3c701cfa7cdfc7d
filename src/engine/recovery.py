"""Recovery: driving on after a crash (repair, sweep) and re-running a failed session (retry).

A mixin of :class:`engine.reducer.Reducer`: each step here is one the reducer
takes anyway (its conditional writes and idempotent edge counts), applied to
what a session's records say, so a repair or a sweep of a healthy session
changes nothing and a retry never runs a succeeded job again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from engine.errors import Conflict, DispatchFailed, ExpressionError
from engine.events import AttemptFinished, AttemptTimedOut
from engine.graph import Graph
from engine.inputs import fan_out_items, job_inputs
from engine.scope import Context, RunScope
from engine.semantics import retry_delay
from engine.state import TERMINAL_JOB, JobRun, JobStatus, Outcome, Session, SessionStatus, run_key

SWEPT_CANCEL = "cancelled; its cancel was interrupted and the sweeper finished it"

LOST_AFTER_SECONDS = 6 * 3600 + 15 * 60
"""How long an attempt whose service cannot be asked (an asynchronous Lambda invocation)
may go without a result before it counts as lost: Lambda keeps an invocation queued for
up to six hours and runs it for up to fifteen minutes."""


def _seconds(since: str | None, now: str) -> float:
    """Seconds from ``since`` to ``now`` (ISO-8601, any offset form); 0 when unknown."""
    if not since:
        return 0.0
    return (datetime.fromisoformat(now) - datetime.fromisoformat(since)).total_seconds()


class Recovery:
    """``repair``, ``sweep`` and ``retry`` for the reducer (they use its ports and steps)."""

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
                    self._count_parent(session_id, graph, run.job_id, child, run.status)
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

    def sweep(self, session_id: str, now: str, grace_seconds: float = 300.0) -> list[str]:
        """Drive on what a reducer that died mid-event left, leaving live work alone.

        Unlike :meth:`repair` (run once its driver is known dead), a sweep runs while
        other reducers may be handling events of the session. So it takes only steps
        that are safe beside them, and writes nothing for a healthy session:

        - edges of ended runs that their child (or fan-out) never counted are
          counted, and the runs they complete are decided; a waiting run counted
          but never decided is decided; roots of a session never started start;
        - a fan-out whose items were not all created, or not all started, gets them;
          a fan-out whose items all ended is ended;
        - a retry ``grace_seconds`` past its delay starts (its timer was lost);
        - a running attempt ``grace_seconds`` past its timeout times out (its timer
          was lost). Other running attempts are left alone: their work may still
          run on its service, and their own timeout covers them;
        - queued runs start while their limits have room; slots held by no running
          run are given back once the session is quiet;
        - once no run changed for ``grace_seconds`` (no reducer is at work), the
          counters are recounted if they disagree with the runs, and an interrupted
          cancel is finished. A session whose runs all ended is closed.

        Args:
            session_id: The session.
            now: The time, ISO-8601.
            grace_seconds: How long a step may be in flight in a live reducer.

        Returns:
            What it did, one line per step taken (empty for a healthy session).
        """
        session = self.store.get_session(session_id)
        if session.status.terminal:
            return []
        call = Context(
            session, self.pipelines(session.pipeline, session.version), now, secrets=self.secrets
        )
        runs = self.store.runs(session_id)
        changed = [session.created_at, *(run.updated_at for run in runs)]
        quiet = all(_seconds(at, now) > grace_seconds for at in changed if at)
        done: list[str] = []
        if session.status is SessionStatus.CANCELLING:
            if quiet:
                self._finish_cancel(call, runs, done)
            return done
        self._count_lost_edges(call, runs, done)
        self._expand_lost_items(call, runs, grace_seconds, done)
        self._restart_overdue(call, runs, grace_seconds, done)
        started_long_ago = _seconds(session.created_at, now) > grace_seconds
        for run in self.store.runs(session_id, {JobStatus.WAITING}):
            # A root waits from the session's creation for Session Started: left alone
            # within the grace, as a never-started session's roots are.
            root = not call.pipeline.graph.parents(run.job_id)
            if run.index is None and run.done >= run.expected and (started_long_ago or not root):
                call.ready.append(run.job_id)
        if started_long_ago:
            known = {run.key for run in runs}
            call.ready.extend(j for j in call.pipeline.graph.roots() if j not in known)
        while call.ready:
            job_id = call.ready.popleft()
            before = self.store.get_run(session_id, job_id)
            self._decide(call, job_id)
            after = self.store.get_run(session_id, job_id)
            if after is not None and (before is None or after.status is not before.status):
                done.append(f"decided {job_id}: {after.status.value}")
        self._drain_queues(call, quiet, done)
        session = self.store.get_session(session_id)
        if session.status.terminal:
            return done
        if quiet and self._miscounted(session):
            # Only when quiet: a reducer between ending a run and counting it would
            # count it a second time after a recount.
            session = self.store.recount(session_id)
            done.append(f"recounted: {session.finished} of {session.total} finished")
        if session.finished >= session.total:
            self._close(call, session)
            done.append("closed the session")
        return done

    def _count_parent(
        self, session_id: str, graph: Graph, parent: str, child: str, status: JobStatus
    ) -> JobRun | None:
        """Count the edge ``parent -> child`` of a parent that ended with ``status``: the
        same request wherever it is counted from (see :meth:`Store.count_edge`)."""
        return self.store.count_edge(
            session_id,
            child,
            child,
            None,
            parent,
            Outcome.of(status),
            graph.in_degree(child),
            graph.position(parent, child),
        )

    def _count_lost_edges(self, call: Context, runs: Sequence[JobRun], done: list[str]) -> None:
        """Count the edges of ended runs that a crash left uncounted (reads alone when none)."""
        graph, by_key = call.pipeline.graph, {run.key: run for run in runs}
        items_left: dict[str, int] = {}
        last_item: dict[str, JobRun] = {}
        for run in runs:
            if run.index is not None:
                fan = by_key.get(run.job_id)
                if fan is None or fan.status is not JobStatus.RUNNING:
                    continue
                if not run.status.terminal:
                    items_left[run.job_id] = items_left.get(run.job_id, 0) + 1
                    continue
                last_item[run.job_id] = run
                if f"[{run.index}]" not in fan.parents_done:
                    self._count_item(call, run)
                    done.append(f"counted {run.key} in its fan-out")
                continue
            if not run.status.terminal:
                continue
            for child in graph.children(run.job_id):
                counted = by_key.get(child)
                if counted is not None and run.job_id in counted.parents_done:
                    continue
                edge = self._count_parent(call.session.id, graph, run.job_id, child, run.status)
                if edge is not None:
                    done.append(f"counted {run.job_id} -> {child}")
                    if edge.done == edge.expected:
                        call.ready.append(child)
        # A fan-out whose items were all counted by a reducer that died before ending it.
        for job_id, item in last_item.items():
            fan = self.store.get_run(call.session.id, job_id)
            if (
                not items_left.get(job_id)
                and fan is not None
                and fan.status is JobStatus.RUNNING
                and fan.done >= fan.expected
            ):
                self._count_item(call, item)
                done.append(f"ended the fan-out {job_id}")

    def _expand_lost_items(
        self, call: Context, runs: Sequence[JobRun], grace: float, done: list[str]
    ) -> None:
        """Create and start the items of fan-outs whose reducer died while expanding them."""
        graph = call.pipeline.graph
        for fan in runs:
            job = call.pipeline.job(fan.job_id)
            if (
                fan.index is not None
                or job.fan_out is None
                or fan.status is not JobStatus.RUNNING
                or _seconds(fan.updated_at, call.now) <= grace
            ):
                continue
            present = {r.index for r in runs if r.job_id == fan.job_id and r.index is not None}
            if len(present) < fan.expected - graph.in_degree(fan.job_id):
                try:
                    items = fan_out_items(job.fan_out, RunScope(self.store, call, job, fan))
                except ExpressionError as exc:
                    self._end(call, fan, JobStatus.FAILED, error=str(exc))
                    continue
                self.store.expect_items(call.session.id, fan.key, len(items))
                for index, item in enumerate(items):
                    if index not in present:
                        key = run_key(fan.job_id, index)
                        self.store.put_run(
                            JobRun(call.session.id, key, fan.job_id, index=index, item=item)
                        )
                done.append(f"created the missing items of {fan.job_id}")
            for item in self.store.runs(call.session.id, {JobStatus.WAITING}, job_id=fan.job_id):
                if item.index is not None:
                    self._start(call, item)
                    done.append(f"started {item.key}")

    def _restart_overdue(
        self, call: Context, runs: Sequence[JobRun], grace: float, done: list[str]
    ) -> None:
        """Retries and timeouts whose timers were lost: due long ago, so due now."""
        for run in runs:
            job = call.pipeline.job(run.job_id)
            age = _seconds(run.updated_at, call.now)
            if run.status is JobStatus.RETRYING:
                # Full jitter waits at most the delay without it: an upper bound.
                delay = retry_delay(job, run.attempt - run.base_attempt, 1.0) or 0.0
                if age > delay + grace and self._start(call, run):
                    done.append(f"started the overdue retry of {run.key}")
            elif run.status is not JobStatus.RUNNING or (
                run.index is None and job.fan_out is not None
            ):
                continue
            elif job.timeout and age > job.timeout + grace:
                self._timed_out(
                    call, AttemptTimedOut(call.session.id, run.key, run.attempt, call.now)
                )
                done.append(f"timed out {run.key} (its timer was lost)")
            elif run.handle is None and age > grace:
                self._look_for_lost_start(call, run, age, grace, done)

    def _look_for_lost_start(
        self, call: Context, run: JobRun, age: float, grace: float, done: list[str]
    ) -> None:
        """An attempt running without a result: if its service has no trace of its work,
        the reducer that claimed it died before starting it, so start it now, with the
        same order (and so the same idempotency token). Where the service cannot tell,
        an attempt with no timeout fails once no result can come any more."""
        job = call.pipeline.job(run.job_id)
        started = self.dispatcher.started(run, str(job.type))
        if started is None:
            if not job.timeout and age > LOST_AFTER_SECONDS + grace:
                hours = LOST_AFTER_SECONDS / 3600
                self._attempt_failed(
                    call, run, f"no result after {hours:g} hours: its start or its result was lost"
                )
                done.append(f"failed {run.key}: no result after {hours:g} hours")
            return
        if not started:
            done.append(self._start_again(call, run))

    def _start_again(self, call: Context, run: JobRun) -> str:
        """Start a claimed attempt whose start was lost, with the order it was claimed for
        (the same dispatch id: the services that take an idempotency token start it once);
        what was done, in a line."""
        job = call.pipeline.job(run.job_id)
        try:
            inputs = job_inputs(job, RunScope(self.store, call, job, run))
            handle = self.dispatcher.dispatch(self._order(call, run, run.attempt, inputs))
        except (ExpressionError, DispatchFailed) as exc:
            self._attempt_failed(call, run, str(exc))
            return f"failed {run.key}: {exc}"
        if handle is not None:
            self.store.transition(
                call.session.id, run.key, {JobStatus.RUNNING}, {"handle": handle}, run.attempt
            )
        self._history(
            call.session.id,
            call.now,
            "job_dispatched",
            run.key,
            run.attempt,
            {"again": "its first start was lost"},
        )
        self._arm_timeout(call, run, run.attempt)
        return f"started {run.key} again (its start was lost)"

    def _drain_queues(self, call: Context, quiet: bool, done: list[str]) -> None:
        """Start queued runs whose limits have room; a quiet session's leaked slots go back.

        A reducer that died between taking a slot and claiming (or between ending a
        run and giving its slot back) leaks the slot: with every slot leaked the
        queue would never move.
        """
        session = self.store.get_session(call.session.id)
        if session.status is not SessionStatus.RUNNING:
            return
        call.session = session
        live = self.store.runs(session.id, {JobStatus.QUEUED, JobStatus.RUNNING})
        queued = [run for run in live if run.status is JobStatus.QUEUED]
        if not queued:
            return
        in_use: dict[str | None, int] = {}
        for run in live:
            fan_parent = run.index is None and call.pipeline.job(run.job_id).fan_out is not None
            if run.status is JobStatus.RUNNING and not fan_parent:
                in_use[None] = in_use.get(None, 0) + 1
                if run.index is not None:
                    in_use[run.job_id] = in_use.get(run.job_id, 0) + 1
        if quiet:
            self._give_back_leaks(call, queued, in_use, done)
        blocked: set[str | None] = set()
        for run in queued:
            limits = self._limits(call, run)
            if any(scope in blocked for scope, _ in limits):
                continue
            if any(in_use.get(scope, 0) >= limit for scope, limit in limits):
                blocked.update(scope for scope, _ in limits)
                continue
            if not self._start(call, run):
                blocked.update(scope for scope, _ in limits)
                continue
            done.append(f"started queued {run.key}")
            for scope, _ in limits:
                in_use[scope] = in_use.get(scope, 0) + 1

    def _give_back_leaks(
        self,
        call: Context,
        queued: Sequence[JobRun],
        in_use: Mapping[str | None, int],
        done: list[str],
    ) -> None:
        session_id = call.session.id
        leaked = call.session.running - in_use.get(None, 0)
        for _ in range(max(leaked, 0)):
            self.store.release_slot(session_id, None)
        if leaked > 0:
            done.append(f"gave back {leaked} leaked session slots")
        # A fan-out's slots cannot be read; with none of its items running, all are leaked.
        for job_id in {run.job_id for run in queued if run.index is not None}:
            fan = call.pipeline.job(job_id).fan_out
            if fan is not None and fan.max_concurrency and not in_use.get(job_id):
                for _ in range(fan.max_concurrency):
                    self.store.release_slot(session_id, job_id)
                done.append(f"gave back the slots of {job_id}")

    def _miscounted(self, session: Session) -> bool:
        """Whether the session's counters disagree with its job-level runs."""
        ended = [
            run for run in self.store.runs(session.id) if run.index is None and run.status.terminal
        ]
        failed = sum(1 for run in ended if run.status is JobStatus.FAILED)
        return (session.finished, session.failed) != (len(ended), failed)

    def _finish_cancel(self, call: Context, runs: Sequence[JobRun], done: list[str]) -> None:
        """End a cancel whose reducer died: the rest of its runs are cancelled, then it."""
        session_id, pipeline = call.session.id, call.pipeline
        for run in runs:
            if run.status.terminal:
                continue
            job = pipeline.job(run.job_id)
            if run.status is JobStatus.RUNNING and not (run.index is None and job.fan_out):
                self.dispatcher.stop(run, str(job.type))
            self.store.transition(
                session_id,
                run.key,
                {run.status},
                {
                    "status": JobStatus.CANCELLED,
                    "reason": SWEPT_CANCEL,
                    "ended_at": call.now,
                    "updated_at": call.now,
                },
            )
        self.store.recount(session_id)
        ended = self.store.set_session_status(
            session_id,
            {SessionStatus.CANCELLING},
            SessionStatus.CANCELLED,
            {"ended_at": call.now, "reason": SWEPT_CANCEL},
        )
        if ended is not None:
            self._history(
                session_id, call.now, "session_cancelled", detail={"reason": SWEPT_CANCEL}
            )
            done.append("finished an interrupted cancel")

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
                edge = self._count_parent(session_id, graph, parent, job_id, kept[parent].status)
                if edge is not None and edge.done == edge.expected:
                    call.ready.append(job_id)
        while call.ready:
            self._decide(call, call.ready.popleft())
        return self.store.get_session(session_id)
