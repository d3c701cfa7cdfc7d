"""Parameter coercion and rules (engine/parameters.py) fuzzed with any text and any value.

A session's parameters come from a command line (``k=v`` text), a parameters
file or an API body (JSON values). Whatever arrives, resolving ends in the
checked set (every declared parameter, each of its declared type and within
its rules) or in a ParameterInvalid: one clear line that names a parameter
and never shows a secret's value. The declarations themselves are generated
and pass through the loader first, as a pipeline's would.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from engine.errors import ParameterInvalid, PipelineInvalid
from engine.loader import load_pipeline
from engine.parameters import MAX_INTEGER, REDACTED, coerce_text, matches, resolve_parameters
from engine.pipeline import Parameter, ParameterType
from tests.security.fuzzing import assert_clear, assert_problems_clear, fuzz

SECRET = "Zq-secret-7Hh2"
"""A secret's value in these tests: distinctive, so that finding it anywhere is a leak."""

TYPES = [t.value for t in ParameterType]
NUMBER_TEXT = st.sampled_from(
    [
        *["0", "-0", "+7", "1e3", "1E-3", "0x10", "1_000", " 12 ", "١٢", "1.5", ".5", "5."],
        *["nan", "inf", "-Infinity", "", "  ", "9" * 19, "9" * 20, "9" * 21, "-" + "9" * 25],
    ]
)
WORD_TEXT = st.sampled_from(
    [
        *["true", "False", "YES", "on", "0", "1", "no", " off ", "t", "null", "None", "[]"],
        *["{}", '["a", 1]', '{"k": [1, {"x": null}]}', "[NaN]", '{"a": Infinity}', "[1,]"],
        *["[" * 100 + "]" * 100, "[" * 5000, '"text"', '{"a":1,"a":2}', "[1e999]", SECRET],
    ]
)
TEXT = st.one_of(st.text(max_size=60), NUMBER_TEXT, WORD_TEXT)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.just(SECRET),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
NAMES = st.sampled_from(["a", "b", "token", "n", "items", "cfg"])


VALUES_OF = {
    "string": st.text(max_size=12) | st.just(SECRET),
    "integer": st.integers(-(2**65), 2**65),
    "float": st.floats(-1e6, 1e6) | st.integers(-100, 100),
    "boolean": st.booleans(),
    "array": st.lists(st.integers(0, 9) | st.text(max_size=3), max_size=5),
    "object": st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=3),
}
"""Values of each declared type (defaults and enum entries, mostly of the right type)."""


@st.composite
def rules(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A ``validation`` block that mostly fits the type; one in five is anything at all."""
    wild = draw(st.integers(0, 4)) == 0
    found: dict[str, Any] = {}
    if (wild or kind in ("string", "integer", "float", "array")) and draw(st.booleans()):
        found["min"] = draw(st.integers(0, 5) | (st.floats(-10, 10) if wild else st.nothing()))
    if (wild or kind in ("string", "integer", "float", "array")) and draw(st.booleans()):
        found["max"] = draw(st.integers(5, 50) | (st.just(math.inf) if wild else st.nothing()))
    if (wild or kind == "string") and draw(st.integers(0, 2)) == 0:
        found["pattern"] = draw(
            st.sampled_from(["[a-z]+", "(a+)+$", "\\d{1,3}", "(?=x)", "[", ".*", "Zq-.*", "a|b"])
        )
    if draw(st.integers(0, 3)) == 0:
        values = JSON_VALUES if wild else VALUES_OF[kind]
        found["enum"] = draw(st.lists(values, min_size=1, max_size=4))
    return found


@st.composite
def declarations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One to four parameter declarations, of any type, maybe secret, maybe with a default."""
    found = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)):
        kind = draw(st.sampled_from(TYPES))
        declared: dict[str, Any] = {"name": name, "type": kind}
        if draw(st.booleans()):
            declared["validation"] = draw(rules(kind))
        if draw(st.integers(0, 2)) == 0:
            declared["default"] = draw(VALUES_OF[kind] | JSON_VALUES)
        declared["required"] = draw(st.booleans())
        declared["secret"] = draw(st.booleans())
        found.append(declared)
    return found


