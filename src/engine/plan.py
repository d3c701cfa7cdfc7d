"""What a session would do with given parameters, before it runs.

The plan groups jobs into levels that can run in parallel, resolves every
``${...}`` that the parameters decide, leaves in place (and lists) what waits
for upstream outputs, and decides the conditions that depend on parameters
alone, following a skip down the graph the way the engine will.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from engine.checks import NameKind, classify
from engine.errors import ExpressionError, UnknownName
from engine.expressions import Reference, truth
from engine.inputs import JobScope, fan_out_items, job_inputs
from engine.parameters import redacted
from engine.pipeline import JobBase, Pipeline, TriggerRule
from engine.templates import parse_condition, value_references


class Outlook(StrEnum):
    """What the plan can tell of a job before the session runs."""

    RUNS = "runs"
    """Runs once its parents are done (their outcome may still skip it)."""
    SKIPPED_CONDITION = "skipped: condition is false"
    SKIPPED_UPSTREAM = "skipped: upstream skipped"
    AT_RUN_TIME = "condition decided at run time"
    IF_UPSTREAM_RUNS = "runs if its upstream runs"
    ERROR = "error"


@dataclass
class JobPlan:
    """One job in a plan."""

    id: str
    name: str
    type: str
    level: int
    depends_on: list[str]
    trigger_rule: str
    outlook: Outlook
    condition: str | None = None
    condition_value: bool | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    from_upstream: list[str] = field(default_factory=list)
    fan_out: dict[str, Any] | None = None
    timeout: float | None = None
    retries: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "level": self.level,
            "depends_on": self.depends_on,
            "trigger_rule": self.trigger_rule,
            "outlook": self.outlook.value,
            "condition": self.condition,
            "condition_value": self.condition_value,
            "inputs": self.inputs,
            "from_upstream": self.from_upstream,
            "fan_out": self.fan_out,
            "timeout": self.timeout,
            "retries": self.retries,
            "error": self.error,
        }


@dataclass
class Plan:
    """A pipeline's plan for one set of parameters."""

    pipeline: str
    version: str
    parameters: dict[str, Any]
    levels: list[list[JobPlan]]

    @property
    def jobs(self) -> list[JobPlan]:
        return [job for level in self.levels for job in level]

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (documented in docs/cli-reference.md)."""
        return {
            "pipeline": self.pipeline,
            "version": self.version,
            "parameters": self.parameters,
            "levels": [[job.id for job in level] for level in self.levels],
            "jobs": [job.to_dict() for job in self.jobs],
        }


def make_plan(pipeline: Pipeline, parameters: Mapping[str, Any]) -> Plan:
    """Plan a session of ``pipeline`` with resolved ``parameters``.

    Secrets are shown as ``******`` in the plan's parameters, and expressions
    that read one stay unrendered, so no value derived from a secret appears.
    """
    shown = redacted(pipeline.parameters, parameters)
    public = {
        p.name: parameters[p.name]
        for p in pipeline.parameters
        if not p.secret and p.name in parameters
    }
    params = {p.name: p for p in pipeline.parameters}
    graph = pipeline.graph
    outlooks: dict[str, Outlook] = {}
    levels: list[list[JobPlan]] = []
    for depth, ids in enumerate(graph.levels()):
        level: list[JobPlan] = []
        for job_id in ids:
            job = pipeline.job(job_id)
            entry = _plan_job(job, depth, public, params, graph)
            entry.outlook = _outlook(job, entry, outlooks)
            outlooks[job_id] = entry.outlook
            level.append(entry)
        levels.append(level)
    return Plan(pipeline.name, pipeline.version, shown, levels)


def _plan_job(job: JobBase, depth: int, public: dict[str, Any], params: Any, graph: Any) -> JobPlan:
    entry = JobPlan(
        id=job.id,
        name=job.display_name,
        type=str(getattr(job, "type")),  # noqa: B009
        level=depth,
        depends_on=list(job.depends_on),
        trigger_rule=job.trigger_rule.value,
        outlook=Outlook.RUNS,
        condition=job.condition if isinstance(job.condition, str) else None,
        timeout=job.timeout,
        retries=job.retries,
    )
    # Upstream outputs, items, session and secrets are unknown here: they stay ${...}.
    scope = JobScope(public)
    waiting: list[str] = []

    def note(ref: Reference) -> None:
        kind = classify(ref, job, params, graph)
        label = _label(ref) if kind in (NameKind.UPSTREAM_OUTPUT, NameKind.JOB) else None
        if label and label not in waiting:
            waiting.append(label)

    try:
        raw = getattr(job, "parameters").model_dump(mode="json")  # noqa: B009
        fan_values = job.fan_out.model_dump(mode="json") if job.fan_out else None
        for _, ref in [*value_references(raw), *value_references(fan_values)]:
            note(ref)
        entry.inputs = job_inputs(job, scope, keep_unresolved=True)
        if job.fan_out is not None:
            entry.fan_out = _fan_out(job, scope)
        if isinstance(job.condition, bool):
            entry.condition = str(job.condition).lower()
            entry.condition_value = job.condition
        elif isinstance(job.condition, str):
            expression = parse_condition(job.condition)
            for ref in expression.references():
                note(ref)
            try:
                entry.condition_value = truth(expression.evaluate(scope), job.condition)
            except UnknownName:
                entry.condition_value = None
    except ExpressionError as exc:
        entry.error = str(exc)
    entry.from_upstream = waiting
    return entry


def _label(ref: Reference) -> str:
    if ref.root != "jobs":
        return ref.root
    parts = [ref.root, *(str(p) if isinstance(p, str) else f"[{p}]" for p in ref.path[:3])]
    return ".".join(parts).replace(".[", "[")


def _fan_out(job: JobBase, scope: JobScope) -> dict[str, Any]:
    fan = job.fan_out
    assert fan is not None
    summary: dict[str, Any] = {"max_concurrency": fan.max_concurrency}
    try:
        items = fan_out_items(fan, scope)
    except UnknownName:
        source = fan.items if fan.items is not None else {"matrix": fan.matrix}
        summary.update(count=None, items=None, source=source)
    else:
        summary.update(count=len(items), items=items)
    return summary


def _outlook(job: JobBase, entry: JobPlan, known: dict[str, Outlook]) -> Outlook:
    if entry.error:
        return Outlook.ERROR
    parents = [known[parent] for parent in job.depends_on if parent in known]
    skipped = {Outlook.SKIPPED_CONDITION, Outlook.SKIPPED_UPSTREAM}
    # Only the rules that need every parent to succeed are certain to skip here;
    # the others may still run after a skip, which the plan cannot rule out.
    if job.trigger_rule in (TriggerRule.ALL_SUCCESS, TriggerRule.NONE_SKIPPED) and any(
        p in skipped for p in parents
    ):
        return Outlook.SKIPPED_UPSTREAM
    if entry.condition_value is False:
        return Outlook.SKIPPED_CONDITION
    if entry.condition is not None and entry.condition_value is None:
        return Outlook.AT_RUN_TIME
    undecided = {Outlook.AT_RUN_TIME, Outlook.IF_UPSTREAM_RUNS}
    if job.trigger_rule in (TriggerRule.ALL_SUCCESS, TriggerRule.NONE_SKIPPED) and any(
        p in undecided for p in parents
    ):
        return Outlook.IF_UPSTREAM_RUNS
    return Outlook.RUNS


def plan_document(
    text: str, values: Mapping[str, Any] | None = None, source: str = "<pipeline>"
) -> Plan:
    """Load pipeline text, check the parameters and plan it: the whole of ``pipeline plan``.

    Raises:
        PipelineInvalid: the document has problems.
        ParameterInvalid: a parameter is unknown, missing or breaks its rule.
    """
    from engine.loader import load_pipeline
    from engine.parameters import resolve_parameters

    pipeline = load_pipeline(text, source)
    return make_plan(pipeline, resolve_parameters(pipeline.parameters, values or {}))
