"""Property tests of the expression language: hostile text, generated trees, no code runs."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import BunsuiError, ExpressionError, ExpressionSyntaxError
from engine.expressions import MappingScope, parse_expression
from engine.templates import parse_condition, parse_template, render_value

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCOPE = MappingScope(
    {
        "a": 3,
        "b": -2.5,
        "s": "text",
        "t": True,
        "n": None,
        "xs": [1, "two", None, [3]],
        "o": {"k": "v", "n": {"m": [0, 1]}},
        "jobs": {"j": {"output": {"acc": 0.9}}},
    }
)

# Pieces of the language, so that random sequences reach deep into the parser.
TOKENS = [
    "a",
    "b",
    "s",
    "t",
    "n",
    "xs",
    "o",
    "jobs",
    "zz",
    "__class__",
    "1",
    "0",
    "-1",
    "2.5",
    "1e3",
    "1e999",
    "9223372036854775807",
    "'x'",
    '"y"',
    "'}'",
    "'",
    '"',
    "\\",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    ".",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "!",
    "and",
    "or",
    "not",
    "in",
    "true",
    "null",
    "None",
    "len(",
    "min(",
    "default(",
    "json(",
    "from_json(",
    "str(",
    "int(",
    "round(",
    "keys(",
    "sum(",
    "eval(",
    "__import__(",
    "${",
    "$${",
    "$",
    " ",
    "\n",
    "é",
    "\x00",
]
# Only tokens the lexer accepts, spaced apart, so that the parser itself is exercised.
LEXICAL = [
    t
    for t in TOKENS
    if t.strip() and t not in ("'", '"', "\\", "=", "!", "$", "${", "$${", "é", "\x00")
]
token_text = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)
parser_text = st.lists(st.sampled_from(LEXICAL), max_size=60).map(" ".join)
any_text = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(codec="utf-8"), max_size=80),
    token_text,
    parser_text,
    parser_text.map(lambda t: "${" + t + "}"),
)


def _only_bunsui_errors(action: Any) -> Any:
    try:
        return action()
    except BunsuiError as exc:
        assert isinstance(exc, ExpressionError)
        return exc


@SETTINGS
@given(any_text)
def test_any_text_raises_nothing_but_expression_errors(text: str) -> None:
    template = _only_bunsui_errors(lambda: parse_template(text))
    if not isinstance(template, Exception):
        _only_bunsui_errors(lambda: template.render(SCOPE))
        _only_bunsui_errors(lambda: template.render(SCOPE, keep_unresolved=True))
        template.references()
    condition = _only_bunsui_errors(lambda: parse_condition(text))
    if not isinstance(condition, Exception):
        _only_bunsui_errors(lambda: condition.evaluate(SCOPE))
    expression = _only_bunsui_errors(lambda: parse_expression(text))
    if not isinstance(expression, Exception):
        _only_bunsui_errors(lambda: expression.evaluate(SCOPE))
        expression.references()


@SETTINGS
@given(st.one_of(token_text, parser_text))
def test_errors_point_inside_the_text(text: str) -> None:
    outcome = _only_bunsui_errors(lambda: parse_expression(text).evaluate(SCOPE))
    if isinstance(outcome, ExpressionError) and outcome.position is not None:
        assert 0 <= outcome.position <= len(text)


# ------------------------------------------------------------------ generated expressions

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def literal(value: Any) -> str:
    """The expression text of a JSON value."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return f"({value!r})" if value < 0 else repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
        return "'" + escaped.replace("\t", "\\t").replace("\r", "\\r") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@SETTINGS
@given(JSON_VALUES)
def test_literals_round_trip(value: Any) -> None:
    text = literal(value)
    result = parse_expression(text).evaluate(SCOPE)
    assert _same(result, value)
    assert parse_template("${" + text + "}").render(SCOPE) == value


BINARY = [
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not in",
    "and",
    "or",
]
FUNCTIONS_1 = [
    "len",
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
    "sum",
    "min",
    "max",
]
leaves = st.one_of(
    JSON_SCALARS.map(literal),
    st.sampled_from(
        ["a", "b", "s", "t", "n", "xs", "o", "o.k", "o.n.m[1]", "xs[-1]", "jobs.j.output.acc"]
    ),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(BINARY), inner).map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
        st.tuples(st.sampled_from(["-", "not "]), inner).map(lambda p: f"({p[0]}({p[1]}))"),
        st.tuples(st.sampled_from(FUNCTIONS_1), inner).map(lambda p: f"{p[0]}({p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"default({p[0]}, {p[1]})"),
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}[{p[1]}]"),
    ),
    max_leaves=10,
)


