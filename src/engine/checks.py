"""Checks that need the whole document: parameters' rules, the graph, and names in expressions.

Each check reports into a :class:`~engine.validation.Report` and carries on,
so a file's problems are all reported at once. The checks work from the raw
data where a job did not validate, so one misspelt field does not hide a
cycle elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.errors import ExpressionError, ParameterInvalid
from engine.expressions import Reference
from engine.graph import Graph
from engine.parameters import MAX_INTEGER, PatternInvalid, check_value, compile_pattern
from engine.pipeline import (
    MAX_FAN_OUT,
    RESERVED_NAMES,
    ForEach,
    JobBase,
    Parameter,
    ParameterType,
)
from engine.source import YamlPath
from engine.templates import parse_condition, parse_template, value_references
from engine.validation import Report, suggest

SESSION_FIELDS = ("id", "pipeline", "pipeline_version", "started_at")
"""What ``${session.<field>}`` offers."""

JOB_FIELDS = ("output", "outputs", "status")
"""What ``${jobs.<id>.<field>}`` offers."""

_SYNTAX_HINT = "see docs/dsl-reference.md#expressions for the syntax."


class NameKind(StrEnum):
    """Where the value of a name used in an expression comes from."""

    PARAMETER = "parameter"
    UPSTREAM_OUTPUT = "upstream output"
    JOB = "job"
    ITEM = "item"
    SESSION = "session"


@dataclass(frozen=True)
class RawJob:
    """What the graph checks need of a job, taken from the data even when the job is invalid."""

    index: int
    id: str | None
    depends_on: list[tuple[int, str]]
    model: JobBase | None


def raw_jobs(data: Any, models: dict[int, JobBase]) -> list[RawJob]:
    """The jobs of a document as far as their ``id`` and ``depends_on`` are readable."""
    found: list[RawJob] = []
    jobs = data.get("jobs") if isinstance(data, dict) else None
    for index, raw in enumerate(jobs if isinstance(jobs, list) else []):
        if not isinstance(raw, dict):
            found.append(RawJob(index, None, [], None))
            continue
        job_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        deps = raw.get("depends_on")
        depends = (
            [(i, d) for i, d in enumerate(deps) if isinstance(d, str)]
            if isinstance(deps, list)
            else []
        )
        found.append(RawJob(index, job_id, depends, models.get(index)))
    return found


def check_parameters(report: Report, params: dict[int, Parameter], raw: Any) -> None:
    """Names unique and not reserved; rules that fit the type; defaults that pass them."""
    first: dict[str, int] = {}
    for index, name in _raw_names(raw):
        if name in first:
            report.add(
                ("parameters", index, "name"),
                f"parameter '{name}' is declared twice (also parameters[{first[name]}]).",
                "rename or remove one of them.",
            )
        else:
            first[name] = index
        if name in RESERVED_NAMES:
            report.add(
                ("parameters", index, "name"),
                f"'{name}' is reserved by the expression language.",
                "choose another name.",
            )
    for index, param in params.items():
        _check_rules(report, ("parameters", index), param)


def _raw_names(raw: Any) -> list[tuple[int, str]]:
    items = raw if isinstance(raw, list) else []
    return [
        (i, p["name"])
        for i, p in enumerate(items)
        if isinstance(p, dict) and isinstance(p.get("name"), str)
    ]


def _check_rules(report: Report, at: YamlPath, param: Parameter) -> None:
    rules = param.validation
    kind = param.type
    if rules is not None:
        where = (*at, "validation")
        if rules.pattern is not None:
            if kind is not ParameterType.STRING:
                report.add(
                    (*where, "pattern"),
                    f"pattern applies to string parameters; '{param.name}' is {kind.value}.",
                    "remove the pattern, or make the parameter a string.",
                )
            else:
                try:
                    compile_pattern(rules.pattern)
                except PatternInvalid as exc:
                    report.add(
                        (*where, "pattern"),
                        f"invalid regular expression {rules.pattern!r}: {exc}.",
                        "fix the pattern; look-around and back-references are not supported.",
                    )
        bounds = [(name, getattr(rules, name)) for name in ("min", "max")]
        for name, bound in bounds:
            if bound is None:
                continue
            if kind in (ParameterType.BOOLEAN, ParameterType.OBJECT):
                report.add(
                    (*where, name),
                    f"{name} applies to numbers (value) and to strings and arrays (length); "
                    f"'{param.name}' is {kind.value}.",
                    f"remove {name}.",
                )
            elif isinstance(bound, float) and not math.isfinite(bound):
                report.add((*where, name), f"{name} must be a finite number.")
            elif isinstance(bound, int) and abs(bound) > MAX_INTEGER:
                report.add((*where, name), f"{name} is out of range (at most ±{MAX_INTEGER}).")
            elif kind in (ParameterType.STRING, ParameterType.ARRAY) and (
                bound < 0 or (isinstance(bound, float) and not bound.is_integer())
            ):
                report.add(
                    (*where, name),
                    f"{name} of a {kind.value} is a length: a whole number of 0 or more.",
                    f"set {name} to a whole number.",
                )
        if rules.min is not None and rules.max is not None and rules.min > rules.max:
            report.add(
                (*where, "min"),
                f"min ({rules.min}) is greater than max ({rules.max}); no value can pass.",
                "swap them, or fix one.",
            )
        for i, choice in enumerate(rules.enum or []):
            try:
                check_value(param.model_copy(update={"validation": None}), choice)
            except ParameterInvalid as exc:
                report.add((*where, "enum", i), f"allowed value {exc.message}", exc.hint)
    if param.has_default and param.default is not None:
        try:
            check_value(param, param.default)
        except PatternInvalid:
            pass  # the pattern itself is reported where it is checked
        except ParameterInvalid as exc:
            report.add(
                (*at, "default"),
                f"the default fails the parameter's own rules: {exc.message}",
                exc.hint or "change the default or the rule.",
            )


def check_graph(report: Report, jobs: Sequence[RawJob]) -> Graph | None:
    """Unique ids, known dependencies, no self-dependency, no cycle.

    Returns:
        The graph of the jobs with readable ids, or None if it has a cycle.
    """
    first: dict[str, int] = {}
    for job in jobs:
        if job.id is None:
            continue
        if job.id in first:
            report.add(
                ("jobs", job.index, "id"),
                f"duplicate job id '{job.id}' (first used by jobs[{first[job.id]}]).",
                "give every job its own id.",
            )
        else:
            first[job.id] = job.index
    for job in jobs:
        seen: set[str] = set()
        for i, dep in job.depends_on:
            at = ("jobs", job.index, "depends_on", i)
            if dep == job.id:
                report.add(at, f"job '{dep}' depends on itself.", "remove it from depends_on.")
            elif dep not in first:
                close = suggest(dep, first)
                report.add(
                    at,
                    f"unknown job '{dep}' in depends_on.",
                    f"did you mean '{close}'?"
                    if close
                    else "use the id of a job of this pipeline.",
                )
            elif dep in seen:
                report.add(at, f"'{dep}' is listed twice.", "remove the second one.")
            seen.add(dep)
    parents = {
        job.id: [dep for _, dep in job.depends_on if dep != job.id]
        for job in jobs
        if job.id is not None and first.get(job.id) == job.index
    }
    graph = Graph(parents)
    cycle = graph.find_cycle()
    if cycle is None:
        return graph
    # Report at the edge that closes the cycle: cycle[1] depends on cycle[0].
    child = jobs[first[cycle[1]]]
    entry = next(i for i, dep in child.depends_on if dep == cycle[0])
    report.add(
        ("jobs", child.index, "depends_on", entry),
        f"dependency cycle: {' -> '.join(cycle)}.",
        "remove one of these dependencies; a pipeline is a graph without cycles.",
    )
    return None


def classify(
    ref: Reference,
    job: JobBase,
    params: dict[str, Parameter],
    graph: Graph | None,
) -> NameKind | None:
    """Where a name read by ``job`` comes from; None when it can come from nowhere."""
    if ref.root == "jobs":
        return NameKind.JOB
    if ref.root in ("item", "item_index"):
        return NameKind.ITEM if job.for_each is not None else None
    if ref.root == "session":
        return NameKind.SESSION
    if ref.root in params:
        return NameKind.PARAMETER
    if job.depends_on and (graph is None or graph.parents(job.id)):
        return NameKind.UPSTREAM_OUTPUT
    return None


class JobChecker:
    """Checks the expressions of jobs against the parameters and the graph."""

    def __init__(
        self,
        report: Report,
        params: dict[str, Parameter],
        graph: Graph | None,
        models: dict[str, JobBase],
        known_ids: set[str],
    ) -> None:
        self.report = report
        self.params = params
        self.graph = graph
        self.models = models
        self.known_ids = known_ids

    def check(self, index: int, job: JobBase, raw: dict[str, Any]) -> None:
        at: YamlPath = ("jobs", index)
        self._check_retry(at, job)
        self._check_outputs(at, job)
        self._check_for_each(at, job)
        if isinstance(job.condition, str):
            try:
                expression = parse_condition(job.condition)
            except ExpressionError as exc:
                self.report.add((*at, "condition"), f"invalid condition: {exc}", _SYNTAX_HINT)
            else:
                for ref in expression.references():
                    self._check_ref((*at, "condition"), job, ref)
        try:
            found = value_references(raw.get("parameters"))
        except ExpressionError as exc:
            inner = getattr(exc, "value_path", ())
            self.report.add((*at, "parameters", *inner), f"invalid expression: {exc}", _SYNTAX_HINT)
            return
        for inner, ref in found:
            self._check_ref((*at, "parameters", *inner), job, ref)

    def check_syntax(self, index: int, raw: Any) -> None:
        """For a job that did not validate: report at least its expression syntax errors."""
        if not isinstance(raw, dict):
            return
        at: YamlPath = ("jobs", index)
        if isinstance(raw.get("condition"), str):
            try:
                parse_condition(raw["condition"])
            except ExpressionError as exc:
                self.report.add((*at, "condition"), f"invalid condition: {exc}", _SYNTAX_HINT)
        for key in ("parameters", "for_each"):
            try:
                value_references(raw.get(key))
            except ExpressionError as exc:
                inner = getattr(exc, "value_path", ())
                self.report.add((*at, key, *inner), f"invalid expression: {exc}", _SYNTAX_HINT)

    def _check_retry(self, at: YamlPath, job: JobBase) -> None:
        if job.retry_max_delay is not None and job.retry_max_delay < job.retry_delay:
            self.report.add(
                (*at, "retry_max_delay"),
                f"retry_max_delay ({job.retry_max_delay:g}s) is shorter than retry_delay "
                f"({job.retry_delay:g}s).",
                "raise retry_max_delay or lower retry_delay.",
            )

    def _check_outputs(self, at: YamlPath, job: JobBase) -> None:
        seen: set[str] = set()
        for i, name in enumerate(job.declared_outputs or []):
            if name in seen:
                self.report.add((*at, "outputs", i), f"output '{name}' is declared twice.")
            seen.add(name)

    def _check_for_each(self, at: YamlPath, job: JobBase) -> None:
        fan = job.fan_out
        if fan is None:
            return
        where = (*at, "for_each")
        long_form = isinstance(job.for_each, ForEach)
        items_at = (*where, "items") if long_form else where
        if long_form and (fan.items is None) == (fan.matrix is None):
            self.report.add(
                where,
                "for_each needs exactly one of items or matrix.",
                "give items: [...] (or a ${...} list) or matrix: {key: [...], ...}.",
            )
            return
        if isinstance(fan.items, list):
            if not fan.items:
                self.report.add(items_at, "for_each has no items.", "list at least one item.")
            elif len(fan.items) > MAX_FAN_OUT:
                self.report.add(
                    items_at,
                    f"for_each has {len(fan.items):,} items; the limit is {MAX_FAN_OUT:,}.",
                    "split the work.",
                )
            self._check_values(items_at, job, fan.items)
        elif isinstance(fan.items, str):
            self._check_list_template(items_at, job, fan.items)
        if fan.matrix is not None:
            self._check_matrix((*where, "matrix"), job, fan.matrix)

    def _check_matrix(self, at: YamlPath, job: JobBase, matrix: dict[str, Any]) -> None:
        if not matrix:
            self.report.add(at, "the matrix is empty.", "give at least one key with a list.")
            return
        combinations = 1
        for key, values in matrix.items():
            if isinstance(values, str):
                self._check_list_template((*at, key), job, values)
                continue
            if not values:
                self.report.add(
                    (*at, key), f"matrix key '{key}' has no values.", "list at least one value."
                )
            combinations *= max(len(values), 1)
            self._check_values((*at, key), job, values)
        if combinations > MAX_FAN_OUT:
            self.report.add(
                at,
                f"the matrix makes {combinations:,} runs; the limit is {MAX_FAN_OUT:,}.",
                "use fewer values.",
            )

    def _check_list_template(self, at: YamlPath, job: JobBase, text: str) -> None:
        try:
            template = parse_template(text)
        except ExpressionError as exc:
            self.report.add(at, f"invalid expression: {exc}", _SYNTAX_HINT)
            return
        if not template.is_single:
            self.report.add(
                at,
                "for_each given as text must be one ${...} that yields a list.",
                'write e.g. for_each: "${jobs.split.output.files}", or give a YAML list.',
            )
            return
        for ref in template.references():
            if ref.root in ("item", "item_index"):
                self.report.add(at, "for_each cannot use ${item}: it defines it.")
                continue
            kind = self._check_ref(at, job, ref)
            param = self.params.get(ref.root)
            if (
                kind is NameKind.PARAMETER
                and param
                and not ref.path
                and param.type not in (ParameterType.ARRAY,)
            ):
                self.report.add(
                    at,
                    f"for_each needs a list; parameter '{ref.root}' is {param.type.value}.",
                    "use an array parameter.",
                )

    def _check_values(self, at: YamlPath, job: JobBase, values: list[Any]) -> None:
        try:
            found = value_references(values)
        except ExpressionError as exc:
            self.report.add(
                (*at, *getattr(exc, "value_path", ())),
                f"invalid expression: {exc}",
                _SYNTAX_HINT,
            )
            return
        for inner, ref in found:
            if ref.root in ("item", "item_index"):
                self.report.add((*at, *inner), "for_each cannot use ${item}: it defines it.")
                continue
            self._check_ref((*at, *inner), job, ref)

    def _check_ref(self, at: YamlPath, job: JobBase, ref: Reference) -> NameKind | None:
        kind = classify(ref, job, self.params, self.graph)
        if kind is NameKind.JOB:
            self._check_job_ref(at, job, ref)
        elif kind is NameKind.SESSION:
            if ref.path and ref.path[0] not in SESSION_FIELDS:
                self.report.add(
                    at,
                    f"session has no field {ref.path[0]!r}.",
                    f"use one of: {', '.join(SESSION_FIELDS)}.",
                )
        elif kind is NameKind.UPSTREAM_OUTPUT:
            self._check_upstream_name(at, job, ref)
        elif kind is None and ref.root in ("item", "item_index"):
            self.report.add(
                at,
                f"'{ref.root}' exists only in a job with for_each.",
                "add for_each to this job, or use another name.",
            )
        elif kind is None:
            close = suggest(ref.root, self.params)
            self.report.add(
                at,
                f"unknown name '{ref.root}': it is not a parameter, and job '{job.id}' has no "
                "upstream jobs whose outputs could provide it.",
                f"did you mean '{close}'?"
                if close
                else "declare it under parameters:, or add the job that outputs it to depends_on.",
            )
        return kind

    def _check_job_ref(self, at: YamlPath, job: JobBase, ref: Reference) -> None:
        if not ref.path or not isinstance(ref.path[0], str):
            self.report.add(at, "'jobs' must be followed by a job id: ${jobs.<id>.output}.")
            return
        target = ref.path[0]
        if target in self.known_ids and target not in self.models:
            return  # an invalid job, reported already
        if target not in self.models:
            close = suggest(target, self.models)
            self.report.add(
                at,
                f"jobs.{target}: no job has the id '{target}'.",
                f"did you mean '{close}'?" if close else "",
            )
            return
        if self.graph is not None and not self.graph.is_ancestor(target, of=job.id):
            self.report.add(
                at,
                f"jobs.{target} is not upstream of job '{job.id}': its value would not exist "
                "when this job runs.",
                f"add '{target}' (or a job after it) to depends_on of '{job.id}'.",
            )
            return
        if len(ref.path) < 2:
            return
        field, producer = ref.path[1], self.models[target]
        if field not in JOB_FIELDS:
            self.report.add(
                at,
                f"jobs.{target} has no field {field!r}.",
                f"use one of: {', '.join(JOB_FIELDS)}.",
            )
        elif field == "outputs" and producer.for_each is None:
            self.report.add(
                at,
                f"jobs.{target}.outputs is the list of a fan-out's results, and "
                f"'{target}' has no for_each.",
                f"use jobs.{target}.output.",
            )
        elif field == "output" and producer.for_each is not None:
            self.report.add(
                at,
                f"'{target}' is a fan-out: its results are a list.",
                f"use jobs.{target}.outputs (one entry per item, in item order).",
            )
        elif field == "output" and len(ref.path) > 2 and isinstance(ref.path[2], str):
            declared = producer.declared_outputs
            if declared is not None and ref.path[2] not in declared:
                close = suggest(ref.path[2], declared)
                self.report.add(
                    at,
                    f"job '{target}' declares no output '{ref.path[2]}'.",
                    f"did you mean '{close}'?"
                    if close
                    else f"its outputs are: {', '.join(declared)}.",
                )

    def _check_upstream_name(self, at: YamlPath, job: JobBase, ref: Reference) -> None:
        if self.graph is None:
            return
        declared: list[str] = []
        for ancestor in self.graph.iter_ancestors(job.id):
            producer = self.models.get(ancestor)
            if producer is None:
                return  # invalid job, reported already: its outputs are unknown
            if producer.for_each is not None:
                continue  # a fan-out's results are a list under jobs.<id>.outputs, never names
            names = producer.declared_outputs
            if names is None or ref.root in names:
                return
            declared.extend(names)
        close = suggest(ref.root, [*declared, *self.params])
        self.report.add(
            at,
            f"unknown name '{ref.root}': it is not a parameter, and no upstream job of "
            f"'{job.id}' declares it in outputs.",
            f"did you mean '{close}'?"
            if close
            else "declare it in the outputs of the upstream "
            "job that returns it, or as a parameter.",
        )
