"""A sequential reference interpreter of a pipeline, written from the documented semantics.

Given a DAG (:class:`Dag`) and what each attempt of each run will do
(:class:`Script`), :func:`interpret` walks the jobs in dependency order, one at
a time, and says how every run and the session must end. It follows
docs/dsl-reference.md (trigger rules, conditions, retries, timeouts,
``for_each``, names) and the design's job semantics, and shares no code with
the engine: the delivery-chaos suite compares the real reducer, driven by
duplicated, reordered and concurrent events, against this plain loop.

Statuses are the documented names (``succeeded``, ``failed``, ``skipped``,
``upstream_failed``) as plain strings, so nothing here depends on the engine's
enums either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
UPSTREAM_FAILED = "upstream_failed"

PARAMETER = "p"
"""The one integer parameter conditions may read."""


class Attempt(StrEnum):
    """What one attempt of a run does once dispatched (decided before the session starts)."""

    OK = "ok"
    """Its completion reports success, with an output."""
    FAIL = "fail"
    """Its completion reports an error."""
    FAIL_RESULT = "fail_result"
    """Its completion is a Lambda-style result with statusCode 500 (a failure)."""
    REFUSED = "refused"
    """The service refuses to start it (the dispatch call raises): a failed attempt."""
    TIMEOUT = "timeout"
    """No completion ever comes; the job's timeout ends the attempt as failed."""
    LATE = "late"
    """Times out, and its completion (a success) arrives after the timeout: ignored."""

    @property
    def succeeds(self) -> bool:
        return self is Attempt.OK


@dataclass(frozen=True)
class Plan:
    """One attempt's script.

    Attributes:
        outcome: What the attempt does.
        value: The ``v`` of its output when it succeeds.
        width: How many ``items`` its output lists when it succeeds.
        fast: The completion is handled by another reducer before the dispatching
            one has returned from the service call (as a fast Lambda can do).
    """

    outcome: Attempt
    value: int = 0
    width: int = 1
    fast: bool = False

    def output(self) -> dict[str, Any]:
        return {"v": self.value, "items": list(range(self.width))}


class Kind(StrEnum):
    """The forms of condition the generator writes."""

    LITERAL = "literal"  # condition: true / false (a YAML boolean)
    NULL = "null"  # ${null}: null counts as false
    PARAMETER = "parameter"  # ${p >= k}
    OUTPUT = "output"  # ${default(jobs.<a>.output.v, -1) >= k}
    STATUS = "status"  # ${jobs.<a>.status == '<status>'}
    NAME = "name"  # ${v >= k}: the nearest upstream result holding v
    NUMBER = "number"  # ${default(jobs.<a>.output.v, 1)}: not a boolean, so the job fails


@dataclass(frozen=True)
class Condition:
    """A job's condition, as data; :mod:`tests.reliability.chaos` writes it as text.

    Attributes:
        kind: Its form.
        target: The upstream job it reads (OUTPUT, STATUS, NUMBER).
        value: The literal (LITERAL), the threshold ``k`` (PARAMETER, OUTPUT, NAME)
            or the status compared with (STATUS).
    """

    kind: Kind
    target: str | None = None
    value: Any = None


@dataclass(frozen=True)
class FanOut:
    """``for_each``: a literal list of ``items`` items, or ``${jobs.<source>.output.items}``."""

    items: int | None = None
    source: str | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True)
class Job:
    """One job of the DAG.

    Attributes:
        id: Its id; jobs are listed parents first.
        parents: ``depends_on``, in order.
        rule: ``trigger_rule``.
        condition: Its condition, if any.
        retries: Attempts after the first.
        timeout: Whether it has a ``timeout`` (only then can an attempt time out).
        reads: An upstream job whose ``output.v`` its parameters read (``${jobs.<a>.output.v}``).
        fan_out: Its ``for_each``, if any.
    """

    id: str
    parents: tuple[str, ...] = ()
    rule: str = "all_success"
    condition: Condition | None = None
    retries: int = 0
    timeout: bool = False
    reads: str | None = None
    fan_out: FanOut | None = None


