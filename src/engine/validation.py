"""Turning pydantic's validation errors into located problems with a fix.

Pydantic reports where a value broke the model as a ``loc`` tuple that
mixes real keys with the labels of union members it tried. The real path
is recovered by walking the ``loc`` through the data itself; the message is
rewritten in the file's own terms (mapping, list, string) with a suggestion
for a misspelt field or value.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import Problem
from engine.source import SourceMap, YamlPath, format_path


class Report:
    """Collects the problems of one document, located through its source map."""

    def __init__(self, source_map: SourceMap | None = None) -> None:
        self.source_map = source_map
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, path: YamlPath, message: str, hint: str = "", *, key: bool = False) -> None:
        """Record a problem at ``path`` (at its key when ``key``: where a bad field name is)."""
        rendered = format_path(path)
        if not message.endswith((".", "?", "!")):
            message += "."
        if (rendered, message) in self._seen:
            return
        self._seen.add((rendered, message))
        where = self.source_map.locate(path, key=key) if self.source_map else None
        self.problems.append(
            Problem(
                rendered,
                message,
                hint,
                where.line if where else None,
                where.column if where else None,
            )
        )

    def sorted(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: (p.line or 0, p.column or 0))

    def __bool__(self) -> bool:
        return bool(self.problems)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
    "is_instance_of": "a value of another type",
}


def kind_of(value: Any, *, json_words: bool = False) -> str:
    """How the file's author would name the type of a value.

    Args:
        value: The value.
        json_words: Say "an array" / "an object" (the parameter types) instead of
            "a list" / "a mapping" (the YAML words).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array" if json_words else "a list"
    if isinstance(value, dict):
        return "an object" if json_words else "a mapping"
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a misspelt word, if one is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def add_validation_errors(
    report: Report,
    error: ValidationError,
    data: Any,
    base: YamlPath,
    model: Any,
) -> None:
    """Report every error of ``error`` (raised validating ``data`` against ``model``).

    Args:
        report: Where to put the problems.
        error: The pydantic error.
        data: The value that was validated.
        base: Its path in the document.
        model: The model or annotation it was validated against (for the
            list of fields to suggest from).
    """
    grouped: dict[YamlPath, list[dict[str, Any]]] = {}
    for item in error.errors(include_url=False):
        path = _real_path(data, item["loc"], item["type"])
        grouped.setdefault(path, []).append(item)
    for path, items in grouped.items():
        # A union member that failed deeper (a misspelt field inside a mapping that is
        # allowed) also makes the other members fail here with bare type errors: noise.
        only_types = all(item["type"] in _EXPECTED for item in items)
        if only_types and any(
            len(other) > len(path) and other[: len(path)] == path for other in grouped
        ):
            continue
        _report_group(report, data, base, path, items, model)


def _real_path(data: Any, loc: tuple[Any, ...], kind: str) -> YamlPath:
    node, path = data, []
    for i, part in enumerate(loc):
        in_mapping = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_mapping or in_list:
            path.append(part)
            node = node[part]
        elif kind == "missing" and i == len(loc) - 1 and isinstance(node, dict):
            path.append(part)
        # Anything else is the label of a union member pydantic tried: not in the file.
    return tuple(path)


def _value_at(data: Any, path: YamlPath) -> Any:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _report_group(
    report: Report,
    data: Any,
    base: YamlPath,
    path: YamlPath,
    items: list[dict[str, Any]],
    model: Any,
) -> None:
    where = base + path
    types_ = [item["type"] for item in items]
    value = _value_at(data, path)
    field = path[-1] if path else None
    if "missing" in types_:
        report.add(where, f"missing required field '{field}'.", _missing_hint(where, str(field)))
        return
    if "extra_forbidden" in types_:
        allowed = fields_at(model, data, path[:-1])
        close = suggest(str(field), allowed) if allowed else None
        hint = (
            f"did you mean '{close}'?"
            if close
            else f"remove it; allowed here: {', '.join(sorted(allowed))}."
            if allowed
            else "remove it."
        )
        report.add(where, f"unknown field '{field}'.", hint, key=True)
        return
    if "union_tag_invalid" in types_ or "union_tag_not_found" in types_:
        _report_job_type(report, where, value)
        return
    for item in items:
        if item["type"] in ("value_error", "assertion_error"):
            message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            report.add(where, message.rstrip(".") + ".")
            return
    for item in items:
        if item["type"] not in _EXPECTED and item["type"] not in ("literal_error", "enum"):
            # The value has a right type but breaks a constraint (>= 0, not empty, ...).
            report.add(where, _rephrase(item["msg"], value))
            return
    choices = [item for item in items if item["type"] in ("literal_error", "enum")]
    if choices:
        expected = choices[0].get("ctx", {}).get("expected", "")
        options = [part.strip(" '") for part in expected.replace(" or ", ", ").split(",")]
        close = suggest(str(value), options) if isinstance(value, str) else None
        report.add(
            where,
            f"{_show(value)} is not one of: {', '.join(options)}.",
            f"did you mean '{close}'?" if close else "",
        )
        return
    expected = []
    for item in items:
        word = _EXPECTED.get(item["type"])
        if word and word not in expected:
            expected.append(word)
    if expected:
        wanted = " or ".join(expected)
        report.add(
            where,
            f"expected {wanted}, got {_got(value)}.",
            _type_hint(expected, value),
        )
        return
    item = items[0]
    report.add(where, _rephrase(item["msg"], value))