def declared_parameters(declared: list[dict[str, Any]]) -> list[Parameter] | None:
    """The declarations as the loader reads them, or None when it refuses them (clearly)."""
    document = {
        "version": "1.1",
        "name": "p",
        "parameters": declared,
        "jobs": [{"id": "a", "type": "custom", "parameters": {"command": "true"}}],
    }
    text = yaml.safe_dump(document, sort_keys=False)
    try:
        return load_pipeline(text).parameters
    except PipelineInvalid as exc:
        assert_problems_clear(exc, text)
        return None


def assert_within_rules(param: Parameter, value: Any) -> None:
    """A resolved value has its declared type, stays JSON, and follows its rules."""
    json.dumps(value, allow_nan=False)
    kind = param.type
    expected = {
        ParameterType.STRING: str,
        ParameterType.INTEGER: int,
        ParameterType.FLOAT: float,
        ParameterType.BOOLEAN: bool,
        ParameterType.ARRAY: list,
        ParameterType.OBJECT: dict,
    }[kind]
    assert isinstance(value, expected), (param, value)
    if kind is ParameterType.INTEGER:
        assert not isinstance(value, bool) and abs(value) <= MAX_INTEGER
    rules = param.validation
    if rules is None:
        return
    if rules.enum is not None:
        assert value in rules.enum
    if rules.pattern is not None and isinstance(value, str):
        assert matches(rules.pattern, value)
    measure = len(value) if isinstance(value, str | list) else value
    if isinstance(measure, int | float) and not isinstance(measure, bool):
        assert rules.min is None or measure >= rules.min
        assert rules.max is None or measure <= rules.max


def assert_refusal_clear(
    error: ParameterInvalid, declared: list[Parameter], given: dict[str, Any]
) -> None:
    """One clear line that names a declared or given parameter, and that shows nothing a
    secret parameter was given (when no other parameter was given the same)."""
    assert_clear(error)
    assert error.name in {p.name for p in declared} | set(given), error
    secrets = {p.name for p in declared if p.secret}
    for name, value in given.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        shared = any(v == value for n, v in given.items() if n != name)
        if name in secrets and len(text) >= 6 and not shared:
            assert text not in str(error), f"secret {name}'s value shown: {error}"


@fuzz(400)
@given(kind=st.sampled_from(TYPES), text=TEXT)
def test_any_text_becomes_a_value_of_the_type_or_a_clear_refusal(kind: str, text: str) -> None:
    param = Parameter(name="p", type=kind)
    try:
        value = coerce_text(param, text)
    except ParameterInvalid as exc:
        event(f"{kind}: refused")
        assert_refusal_clear(exc, [param], {})
        assert exc.name == "p"
    else:
        event(f"{kind}: coerced")
        assert_within_rules(param, value)


@fuzz(300)
@given(
    value=st.one_of(
        st.integers(-MAX_INTEGER, MAX_INTEGER),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.lists(st.integers(-100, 100) | st.text(max_size=5), max_size=5),
        st.dictionaries(st.text(max_size=5), st.integers() | st.none(), max_size=4),
    )
)
def test_a_value_written_as_text_comes_back_as_itself(value: Any) -> None:
    kind = {bool: "boolean", int: "integer", float: "float", list: "array", dict: "object"}
    param = Parameter(name="p", type=kind[type(value)])
    text = json.dumps(value) if isinstance(value, list | dict) else str(value).lower()
    if isinstance(value, float):
        text = repr(value)
    try:
        coerced = coerce_text(param, text)
    except ParameterInvalid as exc:  # an object or list holding integers beyond 64 bits
        assert "out of range" in exc.message, exc
        return
    assert coerced == value and type(coerced) is type(value)


