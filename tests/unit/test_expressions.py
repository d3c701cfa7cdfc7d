"""Unit tests of the expression language: operators, functions, templates, errors, limits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from engine.errors import BunsuiError, ExpressionError, ExpressionSyntaxError, UnknownName
from engine.expressions import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_PRODUCED,
    MAX_SEGMENTS,
    MappingScope,
    Reference,
    parse_expression,
    truth,
)
from engine.templates import (
    is_template,
    parse_condition,
    parse_template,
    render_value,
    value_references,
)
from engine.values import MAX_STRING_LENGTH, MAX_VALUE_DEPTH

VALUES: dict[str, Any] = {
    "a": 1,
    "b": 2.5,
    "s": "hello",
    "t": True,
    "f": False,
    "n": None,
    "xs": [1, 2, 3],
    "obj": {"k": "v", "n": None},
    "model_name": "churn",
    "model_version": "v3",
    "evaluation_passed": True,
    "evaluation_accuracy": 0.91,
    "evaluation_threshold": 0.9,
    "hyperparameters": {"max_depth": 10, "n_estimators": 100},
    "item": {"max_depth": 6},
    "jobs": {
        "evaluate_model": {"output": {"metrics": {"f1": 0.75, "acc": 0.9}}},
        "train": {"output": {"metrics": [{"f1": 0.5}], "acc": 0.8, "none": None}},
    },
}
SCOPE = MappingScope(VALUES)


def ev(source: str, values: dict[str, Any] | None = None) -> Any:
    return parse_expression(source).evaluate(MappingScope(VALUES if values is None else values))


def error_of(source: str, values: dict[str, Any] | None = None) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        ev(source, values)
    return info.value


# ------------------------------------------------------------------ operators and literals


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # literals
        ("42", 42),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("1.5E-1", 0.15),
        ("'a\\'b'", "a'b"),
        ('"a\\"b"', 'a"b'),
        ("'a\\\\b'", "a\\b"),
        ("'x\\ny\\tz\\r'", "x\ny\tz\r"),
        ("'}'", "}"),
        ("true", True),
        ("True", True),
        ("false", False),
        ("False", False),
        ("null", None),
        ("None", None),
        ("[1, 'a', null]", [1, "a", None]),
        ("[]", []),
        ("[1, 2,]", [1, 2]),
        ('{"k": 1, "l": [a]}', {"k": 1, "l": [1]}),
        ("{}", {}),
        # arithmetic
        ("1 + 2", 3),
        ("1 + 2.5", 3.5),
        ("'a' + 'b'", "ab"),
        ("[1] + [2]", [1, 2]),
        ("5 - 7", -2),
        ("3 * 4", 12),
        ("7 / 2", 3.5),
        ("4 / 2", 2.0),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("7.5 % 2", 1.5),
        ("-a", -1),
        ("+b", 2.5),
        ("- -a", 1),
        ("-(1 + 2)", -3),
        # precedence and associativity
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("2 * 3 % 4", 2),
        ("8 / 2 / 2", 2.0),
        ("1 + 2 == 3", True),
        ("not 1 == 2", True),
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("not true or true", True),
        ("not (true or true)", False),
        ("-2 * -3", 6),
        # comparisons
        ("1 == 1.0", True),
        ("true == 1", False),
        ("false == 0", False),
        ("null == null", True),
        ("null == false", False),
        ("[1, [2]] == [1, [2.0]]", True),
        ("[true] == [1]", False),
        ('{"a": 1} == {"a": 1}', True),
        ('{"a": 1} == {"b": 1}', False),
        ("'1' == 1", False),
        ("1 != 2", True),
        ("'a' != 'a'", False),
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 2.5", True),
        ("2 >= 3", False),
        ("'abc' < 'abd'", True),
        ("1 < a < 3", False),
        ("0 < a < 3", True),
        ("3 > 2 > 1", True),
        ("1 < 2 > 3", False),
        # in
        ("'ell' in s", True),
        ("'z' in s", False),
        ("2 in xs", True),
        ("2.0 in xs", True),
        ("true in [1]", False),
        ("'k' in obj", True),
        ("'v' in obj", False),
        ("1 in obj", False),
        ("4 not in xs", True),
        ("'k' not in obj", False),
        ("[1] in [[1], 2]", True),
        # and / or give the deciding operand
        ("a or b", 1),
        ("0 or 'x'", "x"),
        ("n or ''", ""),
        ("a and b", 2.5),
        ("n and a", None),
        ("'' and a", ""),
        ("not n", True),
        ("not xs", False),
        ("not not 'x'", True),
        ("f or t and n", None),
        # access
        ("xs[0]", 1),
        ("xs[-1]", 3),
        ("obj.k", "v"),
        ("obj['k']", "v"),
        ('obj["k"]', "v"),
        ("obj.n", None),
        ("jobs.train.output.metrics[0].f1", 0.5),
        ("xs[a]", 2),
        ("[[1, 2], [3]][0][1]", 2),
        ("{'in': 5}.in", 5),
        ("keys(obj)[0]", "k"),
        ("jobs['train'].output.acc", 0.8),
    ],
)
def test_operators_and_literals(source: str, expected: Any) -> None:
    result = ev(source)
    assert result == expected
    assert type(result) is type(expected)


def test_short_circuit_skips_the_failing_operand() -> None:
    assert ev("t or missing") is True
    assert ev("f and missing") is False
    assert ev("1 > 2 < missing") is False  # a chain stops at the first false link
    with pytest.raises(UnknownName):
        ev("f or missing")


def test_examples_from_the_product() -> None:
    assert ev("evaluation_passed") is True
    assert ev("evaluation_accuracy >= evaluation_threshold") is True
    assert ev("jobs.evaluate_model.output.metrics.f1 > 0.7") is True
    assert ev("item.max_depth") == 6
    assert (
        parse_template("s3://ml-bucket/models/${model_name}/${model_version}").render(SCOPE)
        == "s3://ml-bucket/models/churn/v3"
    )
    assert parse_template("${hyperparameters}").render(SCOPE) == VALUES["hyperparameters"]
    rendered = render_value({"HYPERPARAMETERS": "${hyperparameters}", "N": "n=${a}"}, SCOPE)
    assert rendered == {"HYPERPARAMETERS": {"max_depth": 10, "n_estimators": 100}, "N": "n=1"}
    text = parse_template("HYPERPARAMETERS=${hyperparameters}").render(SCOPE)
    assert text == 'HYPERPARAMETERS={"max_depth": 10, "n_estimators": 100}'
    condition = parse_condition("${evaluation_accuracy >= evaluation_threshold}")
    assert truth(condition.evaluate(SCOPE), condition.source) is True


# ------------------------------------------------------------------ evaluation errors


@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        ("jobs.train.output.acc2", "jobs.train.output has no key 'acc2'; did you mean 'acc'?", 18),
        (
            "jobs.train.output.metrics[3]",
            "jobs.train.output.metrics has no index 3 (it has 1 item)",
            25,
        ),
        ("xs[-4]", "xs has no index -4 (it has 3 items)", 2),
        ("jobs.train.output.none.x", "jobs.train.output.none is null; cannot read key 'x'", 23),
        ("a.x", "a is a number, not an object; cannot read key 'x'", 2),
        ("s[0]", "s is a string, not an object; cannot read [0]", 1),
        ("xs.k", "xs is a list, not an object; cannot read key 'k'; use an index like [0]", 3),
        ("xs['k']", "xs is a list; its indexes are integers, got a string", 2),
        ("xs[true]", "xs is a list; its indexes are integers, got a boolean", 2),
        ("obj[1]", "obj is an object; its keys are strings, got a number", 3),
        ("(obj).zz", "(obj) has no key 'zz'", 6),
        ("1 + 'a'", "cannot add number and string; use str() to turn a value into text", 2),
        ("[1] + {}", "cannot add list and object", 4),
        ("true + 1", "cannot add boolean and number", 5),
        ("'ab' * 3", "'*' needs two numbers, got string and number", 5),
        ("[1] * 3", "'*' needs two numbers, got list and number", 4),
        ("'a' - 'b'", "'-' needs two numbers, got string and string", 4),
        ("1 / 0", "division by zero", 2),
        ("1 // 0.0", "division by zero", 2),
        ("1 % 0", "modulo by zero", 2),
        ("'a' < 1", "'<' needs two numbers or two strings, got string and number", 4),
        ("true >= false", "'>=' needs two numbers or two strings, got boolean and boolean", 5),
        ("[1] > [0]", "'>' needs two numbers or two strings, got list and list", 4),
        ("null <= 1", "'<=' needs two numbers or two strings, got null and number", 5),
        ("1 in 5", "'in' needs a string, list or object on the right, got number", 2),
        ("1 in 'abc'", "'in' a string needs a string to look for, got number", 2),
        ("-'a'", "unary '-' needs a number, got string", 0),
        ("-true", "unary '-' needs a number, got boolean", 0),
        ("9223372036854775807 + 1", "integer result is out of range", 20),
        ("-9223372036854775807 - 2", "integer result is out of range", 21),
        ("3037000500 * 3037000500", "integer result is out of range", 11),
        ("1e308 * 10", "result is not a finite number", 6),
        ("1e308 + 1e308", "result is not a finite number", 6),
    ],
)
def test_evaluation_errors(source: str, message: str, position: int) -> None:
    err = error_of(source)
    assert err.message.startswith(message), err.message
    assert err.position == position
    assert err.expression == source
    assert f"(at character {position + 1} of " in str(err)
    assert not isinstance(err, ExpressionSyntaxError)


def test_unknown_name_is_located_and_keeps_the_scope_message() -> None:
    err = error_of("1 + model_nme")
    assert isinstance(err, UnknownName)
    assert err.name == "model_nme"
    assert err.position == 4
    assert err.message == "unknown name 'model_nme'; did you mean 'model_name'?"

    class Custom:
        def resolve(self, name: str) -> Any:
            raise UnknownName(name, f"job output '{name}' is not known yet")

    custom = parse_expression("x + 1")
    with pytest.raises(UnknownName) as info:
        custom.evaluate(Custom())
    assert info.value.message == "job output 'x' is not known yet"
    assert info.value.position == 0


# ------------------------------------------------------------------ syntax errors


@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        ("", "empty expression", 0),
        ("   ", "empty expression", 0),
        ("1 +", "expected a value, got end of expression", 3),
        ("(1", "expected ')', got end of expression", 2),
        ("[1, 2", "expected ']', got end of expression", 5),
        ("{'a' 1}", "expected ':', got number 1", 5),
        ("{a: 1}", "expected a quoted key, got 'a'", 1),
        ("{'a': 1, 'a': 2}", "duplicate key 'a'", 9),
        ("'abc", "unterminated string", 0),
        ("'a\\qb'", "unknown escape '\\q' in string", 2),
        ("a = 1", "unexpected character '='; use == to compare", 2),
        ("!a", "unexpected character '!'; use 'not'", 0),
        ("a && b", "unexpected character '&'; use 'and'", 2),
        ("a || b", "unexpected character '|'; use 'or'", 2),
        ("a ** 2", "expected a value, got '*'", 3),
        ("${a}", "unexpected character '$'", 0),
        ("é", "unexpected character 'é'", 0),
        ("x is null", "unexpected 'is'; use == or != to compare", 2),
        ("1 2", "unexpected number 2; is an operator missing?", 2),
        ("'it''s'", "unexpected a string; is an operator missing?", 4),
        ("a.0", "expected a key name after '.', got number 0; use [0] for a list index", 2),
        ("a.'k'", "expected a key name after '.', got a string", 2),
        ("12abc", "invalid number", 0),
        ("1e999", "number is out of range", 0),
        ("99999999999999999999", "integer is larger than 9223372036854775807", 0),
        ("a.b(1)", "only functions can be called, by plain name", 3),
        ("(len)(1)", "only functions can be called, by plain name", 5),
        ("().__class__", "expected a value, got ')'", 1),
        ("lenn(xs)", "unknown function 'lenn'; did you mean 'len'?", 0),
        ("__import__('os')", "unknown function '__import__'; the functions are abs, all,", 0),
        ("len()", "len() takes 1 argument (0 given)", 0),
        ("len(1, 2)", "len() takes 1 argument (2 given)", 0),
        ("round(1, 2, 3)", "round() takes 1 or 2 arguments (3 given)", 0),
        ("min()", "min() takes at least 1 argument (0 given)", 0),
        ("default(a)", "default() takes 2 arguments (1 given)", 0),
        ("not", "expected a value, got end of expression", 3),
        ("a not b", "unexpected 'not'", 2),
        ("1 == not 2", "expected a value, got 'not'", 5),
    ],
)
def test_syntax_errors(source: str, message: str, position: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_expression(source)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.position == position


# ------------------------------------------------------------------ functions


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("len('abc')", 3),
        ("len(xs)", 3),
        ("len(obj)", 2),
        ("len('')", 0),
        ("min(xs)", 1),
        ("min(3, 1.5, 2)", 1.5),
        ("max(xs)", 3),
        ("max('a', 'c', 'b')", "c"),
        ("min(['b', 'a'])", "a"),
        ("max(7)", None),
        ("sum(xs)", 6),
        ("sum([])", 0),
        ("sum([0.5, 1])", 1.5),
        ("abs(-3)", 3),
        ("abs(-2.5)", 2.5),
        ("round(2.567)", 3),
        ("round(2.5)", 2),
        ("round(2.567, 2)", 2.57),
        ("round(1234, -2)", 1200),
        ("int(3.9)", 3),
        ("int(-3.9)", -3),
        ("int(' 42 ')", 42),
        ("int('-7')", -7),
        ("int(true)", 1),
        ("float(2)", 2.0),
        ("float('2.5')", 2.5),
        ("float(' 1e3 ')", 1000.0),
        ("float(false)", 0.0),
        ("str(1)", "1"),
        ("str(1.0)", "1.0"),
        ("str(null)", "null"),
        ("str(true)", "true"),
        ("str('x')", "x"),
        ("str([1, 'a'])", '[1, "a"]'),
        ("str({'k': 1})", '{"k": 1}'),
        ("bool(0)", False),
        ("bool('x')", True),
        ("bool([])", False),
        ("bool(null)", False),
        ("lower('AbC')", "abc"),
        ("upper('aBc')", "ABC"),
        ("trim('  a b \\n')", "a b"),
        ("startswith(s, 'he')", True),
        ("startswith(s, 'lo')", False),
        ("endswith(s, 'lo')", True),
        ("endswith(s, 'he')", False),
        ("contains(xs, 2)", True),
        ("contains(s, 'ell')", True),
        ("contains(obj, 'zz')", False),
        ("keys(obj)", ["k", "n"]),
        ("values(obj)", ["v", None]),
        ("any([0, '', 1])", True),
        ("any([])", False),
        ("all([1, 'x'])", True),
        ("all([1, 0])", False),
        ("all([])", True),
        ("json({'a': [1, true, null], 'b': 'é'})", '{"a":[1,true,null],"b":"é"}'),
        ("json('x')", '"x"'),
        ("from_json('{\"a\": [1, 2.5, null]}')", {"a": [1, 2.5, None]}),
        ("from_json('3')", 3),
        ("default(missing, 5)", 5),
        ("default(n, 'fb')", "fb"),
        ("default(a, 5)", 1),
        ("default(jobs.train.output.zz, 0)", 0),
        ("default(xs[10], -1)", -1),
        ("default(obj.n.deeper, 'x')", "x"),
        ("default(false, true)", False),
        ("default(missing.deeper[0], [])", []),
    ],
)
def test_functions(source: str, expected: Any) -> None:
    if source == "max(7)":
        assert error_of(source).message == "max() needs a list or several values, got a number"
        return
    result = ev(source)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("len(5)", "len() needs a string, list or object, got a number"),
        ("len(null)", "len() needs a string, list or object, got null"),
        ("min([])", "min() needs at least one value, got an empty list"),
        ("max(1, 'a')", "max() needs all numbers or all strings"),
        ("min([true, false])", "min() needs all numbers or all strings"),
        ("sum(['a'])", "sum() needs a list of numbers"),
        ("sum(5)", "sum() needs a list of numbers, got a number"),
        ("sum([9223372036854775807, 1])", "sum() integer result is out of range"),
        ("abs('x')", "abs() needs a number, got a string"),
        ("abs(true)", "abs() needs a number, got a boolean"),
        ("round('1')", "round() needs a number, got a string"),
        ("round(1.5, 99)", "round() needs a number of digits between -30 and 30"),
        ("round(1.5, 1.0)", "round() needs a number of digits between -30 and 30"),
        ("round(1e300)", "round() integer result is out of range"),
        ("int('abc')", "int() cannot turn string 'abc' into an integer"),
        ("int('1.5')", "int() cannot turn string '1.5' into an integer"),
        ("int('99999999999999999999')", "int() cannot turn string"),
        ("int(1e300)", "int() integer result is out of range"),
        ("int(null)", "int() needs a number, boolean or string, got null"),
        ("float('nan')", "float() cannot turn string 'nan' into a number"),
        ("float('inf')", "float() cannot turn string 'inf' into a number"),
        ("float('1e999')", "float() result is not a finite number"),
        ("float([])", "float() needs a number, boolean or string, got list"),
        ("lower(1)", "lower() needs a string, got a number"),
        ("trim(null)", "trim() needs a string, got null"),
        ("startswith(s, 1)", "startswith() needs two strings, got a number"),
        ("endswith(1, 's')", "endswith() needs two strings, got a number"),
        ("contains(1, 1)", "contains() 'in' needs a string, list or object on the right"),
        ("keys(xs)", "keys() needs an object, got a list"),
        ("values('x')", "values() needs an object, got a string"),
        ("any({})", "any() needs a list, got an object"),
        ("all(1)", "all() needs a list, got a number"),
        (
            "from_json('{bad')",
            "from_json() invalid JSON: Expecting property name enclosed in "
            "double quotes at line 1 column 2",
        ),
        ("from_json('NaN')", "from_json() invalid JSON: NaN is not a JSON number"),
        ("from_json('[1e999]')", "from_json() result is not a finite number"),
        ("from_json(1)", "from_json() needs a string, got a number"),
        ("default(1 + 'a', 0)", "cannot add number and string"),
        ("default(a.x, 0)", "a is a number, not an object"),
    ],
)
def test_function_errors(source: str, message: str) -> None:
    err = error_of(source)
    assert err.message.startswith(message), err.message
    assert err.position is not None


def test_default_catches_only_what_cannot_be_read() -> None:
    # A type error in the first argument is a real mistake, not a missing value.
    assert error_of("default(s < 1, true)").position == 10
    # The fallback is not evaluated when the value is there.
    assert ev("default(a, missing)") == 1


def test_from_json_of_deep_json_is_an_expression_error() -> None:
    deep = "[" * 3000 + "]" * 3000
    err = error_of("from_json(x)", {"x": deep})
    assert "invalid JSON" in err.message


# ------------------------------------------------------------------ references


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a", [("a", (), 0)]),
        ("jobs.train.output.metrics[0]", [("jobs", ("train", "output", "metrics", 0), 0)]),
        ("jobs['train'].output", [("jobs", ("train", "output"), 0)]),
        ("xs[-1].k", [("xs", (-1, "k"), 0)]),
        ("jobs[name].output", [("jobs", (), 0), ("name", (), 5)]),
        ("jobs.x[i + 1].y", [("jobs", ("x",), 0), ("i", (), 7)]),
        ("a.b[1.5].c", [("a", ("b",), 0)]),
        ("len(xs) + max(a, b.c)", [("xs", (), 4), ("a", (), 14), ("b", ("c",), 17)]),
        ("keys(o).x", [("o", (), 5)]),
        ("default(p.q, 1)", [("p", ("q",), 8)]),
        ("[x, {'k': y}]", [("x", (), 1), ("y", (), 10)]),
        ("not u or v and w", [("u", (), 4), ("v", (), 9), ("w", (), 15)]),
        ("1 + 'a' + true", []),
        ("item.max_depth", [("item", ("max_depth",), 0)]),
        ("evaluation_passed", [("evaluation_passed", (), 0)]),
    ],
)
def test_references(source: str, expected: list[tuple[str, tuple[Any, ...], int]]) -> None:
    assert parse_expression(source).references() == [Reference(*e) for e in expected]


def test_template_references_are_offsets_into_the_text() -> None:
    template = parse_template("s3://b/${model_name}/${ jobs.train.output.path }")
    assert template.references() == [
        Reference("model_name", (), 9),
        Reference("jobs", ("train", "output", "path"), 24),
    ]
    assert template.expressions[1].source == " jobs.train.output.path "
    assert template.expressions[1].offset == 23


def test_value_references_walk_dicts_and_lists() -> None:
    value = {"a": ["x", "${p}", {"b": "${jobs.j.output} and ${q}"}], "k${z}": 1, "n": 5}
    assert value_references(value) == [
        (("a", 1), Reference("p", (), 2)),
        (("a", 2, "b"), Reference("jobs", ("j", "output"), 2)),
        (("a", 2, "b"), Reference("q", (), 23)),
    ]


def test_value_references_error_carries_the_value_path() -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        value_references({"env": [{"value": "ok"}, {"value": "bad ${a +}"}]})
    assert info.value.value_path == ("env", 1, "value")  # type: ignore[attr-defined]
    assert info.value.position == 9
    assert info.value.expression == "bad ${a +}"


# ------------------------------------------------------------------ templates


def test_single_template_keeps_the_type() -> None:
    for name in ("a", "b", "t", "n", "xs", "obj", "s"):
        template = parse_template("${" + name + "}")
        assert template.is_single
        rendered = template.render(SCOPE)
        assert rendered == VALUES[name]
        assert type(rendered) is type(VALUES[name])
    assert parse_template("${ b }").render(SCOPE) == 2.5


@pytest.mark.parametrize("text", [" ${a}", "${a} ", "${a}${b}", "x${a}", "$${a}", "${a}\n"])
def test_not_single(text: str) -> None:
    assert not parse_template(text).is_single


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=${a}", "v=1"),
        ("v=${b}", "v=2.5"),
        ("${a}${b}", "12.5"),
        ("f=${1.0}", "f=1.0"),
        ("big=${1e16}", "big=1e+16"),
        ("i=${10}", "i=10"),
        ("n=${n}", "n=null"),
        ("t=${t} f=${f}", "t=true f=false"),
        ("s=${s}!", "s=hello!"),
        ("xs=${xs}", "xs=[1, 2, 3]"),
        ("o=${obj}", 'o={"k": "v", "n": null}'),
        ("u=${['é']}", 'u=["é"]'),
        ("${'}'}x", "}x"),
        ("${json({'a': 1})}", '{"a":1}'),
        ("${ {'a': {'b': 1}}.a.b }", 1),
        ("cost: $${HOME} ${a}", "cost: ${HOME} 1"),
        ("$${a}", "${a}"),
        ("$$${a}", "$${a}"),
        ("$$ $5 $", "$$ $5 $"),
        ("$ ${a}", "$ 1"),
        ("no templates", "no templates"),
        ("", ""),
    ],
)
def test_text_rendering(text: str, expected: Any) -> None:
    assert parse_template(text).render(SCOPE) == expected


def test_is_template() -> None:
    assert is_template("${a}")
    assert is_template("x ${a")  # unterminated still counts; parsing reports it
    assert is_template("$${a} ${b}")
    assert not is_template("$${a}")
    assert not is_template("plain $ {a} $x")
    assert not is_template("")


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("abc ${a", "'${' is never closed with '}'", 4),
        ("x ${'}", "'${' is never closed with '}'", 2),
        ("${}", "empty ${}", 0),
        ("ab ${  }", "empty ${}", 3),
        ("v=${a +}", "expected a value, got end of expression", 7),
        ("s3://${x}/${1 +* 2}", "expected a value, got '*'", 15),
        (
            "${" + "a" * (MAX_EXPRESSION_LENGTH + 1) + "}",
            f"expression is longer than {MAX_EXPRESSION_LENGTH} characters",
            2 + MAX_EXPRESSION_LENGTH,
        ),
    ],
)
def test_template_syntax_errors(text: str, message: str, position: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_template(text)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.position == position
    assert info.value.expression == text


def test_render_errors() -> None:
    with pytest.raises(UnknownName):
        parse_template("x=${missing}").render(SCOPE)
    with pytest.raises(ExpressionError, match="division by zero"):
        parse_template("x=${a / 0}").render(SCOPE)
    weird = MappingScope({"v": float("nan"), "o": object()})
    with pytest.raises(ExpressionError, match="cannot render"):
        parse_template("x=${v}").render(weird)
    with pytest.raises(ExpressionError, match="cannot render a value of type object"):
        parse_template("x=${o}").render(weird)


def test_keep_unresolved() -> None:
    template = parse_template("s3://${model_name}/${later}/${jobs.train.output.acc}")
    assert template.render(SCOPE, keep_unresolved=True) == "s3://churn/${later}/0.8"
    assert parse_template("${later}").render(SCOPE, keep_unresolved=True) == "${later}"
    assert parse_template("${ later.x }").render(SCOPE, keep_unresolved=True) == "${ later.x }"
    assert parse_template("${b}").render(SCOPE, keep_unresolved=True) == 2.5
    # Other errors still raise, and a missing key is an error, not an unknown name.
    with pytest.raises(ExpressionError, match="division by zero"):
        parse_template("${later} ${a / 0}").render(SCOPE, keep_unresolved=True)
    with pytest.raises(ExpressionError, match="has no key"):
        parse_template("${later} ${obj.zz}").render(SCOPE, keep_unresolved=True)
    # default() leaves an unknown name to the later scope instead of falling back now.
    assert (
        parse_template("${default(later, 1)}").render(SCOPE, keep_unresolved=True)
        == "${default(later, 1)}"
    )
    assert parse_template("${default(obj.zz, 1)}").render(SCOPE, keep_unresolved=True) == 1
    # Nothing is re-escaped: the result shows what is known, as it will be sent.
    assert (
        parse_template("$${lit} ${later} ${s}").render(SCOPE, keep_unresolved=True)
        == "${lit} ${later} hello"
    )
    assert render_value({"k": ["${later}", "${a}"]}, SCOPE, keep_unresolved=True) == {
        "k": ["${later}", 1]
    }


def test_render_value() -> None:
    value = {
        "payload": {"name": "${model_name}", "hp": "${hyperparameters}", "n": 3, "x": None},
        "list": ["${a}", "plain", "$${lit}", 1.5],
        "${key}": "keys are not templated",
    }
    assert render_value(value, SCOPE) == {
        "payload": {
            "name": "churn",
            "hp": {"max_depth": 10, "n_estimators": 100},
            "n": 3,
            "x": None,
        },
        "list": [1, "plain", "${lit}", 1.5],
        "${key}": "keys are not templated",
    }
    untouched = {"a": [1, "b"]}
    assert render_value(untouched, SCOPE) == untouched
    assert render_value("plain", SCOPE) == "plain"
    assert render_value(5, SCOPE) == 5
    with pytest.raises(UnknownName) as info:
        render_value({"a": [{"b": "${missing}"}]}, SCOPE)
    assert info.value.value_path == ("a", 0, "b")  # type: ignore[attr-defined]


# ------------------------------------------------------------------ conditions


def test_parse_condition_forms() -> None:
    for text in ("${a > 0}", "a > 0", " ${a > 0} ", "${ a > 0 }"):
        assert truth(parse_condition(text).evaluate(SCOPE)) is True
    assert parse_condition("${a > 0}").offset == 2
    assert parse_condition("a > 0").references() == [Reference("a", (), 0)]


@pytest.mark.parametrize(
    ("text", "suggestion", "position"),
    [
        ("${a} > 5", "${a > 5}", 0),
        ("${a} and ${b}", "${a and b}", 0),
        ("x ${a}", "${x a}", 2),
    ],
)
def test_parse_condition_rejects_mixed_text(text: str, suggestion: str, position: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_condition(text)
    assert "a condition must be one expression" in info.value.message
    assert info.value.message.endswith(f"write it as {suggestion}")
    assert info.value.position == position


def test_parse_condition_syntax_error_positions() -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_condition("${a >}")
    assert info.value.position == 5
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_condition("a >")
    assert info.value.position == 3
    with pytest.raises(ExpressionSyntaxError):
        parse_condition("")


def test_truth() -> None:
    assert truth(True) is True
    assert truth(False) is False
    assert truth(None) is False
    for value, shown in [
        (1, "number 1"),
        ("yes", 'string "yes"'),
        ([1], "list [1]"),
        ({"a": 1}, 'object {"a":1}'),
        (0.5, "number 0.5"),
    ]:
        with pytest.raises(ExpressionError) as info:
            truth(value, "x")
        assert info.value.message == f"condition must evaluate to true or false, got {shown}"
        assert info.value.expression == "x"
    with pytest.raises(ExpressionError, match=r"got string \"aaaaa.*\.\.\.$"):
        truth("a" * 500)


# ------------------------------------------------------------------ limits


def _timed(action: Any) -> tuple[BaseException | None, float]:
    start = time.perf_counter()
    try:
        action()
    except BaseException as exc:  # the test inspects whatever was raised
        return exc, time.perf_counter() - start
    return None, time.perf_counter() - start


@pytest.mark.parametrize(
    "text",
    [
        "(" * 100_000,
        "[" * 100_000,
        "-" * 100_000,
        "not " * 30_000,
        "a" + ".a" * 50_000,
        "1" + "+1" * 50_000,
        "'" + "x" * 100_000,
    ],
)
def test_huge_expressions_fail_fast(text: str) -> None:
    exc, elapsed = _timed(lambda: parse_expression(text))
    assert isinstance(exc, ExpressionSyntaxError)
    assert str(MAX_EXPRESSION_LENGTH) in exc.message
    assert elapsed < 0.5
    exc, elapsed = _timed(lambda: parse_template("${" + text + "}"))
    assert isinstance(exc, ExpressionSyntaxError)
    assert elapsed < 0.5


@pytest.mark.parametrize(
    ("opener", "closer"),
    [("(", ")"), ("[", "]"), ("{'a': ", "}"), ("len(", ")"), ("-", ""), ("not ", ""), ("xs[", "]")],
)
def test_nesting_is_limited(opener: str, closer: str) -> None:
    parse_expression(opener * MAX_DEPTH + "1" + closer * MAX_DEPTH)
    deep = opener * (MAX_DEPTH + 1) + "1" + closer * (MAX_DEPTH + 1)
    with pytest.raises(ExpressionSyntaxError, match=f"nests deeper than {MAX_DEPTH} levels"):
        parse_expression(deep)
    text = opener * 1000
    with pytest.raises(ExpressionSyntaxError, match="nests deeper"):
        parse_expression(text[:MAX_EXPRESSION_LENGTH])


def test_segments_per_template_are_limited() -> None:
    assert parse_template("${a}" * MAX_SEGMENTS).render(SCOPE) == "1" * MAX_SEGMENTS
    assert parse_template("${a}-" * MAX_SEGMENTS).render(SCOPE) == "1-" * MAX_SEGMENTS
    exc, elapsed = _timed(lambda: parse_template("${a}" * 2_500_000))
    assert isinstance(exc, ExpressionSyntaxError)
    assert exc.message == f"a template may hold at most {MAX_SEGMENTS} ${{...}} segments"
    assert exc.position == 4 * MAX_SEGMENTS
    assert elapsed < 1


def test_long_but_flat_expressions_work() -> None:
    assert ev("1" + " + 1" * 1000) == 1001
    assert ev("t" + " and t" * 600) is True
    assert ev("0" + " < 1" * 500) is False  # 1 < 1 breaks the chain
    long_path = "d" + ".a" * 1500
    nested: Any = 1
    for _ in range(1500):
        nested = {"a": nested}
    assert ev(long_path, {"d": nested}) == 1
    expression = "a + " * 1000 + "a"
    assert len(expression) < MAX_EXPRESSION_LENGTH
    assert ev(expression) == 1001


def _deepest(levels: int) -> str:
    # Each round passes through every precedence level and adds 5 levels of nesting.
    text = "1"
    for _ in range(levels // 5):
        text = f"len([f or t and not -[{text}][0] + 2 * 1 == 1])"
    return "(" * (levels % 5) + text + ")" * (levels % 5)


def test_worst_case_nesting_evaluates_without_recursion_error() -> None:
    expression = parse_expression(_deepest(MAX_DEPTH))
    assert expression.evaluate(MappingScope({"f": False, "t": True})) == 1
    with pytest.raises(ExpressionSyntaxError, match="nests deeper"):
        parse_expression(f"[[1], {_deepest(MAX_DEPTH)}]")


def test_a_caller_deep_in_its_stack_gets_an_expression_error() -> None:
    text = "(" * MAX_DEPTH + _deepest(0) + ")" * MAX_DEPTH
    scope = MappingScope({"f": False, "t": True})

    def at_depth(depth: int) -> Any:
        if depth:
            return at_depth(depth - 1)
        try:
            return parse_expression(_deepest(MAX_DEPTH)).evaluate(scope), parse_expression(text)
        except ExpressionError as exc:
            return exc

    for depth in range(0, 1000, 50):
        try:
            outcome = at_depth(depth)
        except RecursionError:
            break  # the test's own recursion ran out before reaching the expression
        assert isinstance(outcome, tuple | ExpressionError)


def test_expression_of_5000_characters_is_rejected() -> None:
    text = "a + " * 1249 + "a"
    assert len(text) == 4997
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_expression(text + "+ a")
    assert info.value.position == MAX_EXPRESSION_LENGTH
    assert parse_expression("a" + " " * (MAX_EXPRESSION_LENGTH - 1)).evaluate(SCOPE) == 1


def test_string_growth_is_capped() -> None:
    half = "x" * (MAX_STRING_LENGTH // 2)
    assert len(ev("s + s", {"s": half})) == MAX_STRING_LENGTH
    err = error_of("s + s + 'y'", {"s": half})
    assert err.message == f"joined string would be longer than {MAX_STRING_LENGTH} characters"
    # Doubling through names cannot blow up memory either.
    exc, elapsed = _timed(lambda: ev("s" + " + s" * 1000, {"s": "x" * 4096}))
    assert isinstance(exc, ExpressionError)
    assert elapsed < 1
    err = error_of("l + l", {"l": list(range(60_000))})
    assert "joined list would have more than" in err.message
    with pytest.raises(ExpressionError, match="rendered text is longer"):
        parse_template("${s}${s}${s}").render(MappingScope({"s": half}))


def test_amplified_allocation_is_capped() -> None:
    big = {"o": "x" * 500_000}
    many = ", ".join(["o"] * 1000)
    exc, elapsed = _timed(lambda: ev(f"json([{many}])", big))
    assert isinstance(exc, ExpressionError)
    assert exc.message == f"json() JSON text would be longer than {MAX_STRING_LENGTH} characters"
    assert elapsed < 1
    exc, elapsed = _timed(lambda: ev("[" + ", ".join(["upper(o)"] * 400) + "]", big))
    assert isinstance(exc, ExpressionError)
    assert exc.message == f"expression creates more than {MAX_PRODUCED} characters and items in all"
    assert elapsed < 1
    with pytest.raises(ExpressionError, match="JSON text would be longer"):
        parse_template(f"x=${{[{many}]}}").render(MappingScope(big))
    with pytest.raises(ExpressionError, match="creates more than"):
        ev("[" + ", ".join(["from_json(j)"] * 40) + "]", {"j": "[" + "1," * 250_000 + "1]"})


def test_values_nested_too_deeply_are_refused() -> None:
    deep: Any = "${a}"
    for _ in range(MAX_VALUE_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ExpressionError, match="nests deeper than"):
        render_value(deep, SCOPE)
    with pytest.raises(ExpressionError, match="nests deeper than"):
        value_references(deep)
    assert render_value(deep[0], SCOPE) is not None
    with pytest.raises(ExpressionError, match="got list of type list"):
        truth([[1] * 10] * 60_000)


def test_errors_are_bunsui_errors() -> None:
    assert issubclass(ExpressionSyntaxError, BunsuiError)
    err = error_of("jobs.train.output.zz")
    assert isinstance(err, BunsuiError)
    assert json.dumps(err.message)  # a plain string, ready for an API answer