def _got(value: Any) -> str:
    return "null" if value is None else f"{kind_of(value)} {_show(value)}"


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, dict):
        text = "{...}"
    elif isinstance(value, list):
        text = "[...]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_hint(expected: list[str], value: Any) -> str:
    if (
        "a string" in expected
        and "true or false" not in expected
        and isinstance(value, (int, float, bool))
    ):
        return f'quote it: "{_show(value)}".'
    if "a list" in expected and isinstance(value, str):
        return f"write a list: [{value}]."
    return ""


def _rephrase(message: str, value: Any) -> str:
    message = message.replace("Input should be", "must be").replace("Value should", "must")
    message = message.replace("String should", "must").replace("List should", "must")
    return f"{message.rstrip('.')} (got {_show(value)})."


def _missing_hint(where: YamlPath, field: str) -> str:
    examples = {
        "version": 'add version: "1.1" at the top of the file.',
        "name": 'add name: "My Pipeline" at the top of the file.',
        "jobs": "add a jobs: list with at least one job.",
        "id": "give the job an id, e.g. id: prepare_data.",
        "type": "add type: lambda (or ecs, step_function, glue, batch, emr, custom).",
        "parameters": "add parameters: with the fields its type needs.",
    }
    return examples.get(field, f"add {field}: ...")


JOB_TYPES = ("lambda", "ecs", "step_function", "glue", "batch", "emr", "custom")


def _report_job_type(report: Report, where: YamlPath, job: Any) -> None:
    listed = ", ".join(JOB_TYPES)
    if not isinstance(job, dict):
        report.add(
            where,
            f"a job is a mapping of fields (id, type, parameters, ...), not {_got(job)}.",
            "write it as a mapping: - {id: ..., type: ..., parameters: {...}}",
        )
        return
    kind = job.get("type")
    if kind is None:
        report.add(where, "missing required field 'type'.", f"add type: one of {listed}.")
        return
    close = suggest(str(kind), JOB_TYPES)
    report.add(
        (*where, "type"),
        f"unknown job type {_show(kind)}.",
        f"did you mean '{close}'? Job types: {listed}." if close else f"job types: {listed}.",
    )


def fields_at(model: Any, data: Any, path: YamlPath) -> set[str]:
    """The field names allowed in the mapping at ``path`` of ``data`` validated by ``model``."""
    current: Any = model
    node = data
    for part in path:
        current = _pick_model(current, node)
        if current is None:
            return set()
        if isinstance(part, int):
            current = _item_annotation(current)
        elif isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part)
            if info is None:
                return set()
            current = info.annotation
        else:
            current = _value_annotation(current)
        node = node[part] if isinstance(node, (dict, list)) else None
    final = _pick_model(current, node)
    if isinstance(final, type) and issubclass(final, BaseModel):
        return set(final.model_fields)
    return set()


def _members(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            found.extend(_members(arg))
        return found
    return [annotation]


def _pick_model(annotation: Any, node: Any) -> Any:
    members = _members(annotation)
    if isinstance(node, dict):
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) > 1 and "type" in node:
            # A job: the member whose `type` literal matches.
            for m in models:
                field = m.model_fields.get("type")
                if field is not None and node["type"] in typing.get_args(field.annotation):
                    return m
        if models:
            return models[0]
        dicts = [m for m in members if typing.get_origin(m) is dict]
        return dicts[0] if dicts else None
    if isinstance(node, list):
        lists = [m for m in members if typing.get_origin(m) is list]
        return lists[0] if lists else None
    return members[0] if members else None


def _item_annotation(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[0] if args else None


def _value_annotation(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[1] if len(args) == 2 else None