@dataclass(frozen=True)
class Dag:
    """A pipeline as data: its jobs (parents first), its concurrency limit, the parameter."""

    jobs: tuple[Job, ...]
    max_concurrency: int | None = None
    parameter: int = 0

    def job(self, job_id: str) -> Job:
        return self._by_id[job_id]

    @cached_property
    def _by_id(self) -> dict[str, Job]:
        return {job.id: job for job in self.jobs}


Script = Mapping[str, tuple[Plan, ...]]
"""Run key (``j3`` or ``j3[1]``) -> the plans of its attempts 1, 2, ... (as many as it may make)."""


@dataclass
class Expected:
    """How a session of the DAG must end.

    Attributes:
        statuses: Run key -> final status, for every job and every fan-out item.
        attempts: Run key -> how many attempts were dispatched (1..n each, once).
        session: ``succeeded`` or ``failed``.
    """

    statuses: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    session: str = SUCCEEDED

    def dispatches(self) -> set[tuple[str, int]]:
        """Every (run key, attempt) that must be dispatched, each exactly once."""
        return {(key, n) for key, count in self.attempts.items() for n in range(1, count + 1)}


class _NotReadable(Exception):
    """An expression read a name or key that is not there (an error unless in default())."""


def item_key(job_id: str, index: int) -> str:
    return f"{job_id}[{index}]"


# How a finished parent counts for its children's trigger rules: "all_failed: all
# failed (including failed because of their own upstream)".
_CLASS = {SUCCEEDED: "success", FAILED: "failed", UPSTREAM_FAILED: "failed", SKIPPED: "skipped"}

# The documented table of trigger rules: the job runs when its parents' outcomes
# (counted as success / failed / skipped, n in all) satisfy the rule.
_RULES = {
    "all_success": lambda ok, bad, skip, n: ok == n,
    "all_failed": lambda ok, bad, skip, n: bad == n,
    "all_done": lambda ok, bad, skip, n: True,
    "all_skipped": lambda ok, bad, skip, n: skip == n,
    "one_success": lambda ok, bad, skip, n: ok >= 1,
    "one_failed": lambda ok, bad, skip, n: bad >= 1,
    "one_done": lambda ok, bad, skip, n: ok + bad >= 1,
    "none_failed": lambda ok, bad, skip, n: bad == 0,
    "none_skipped": lambda ok, bad, skip, n: skip == 0,
    "none_failed_min_one_success": lambda ok, bad, skip, n: bad == 0 and ok >= 1,
    "always": lambda ok, bad, skip, n: True,
}

# Rules that wait for parents to succeed. When such a rule is not met because a
# parent failed, the job is upstream_failed (the default rule's documented
# behaviour, and what Airflow, whose names and meanings the language takes, does
# for each of these); any other unmet rule skips the job.
_WAIT_FOR_SUCCESS = {"all_success", "one_success", "none_failed", "none_failed_min_one_success"}


def _gate(rule: str, parent_statuses: list[str]) -> str | None:
    """The status a job gets from its trigger rule alone, or None when it goes on."""
    if not parent_statuses:
        return None  # a job without dependencies starts when the session starts
    classes = [_CLASS[s] for s in parent_statuses]
    ok, bad, skip = classes.count("success"), classes.count("failed"), classes.count("skipped")
    if _RULES[rule](ok, bad, skip, len(classes)):
        return None
    if rule in _WAIT_FOR_SUCCESS and bad:
        return UPSTREAM_FAILED
    return SKIPPED


