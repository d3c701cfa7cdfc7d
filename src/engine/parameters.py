"""Session parameters: coercion from text, the rules of each parameter, and redaction.

Patterns run on the linear-time regular-expression engine inside
pydantic-core (Rust's ``regex`` crate): a pattern cannot backtrack, so no
value can make a check take long. The price is no look-around and no
back-references; a pattern using them is rejected when the pipeline loads.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Annotated, Any

from pydantic import StringConstraints, TypeAdapter, ValidationError
from pydantic_core import SchemaError

from engine.errors import ParameterInvalid, plain
from engine.pipeline import Parameter, ParameterType
from engine.validation import kind_of

MAX_INTEGER = 2**63 - 1
"""Numbers beyond 64 bits cannot travel as JSON numbers to every service."""

REDACTED = "******"
"""What a secret's value is shown as."""

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_TYPE_WORDS = {
    ParameterType.STRING: "a string",
    ParameterType.INTEGER: "an integer",
    ParameterType.FLOAT: "a number",
    ParameterType.BOOLEAN: "true or false",
    ParameterType.ARRAY: "a JSON array",
    ParameterType.OBJECT: "a JSON object",
}


class PatternInvalid(ValueError):
    """A ``validation.pattern`` is not a regular expression Bunsui can run."""


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> TypeAdapter[str]:
    """A matcher for ``pattern`` anchored at both ends (the whole value must match).

    Raises:
        PatternInvalid: the pattern does not compile, with the engine's reason.
    """
    anchored = rf"\A(?:{pattern})\z"
    try:
        return TypeAdapter(Annotated[str, StringConstraints(pattern=anchored)])
    except SchemaError as exc:
        raise PatternInvalid(_regex_reason(str(exc))) from None


