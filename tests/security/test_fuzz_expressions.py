"""The expression evaluator fuzzed against hostile values, not only hostile text.

tests/unit/test_expressions_properties.py throws hostile text at the parser
and evaluates generated expressions against a tame scope. But a scope holds
what jobs returned: JSON a job controls, so as deep, as long, as large or as
odd as JSON allows (a container's output is read with Python's json module,
which takes NaN and Infinity too). Here generated expressions (every function,
every operator, indexing, ``default``) read such values, inside templates and
conditions as well. Each ends in a value or an ExpressionError on one clear
line; nothing else escapes, and no result is more than a bounded size.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from engine.errors import BunsuiError, ExpressionError
from engine.expressions import MAX_PRODUCED, MappingScope, parse_expression, truth
from engine.templates import parse_condition, parse_template
from engine.values import MAX_LIST_LENGTH, MAX_STRING_LENGTH, MAX_VALUE_DEPTH
from tests.security.fuzzing import assert_clear, fuzz


def nested(depth: int, make: Any) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = make(value)
    return value


HOSTILE = {
    "deep": nested(5 * MAX_VALUE_DEPTH, lambda v: [v]),
    "deepobj": nested(5 * MAX_VALUE_DEPTH, lambda v: {"k": v}),
    "big": "x" * (MAX_STRING_LENGTH - 10),
    "many": list(range(MAX_LIST_LENGTH)),
    "wide": {f"k{i}": i for i in range(20_000)},
    "huge": 10**100,
    "negative": -(10**30),
    "nan": float("nan"),
    "inf": float("inf"),
    "tiny": 5e-324,
    "odd": "\x00\u202e\ud800\U0010ffff\x1b[2J",
    "keys": {"": 1, "__class__": 2, "a.b": 3, "\x00": 4, "${x}": 5},
    "mixed": [None, True, 1, 1.5, "s", [], {}],
    "n": 3,
    "s": "text",
}
"""Values a job's output may hold: each stretches one limit of JSON or of the language."""
SCOPE = MappingScope(HOSTILE)

FUNCTIONS = [
    "len",
    "min",
    "max",
    "sum",
    "abs",
    "round",
    "int",
    "float",
    "str",
    "bool",
    "lower",
    "upper",
    "trim",
    "keys",
    "values",
    "any",
    "all",
    "json",
    "from_json",
]
TWO_ARGUMENTS = ["startswith", "endswith", "contains", "default", "round", "min", "max"]
OPERATORS = ["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "in", "not in"]
LEAVES = st.one_of(
    st.sampled_from(sorted(HOSTILE)),
    st.sampled_from(["0", "1", "-1", "2.5", "1e308", "'k'", "''", "[]", "{}", "null", "true"]),
    st.sampled_from(["9223372036854775807", "'[' * 3", "'[[[[[]]]]]'", "'{\"a\": NaN}'"]),
)
EXPRESSIONS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(FUNCTIONS), inner).map(lambda p: f"{p[0]}({p[1]})"),
        st.tuples(st.sampled_from(TWO_ARGUMENTS), inner, inner).map(
            lambda p: f"{p[0]}({p[1]}, {p[2]})"
        ),
        st.tuples(inner, st.sampled_from(OPERATORS), inner).map(
            lambda p: f"({p[0]} {p[1]} {p[2]})"
        ),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}[{p[1]}]"),
        st.tuples(inner, st.sampled_from(["k", "a", "__class__", "keys"])).map(
            lambda p: f"{p[0]}.{p[1]}"
        ),
        st.tuples(st.sampled_from(["-", "not "]), inner).map(lambda p: f"({p[0]}{p[1]})"),
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
    ),
    max_leaves=8,
)


def size(value: Any) -> int:
    """Characters and items a value holds (how much an evaluation made, at most)."""
    total, stack = 0, [value]
    while stack:
        node = stack.pop()
        total += 1
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
            total += sum(len(k) for k in node)
    return total