class _Session:
    """The state of one sequential walk: statuses and outputs of the runs so far."""

    def __init__(self, dag: Dag, script: Script) -> None:
        self.dag = dag
        self.script = script
        self.found = Expected()

    # -- reading what expressions see

    def output(self, job_id: str) -> dict[str, Any] | None:
        """``jobs.<id>.output``: the result of a job that succeeded, else null."""
        return self.found.outputs.get(job_id)

    def output_key(self, job_id: str, key: str) -> Any:
        """``jobs.<id>.output.<key>``; reading a key of null is not readable."""
        output = self.output(job_id)
        if output is None or key not in output:
            raise _NotReadable(f"jobs.{job_id}.output.{key}")
        return output[key]

    def nearest(self, job: Job, name: str) -> Any:
        """A plain name: the top-level key of the nearest upstream result holding it.

        Parents in ``depends_on`` order, then their parents, and so on; fan-outs
        are not searched (their results are read only as ``jobs.<id>.outputs``).
        """
        seen = {job.id}
        queue = deque(job.parents)
        seen.update(job.parents)
        while queue:
            ancestor = self.dag.job(queue.popleft())
            output = self.output(ancestor.id)
            if ancestor.fan_out is None and output is not None and name in output:
                return output[name]
            for parent in ancestor.parents:
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        raise _NotReadable(name)

    def condition(self, job: Job) -> bool | None:
        """The condition's value: True, False or None (null); raises _NotReadable or
        TypeError for an error (the job then fails)."""
        cond = job.condition
        if cond is None:
            return True
        if cond.kind is Kind.LITERAL:
            return bool(cond.value)
        if cond.kind is Kind.NULL:
            return None
        if cond.kind is Kind.PARAMETER:
            return self.dag.parameter >= cond.value
        if cond.kind is Kind.OUTPUT:
            try:
                value = self.output_key(str(cond.target), "v")
            except _NotReadable:
                value = -1  # default() catches a read of a missing key or of null
            return value >= cond.value
        if cond.kind is Kind.STATUS:
            return self.found.statuses[str(cond.target)] == cond.value
        if cond.kind is Kind.NAME:
            return self.nearest(job, "v") >= cond.value
        raise TypeError("condition must evaluate to true or false")  # Kind.NUMBER

    # -- running

    def attempts(self, key: str, retries: int) -> str:
        """Run the attempts of one run: up to ``retries + 1``, until one succeeds."""
        plans = self.script[key]
        for number, plan in enumerate(plans[: retries + 1], start=1):
            self.found.attempts[key] = number
            if plan.outcome.succeeds:
                self.found.outputs[key] = plan.output()
                return SUCCEEDED
        return FAILED

    def start(self, job: Job, key: str) -> str:
        """Claim and run one run: its parameters are rendered first, at each claim."""
        if job.reads is not None and self.output(job.reads) is None:
            return FAILED  # ${jobs.<a>.output.v} of a job with no result: an error
        return self.attempts(key, job.retries)

    def fan_out(self, job: Job, fan: FanOut) -> str:
        """A fan-out: one run per item; it fails when any item failed."""
        if fan.items is not None:
            count = fan.items
        else:
            source = self.output(str(fan.source))
            if source is None:
                return FAILED  # the list is read from null: the job fails
            count = len(source["items"])
        statuses = []
        for index in range(count):
            key = item_key(job.id, index)
            status = self.start(job, key)
            self.found.statuses[key] = status
            statuses.append(status)
        return SUCCEEDED if all(s == SUCCEEDED for s in statuses) else FAILED

    def decide(self, job: Job) -> str:
        """A job whose parents have all ended: its trigger rule, condition, then its runs."""
        gated = _gate(job.rule, [self.found.statuses[p] for p in job.parents])
        if gated is not None:
            return gated
        try:
            holds = self.condition(job)
        except (_NotReadable, TypeError):
            return FAILED
        if not holds:  # false, or null, skips the job
            return SKIPPED
        if job.fan_out is not None:
            return self.fan_out(job, job.fan_out)
        return self.start(job, job.id)


def interpret(dag: Dag, script: Script) -> Expected:
    """How a session of ``dag`` ends when each attempt does what ``script`` says.

    Args:
        dag: The pipeline, jobs listed parents first.
        script: For each run key, the plan of each attempt it may make.

    Returns:
        Every run's final status, the attempts each run made, the session's status.
    """
    walk = _Session(dag, script)
    for job in dag.jobs:
        walk.found.statuses[job.id] = walk.decide(job)
    failed = any(walk.found.statuses[job.id] == FAILED for job in dag.jobs)
    walk.found.session = FAILED if failed else SUCCEEDED
    return walk.found