def _regex_reason(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else "invalid regular expression"


def matches(pattern: str, value: str) -> bool:
    """Whether the whole of ``value`` matches ``pattern`` (linear time)."""
    try:
        compile_pattern(pattern).validate_python(value)
    except ValidationError:
        return False
    return True


def shown(param: Parameter, value: Any) -> str:
    """A value as error messages and plans may show it: secrets never appear."""
    if param.secret:
        return REDACTED
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    text = plain(text)
    return text if len(text) <= 80 else text[:77] + "..."


def coerce_text(param: Parameter, text: str) -> Any:
    """Turn a command-line value (``k=v``) into a value of the parameter's type.

    Raises:
        ParameterInvalid: the text is not a value of that type.
    """
    kind = param.type
    if kind is ParameterType.STRING:
        return text
    stripped = text.strip()
    if kind is ParameterType.INTEGER:
        try:
            # Bounded before int(): a 100,000-digit text is not worth converting.
            if len(stripped.lstrip("+-")) > 20 and stripped.lstrip("+-").isdigit():
                raise ParameterInvalid(
                    param.name, f"{shown(param, text)} is out of range (at most ±{MAX_INTEGER})."
                )
            return check_type(param, int(stripped, 10))
        except ValueError:
            pass
    elif kind is ParameterType.FLOAT:
        try:
            number = float(stripped)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    elif kind is ParameterType.BOOLEAN:
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
    else:
        try:
            value = json.loads(stripped, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            value = _NOT_JSON
        expected = list if kind is ParameterType.ARRAY else dict
        if isinstance(value, expected):
            return check_type(param, value)
    raise ParameterInvalid(
        param.name,
        f"{shown(param, text)} is not {_TYPE_WORDS[kind]}.",
        _text_hint(param),
    )


_NOT_JSON = object()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _text_hint(param: Parameter) -> str:
    return {
        ParameterType.INTEGER: f"give a whole number, e.g. {param.name}=10.",
        ParameterType.FLOAT: f"give a number, e.g. {param.name}=0.85.",
        ParameterType.BOOLEAN: f"give true or false, e.g. {param.name}=true.",
        ParameterType.ARRAY: f"give a JSON array in single quotes, e.g. {param.name}='[\"a\"]'.",
        ParameterType.OBJECT: f"give a JSON object in quotes, e.g. {param.name}='{{\"k\": 1}}'.",
    }.get(param.type, "")


def check_type(param: Parameter, value: Any) -> Any:
    """Check a typed value (from a parameters file, the API or a default) against the type.

    Integers are accepted where a float is declared (and become floats).

    Raises:
        ParameterInvalid: the value has another type.
    """
    kind = param.type
    if not _has_type(kind, value):
        hint = ""
        if kind is ParameterType.STRING and isinstance(value, (int, float, bool)):
            hint = f'quote it: "{json.dumps(value)}".'
        raise ParameterInvalid(
            param.name,
            f"{shown(param, value)} is {kind_of(value, json_words=True)}, not {_TYPE_WORDS[kind]}.",
            hint,
        )
    if isinstance(value, int) and abs(value) > MAX_INTEGER:
        raise ParameterInvalid(
            param.name, f"{shown(param, value)} is out of range (at most ±{MAX_INTEGER})."
        )
    if isinstance(value, (list, dict)):
        problem = _json_problem(value)
        if problem:
            raise ParameterInvalid(param.name, f"{shown(param, value)} {problem}.")
    if kind is ParameterType.FLOAT:
        return float(value)
    return value


MAX_VALUE_DEPTH = 64


def _json_problem(value: Any) -> str | None:
    """What keeps a nested value from travelling as JSON to every service, if anything."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            return f"nests deeper than {MAX_VALUE_DEPTH} levels"
        if isinstance(node, float) and not math.isfinite(node):
            return "holds a number that is not finite (NaN or infinity)"
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INTEGER:
            return f"holds an integer out of range (at most ±{MAX_INTEGER})"
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return None


def _has_type(kind: ParameterType, value: Any) -> bool:
    if kind is ParameterType.STRING:
        return isinstance(value, str)
    if kind is ParameterType.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is ParameterType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return isinstance(value, int) or math.isfinite(value)
    if kind is ParameterType.BOOLEAN:
        return isinstance(value, bool)
    if kind is ParameterType.ARRAY:
        return isinstance(value, list)
    return isinstance(value, dict)


def check_rules(param: Parameter, value: Any) -> None:
    """Check a value of the right type against ``validation`` (pattern, min/max, enum).

    Raises:
        ParameterInvalid: naming the parameter, the value (unless secret) and the rule.
    """
    rules = param.validation
    if rules is None:
        return
    what = shown(param, value)
    if rules.enum is not None and value not in rules.enum:
        choices = ", ".join(json.dumps(choice, ensure_ascii=False) for choice in rules.enum)
        close = (
            difflib.get_close_matches(value, [c for c in rules.enum if isinstance(c, str)], 1)
            if isinstance(value, str)
            else []
        )
        raise ParameterInvalid(
            param.name,
            f"{what} is not one of the allowed values (validation.enum): {choices}.",
            f"did you mean {close[0]!r}?" if close and not param.secret else "",
        )
    if rules.pattern is not None and isinstance(value, str) and not matches(rules.pattern, value):
        raise ParameterInvalid(
            param.name, f"{what} does not match the pattern {rules.pattern!r} (validation.pattern)."
        )
    measure, noun = _measure(param, value)
    if measure is None:
        return
    has = f"{what} has length {measure}, which is" if noun else f"{what} is"
    if rules.min is not None and measure < rules.min:
        raise ParameterInvalid(
            param.name, f"{has} below the minimum{noun} {_num(rules.min)} (validation.min)."
        )
    if rules.max is not None and measure > rules.max:
        raise ParameterInvalid(
            param.name, f"{has} above the maximum{noun} {_num(rules.max)} (validation.max)."
        )


def _measure(param: Parameter, value: Any) -> tuple[float | None, str]:
    if param.type in (ParameterType.INTEGER, ParameterType.FLOAT):
        return value, ""
    if param.type in (ParameterType.STRING, ParameterType.ARRAY):
        return len(value), " length"
    return None, ""


def _num(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def check_value(param: Parameter, value: Any) -> Any:
    """Type, then rules; returns the value in its canonical type."""
    value = check_type(param, value)
    check_rules(param, value)
    return value


def resolve_parameters(
    declared: Sequence[Parameter],
    values: Mapping[str, Any] | None = None,
    text_values: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The full, checked parameter set of a session.

    Args:
        declared: The pipeline's parameters.
        values: Typed values (a parameters file, an API body).
        text_values: Command-line ``k=v`` values, coerced by the declared type;
            they win over ``values`` for the same name.

    Returns:
        Every declared parameter with a value: given, or the default; null
        for an optional parameter given no value and having no default.

    Raises:
        ParameterInvalid: for the first unknown, missing or invalid parameter.
    """
    by_name = {param.name: param for param in declared}
    given: dict[str, Any] = {}
    for name, value in (values or {}).items():
        given[name] = (name, value, False)
    for name, text in (text_values or {}).items():
        given[name] = (name, text, True)
    resolved: dict[str, Any] = {}
    for name, value, is_text in given.values():
        param = by_name.get(name)
        if param is None:
            close = difflib.get_close_matches(name, list(by_name), 1, 0.6)
            known = ", ".join(by_name) or "none"
            raise ParameterInvalid(
                name,
                "the pipeline has no such parameter.",
                f"did you mean '{close[0]}'?" if close else f"the parameters are: {known}.",
            )
        typed = coerce_text(param, value) if is_text else value
        resolved[name] = check_value(param, typed)
    for param in declared:
        if param.name in resolved:
            continue
        if param.has_default:
            default = param.default
            resolved[param.name] = default if default is None else check_type(param, default)
        elif not param.required:
            # Declared but not given: null, so ${name} never falls through to upstream outputs.
            resolved[param.name] = None
        else:
            raise ParameterInvalid(
                param.name,
                "is required and was not given.",
                f"add {param.name}=<{param.type.value}> to --parameters.",
            )
    return resolved


def redacted(declared: Sequence[Parameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """The values with every secret parameter's value replaced by :data:`REDACTED`."""
    secrets = {param.name for param in declared if param.secret}
    return {name: REDACTED if name in secrets else value for name, value in values.items()}