@fuzz(300)
@given(
    declared=declarations(),
    texts=st.dictionaries(NAMES, TEXT, max_size=4),
    values=st.dictionaries(NAMES | st.text(max_size=8), JSON_VALUES, max_size=3),
)
def test_any_values_resolve_to_checked_parameters_or_a_clear_refusal(
    declared: list[dict[str, Any]], texts: dict[str, str], values: dict[str, Any]
) -> None:
    parameters = declared_parameters(declared)
    if parameters is None:
        event("declarations refused by the loader")
        return
    try:
        resolved = resolve_parameters(parameters, values, texts)
    except ParameterInvalid as exc:
        event("refused")
        assert_refusal_clear(exc, parameters, {**values, **texts})
        return
    event("resolved")
    assert set(resolved) == {p.name for p in parameters}
    for param in parameters:
        if resolved[param.name] is not None:
            assert_within_rules(param, resolved[param.name])


@fuzz(200)
@given(
    kind=st.sampled_from(["string", "array"]),
    secret=st.sampled_from([SECRET, f"{SECRET}\n", f"x{SECRET}x"]),
    rule=st.sampled_from(
        [{"pattern": "[0-9]+"}, {"enum": ["a", "b"]}, {"max": 3}, {"min": 40}, {}]
    ),
    as_text=st.booleans(),
)
def test_a_secret_never_shows_in_a_refusal(
    kind: str, secret: str, rule: dict[str, Any], as_text: bool
) -> None:
    param = Parameter(name="token", type=kind, secret=True, validation=rule or None)
    value: Any = secret if kind == "string" else [secret]
    try:
        if as_text:
            text = value if kind == "string" else json.dumps(value)
            resolve_parameters([param], text_values={"token": text})
        else:
            resolve_parameters([param], values={"token": value})
    except ParameterInvalid as exc:
        assert_clear(exc)
        assert SECRET not in str(exc) and REDACTED in str(exc)


@pytest.mark.parametrize(
    ("pattern", "value", "matched"),
    [
        ("(a+)+$", "a" * 50_000 + "!", False),
        ("(a|aa)+$", "a" * 50_000 + "!", False),
        ("(a|a?)+b", "a" * 50_000, False),
        ("(.*a){20}", "a" * 5_000, True),
        ("([a-z]+)*[0-9]", "x" * 50_000, False),
    ],
)
def test_a_pattern_never_backtracks(pattern: str, value: str, matched: bool) -> None:
    # Patterns that take a backtracking engine longer than the universe has existed.
    param = Parameter(name="p", validation={"pattern": pattern})
    assert matches(pattern, value) is matched
    if not matched:
        with pytest.raises(ParameterInvalid, match="does not match the pattern"):
            resolve_parameters([param], text_values={"p": value})


# ---------------------------------------------------------------------- what the fuzzing found


def test_a_default_under_a_pattern_the_engine_cannot_run_is_a_located_problem() -> None:
    # The pattern is reported; checking the default against it must not raise past the loader.
    text = (
        'version: "1.1"\nname: p\nparameters:\n'
        '  - {name: a, type: string, default: x, validation: {pattern: "(?=x)"}}\n'
        'jobs: [{id: j, type: custom, parameters: {command: "true"}}]\n'
    )

    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(text, "pattern.yaml")

    assert [p.path for p in caught.value.problems] == ["parameters[0].validation.pattern"]


@pytest.mark.parametrize("name", ["a\x1b[2Jb", "a\nb", "a\u202eb"])
def test_an_unknown_parameter_is_named_on_one_clear_line(name: str) -> None:
    with pytest.raises(ParameterInvalid) as caught:
        resolve_parameters([Parameter(name="a")], values={name: 1})

    assert_clear(caught.value)


@pytest.mark.parametrize("key", ["\x7f", "\x85", "\u2028", "\x9b31m"])
def test_a_value_is_shown_on_one_clear_line(key: str) -> None:
    # json.dumps(..., ensure_ascii=False) escapes C0 controls only.
    with pytest.raises(ParameterInvalid) as caught:
        resolve_parameters([Parameter(name="a")], values={"a": {key: 1}})

    assert_clear(caught.value)