LARGEST = max(size(value) for value in HOSTILE.values())


def outcome(action: Any) -> Any:
    """The value of ``action()``, or the ExpressionError it raised (checked to be clear)."""
    try:
        return action()
    except BunsuiError as exc:
        assert isinstance(exc, ExpressionError), exc
        assert_clear(exc)
        return exc


@fuzz(400)
@given(EXPRESSIONS)
def test_expressions_over_hostile_values_end_in_a_value_or_a_clear_error(text: str) -> None:
    expression = outcome(lambda: parse_expression(text))
    if isinstance(expression, ExpressionError):
        event("refused by the parser")
        return
    value = outcome(lambda: expression.evaluate(SCOPE))
    if isinstance(value, ExpressionError):
        event("refused on evaluation")
        return
    event("evaluated")
    assert size(value) <= LARGEST + MAX_PRODUCED, text


@fuzz(200)
@given(st.lists(EXPRESSIONS, min_size=1, max_size=3), st.sampled_from(["", "at ", "\n"]))
def test_templates_over_hostile_values_render_or_refuse_clearly(
    parts: list[str], glue: str
) -> None:
    text = glue.join("${" + part + "}" for part in parts)
    template = outcome(lambda: parse_template(text))
    if isinstance(template, ExpressionError):
        return
    rendered = outcome(lambda: template.render(SCOPE))
    if isinstance(rendered, str):
        assert len(rendered) <= len(parts) * MAX_STRING_LENGTH + len(text)


@fuzz(200)
@given(EXPRESSIONS)
def test_conditions_over_hostile_values_decide_or_refuse_clearly(text: str) -> None:
    condition = outcome(lambda: parse_condition(text))
    if isinstance(condition, ExpressionError):
        return
    value = outcome(lambda: condition.evaluate(SCOPE))
    if not isinstance(value, ExpressionError):
        outcome(lambda: truth(value, text))


def test_every_function_of_every_hostile_value_ends_in_a_value_or_a_clear_error() -> None:
    # Exhaustive where random trees are unlikely to land: each function on each value.
    names = sorted(HOSTILE)
    texts = [f"{f}({a})" for f in FUNCTIONS for a in names]
    texts += [f"{f}({a}, {b})" for f in TWO_ARGUMENTS for a in names for b in ("n", "s", a)]
    failures = []
    for text in texts:
        try:
            value = outcome(lambda text=text: parse_expression(text).evaluate(SCOPE))
        except Exception as exc:  # collected, so that one run names every failure
            failures.append(f"{text}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(value, ExpressionError):
            assert size(value) <= LARGEST + MAX_PRODUCED, text
    assert not failures, "\n".join(failures)


def test_every_operator_between_hostile_values_ends_in_a_value_or_a_clear_error() -> None:
    names = sorted(HOSTILE)
    failures = []
    for op in OPERATORS:
        for a in names:
            for b in names:
                text = f"{a} {op} {b}"
                try:
                    outcome(lambda text=text: parse_expression(text).evaluate(SCOPE))
                except Exception as exc:
                    failures.append(f"{text}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "text",
    ["round(nan)", "round(inf)", "round(-inf)", "int(nan)", "round(nan) > 1", "int(inf) + 1"],
)
def test_a_number_that_is_not_finite_is_an_expression_error(text: str) -> None:
    # Container outputs are read with json.loads, which returns NaN and Infinity.
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text).evaluate(MappingScope(json.loads('{"nan": NaN, "inf": Infinity}')))
    assert_clear(caught.value)


@pytest.mark.parametrize(
    "text", ["a +\n 'x' + 1", "zz\n", "o['\x1b[31m'] + 1", "'\u2028' + 1", "len(\x1b)"]
)
def test_an_error_quotes_the_expression_on_one_line(text: str) -> None:
    # A multi-line YAML value (a literal block) can hold an expression over several lines.
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text).evaluate(MappingScope({"a": 1, "o": {}}))
    assert_clear(caught.value)