def _parse_tree(text: str) -> Any:
    try:
        return parse_expression(text)
    except ExpressionSyntaxError as exc:  # a generated tree is well formed but may be too big
        assert "nests deeper" in exc.message or "longer than" in exc.message, exc
        return None


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


@SETTINGS
@given(trees)
def test_well_formed_trees_give_json_or_expression_error(text: str) -> None:
    expression = _parse_tree(text)
    if expression is None:
        return
    try:
        result = expression.evaluate(SCOPE)
    except ExpressionError as exc:
        assert exc.expression == text
        assert exc.position is None or 0 <= exc.position < len(text)
        return
    assert _is_json(result)


@SETTINGS
@given(trees)
def test_single_template_renders_as_evaluate(text: str) -> None:
    if _parse_tree(text) is None:
        return
    template = parse_template("${" + text + "}")
    assert template.is_single
    try:
        expected = parse_expression(text).evaluate(SCOPE)
    except ExpressionError as exc:
        with pytest.raises(type(exc)):
            template.render(SCOPE)
        return
    assert _same(template.render(SCOPE), expected)


@SETTINGS
@given(st.text(max_size=200).filter(lambda t: "${" not in t))
def test_text_without_templates_renders_unchanged(text: str) -> None:
    assert parse_template(text).render(SCOPE) == text
    assert render_value(text, SCOPE) == text


@SETTINGS
@given(
    st.lists(
        st.one_of(st.text(alphabet="$${}ab' ", max_size=6), trees.map("${{{}}}".format)), max_size=6
    ).map("".join)
)
def test_keep_unresolved_changes_only_unknown_names(text: str) -> None:
    try:
        template = parse_template(text)
        expected = template.render(SCOPE)
    except ExpressionError:
        return
    # With every name known, keeping changes nothing...
    assert _same(template.render(SCOPE, keep_unresolved=True), expected)
    # ...and with a name unknown, its segment shows as its own text.
    unknown = text.replace("${", "${zz + ")
    kept = parse_template(unknown).render(SCOPE, keep_unresolved=True)
    if template.is_single:
        assert kept == unknown
    for expression in parse_template(unknown).expressions:
        assert "${" + expression.source + "}" in kept


# ------------------------------------------------------------------ no input runs code

HOSTILE = [
    "__import__('os').system('touch {sentinel}')",
    "().__class__.__bases__[0].__subclasses__()",
    "open('{sentinel}', 'w')",
    "eval('1')",
    "exec('x = 1')",
    "compile('1', 'f', 'eval')",
    "a.__class__",
    "o.__dict__",
    "s.upper()",
    "len.__globals__",
    "xs.append(1)",
    "globals()",
    "getattr(o, 'k')",
    "lambda: 1",
    "[x for x in xs]",
    "a if t else b",
    "__builtins__",
    "o['__class__']",
    "str.__mro__",
    "default(__import__('os'), 1)",
    "${open('{sentinel}')}",
    "f'{{a}}'",
    "`touch {sentinel}`",
    "$(touch {sentinel})",
]


@pytest.fixture
def no_code_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the expression language called eval/exec/compile")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)


@pytest.mark.parametrize("source", HOSTILE)
def test_no_input_runs_code(source: str, tmp_path: Path, no_code_runs: None) -> None:
    sentinel = tmp_path / "sentinel"
    text = source.replace("{sentinel}", str(sentinel))
    for action in (
        lambda: parse_expression(text).evaluate(SCOPE),
        lambda: parse_template("${" + text + "}").render(SCOPE),
        lambda: parse_condition(text).evaluate(SCOPE),
    ):
        with pytest.raises(ExpressionError):
            action()
    assert not sentinel.exists()


@settings(max_examples=150, deadline=None)
@given(parser_text)
def test_random_token_text_never_calls_eval(text: str) -> None:
    calls: list[str] = []
    saved = builtins.eval, builtins.exec, builtins.compile
    builtins.eval = builtins.exec = builtins.compile = (  # type: ignore[assignment]
        lambda *args, **kwargs: calls.append("called")
    )
    try:
        _only_bunsui_errors(lambda: parse_expression(text).evaluate(SCOPE))
    finally:
        builtins.eval, builtins.exec, builtins.compile = saved
    assert not calls
