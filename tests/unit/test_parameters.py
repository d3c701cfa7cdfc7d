from __future__ import annotations

import pytest

from engine.errors import ParameterInvalid
from engine.loader import read_pipeline
from engine.parameters import (
    REDACTED,
    coerce_text,
    compile_pattern,
    matches,
    redacted,
    resolve_parameters,
)
from engine.pipeline import Parameter
from tests.conftest import PRODUCT_PARAMETERS, PRODUCT_PIPELINE


def param(**fields) -> Parameter:
    return Parameter.model_validate({"name": "p", **fields})


def pairs(texts: list[str]) -> dict[str, str]:
    return dict(text.split("=", 1) for text in texts)


def test_the_product_parameters_resolve_with_their_declared_types():
    pipeline = read_pipeline(PRODUCT_PIPELINE)
    values = resolve_parameters(pipeline.parameters, text_values=pairs(PRODUCT_PARAMETERS))
    assert values == {
        "model_name": "customer_churn_model",
        "training_data_path": "s3://data-bucket/customer_data.csv",
        "model_version": "v1.1",
        "hyperparameters": {"max_depth": 10, "n_estimators": 100},
        "evaluation_threshold": 0.85,
    }
    assert isinstance(values["evaluation_threshold"], float)


def test_defaults_fill_in_and_required_is_enforced():
    pipeline = read_pipeline(PRODUCT_PIPELINE)
    values = resolve_parameters(
        pipeline.parameters,
        text_values={"model_name": "m", "training_data_path": "s3://b/k"},
    )
    assert values["model_version"] == "v1.0"
    assert values["evaluation_threshold"] == 0.8
    assert values["hyperparameters"] == {}
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters(pipeline.parameters, text_values={"model_name": "m"})
    assert info.value.name == "training_data_path"
    assert "required" in str(info.value)


@pytest.mark.parametrize(
    ("fields", "text", "expected"),
    [
        ({"type": "integer"}, "42", 42),
        ({"type": "integer"}, " -7 ", -7),
        ({"type": "float"}, "0.85", 0.85),
        ({"type": "float"}, "1", 1.0),
        ({"type": "boolean"}, "TRUE", True),
        ({"type": "boolean"}, "no", False),
        ({"type": "array"}, '["a", 1]', ["a", 1]),
        ({"type": "object"}, '{"max_depth": 10}', {"max_depth": 10}),
        ({"type": "string"}, "  kept as is ", "  kept as is "),
    ],
)
def test_coerce_text_by_type(fields, text, expected):
    assert coerce_text(param(**fields), text) == expected


@pytest.mark.parametrize(
    ("fields", "text", "words"),
    [
        ({"type": "integer"}, "1.5", "is not an integer"),
        ({"type": "float"}, "abc", "is not a number"),
        ({"type": "float"}, "nan", "is not a number"),
        ({"type": "boolean"}, "maybe", "is not true or false"),
        ({"type": "array"}, '{"a": 1}', "is not a JSON array"),
        ({"type": "object"}, "{max_depth: 10", "is not a JSON object"),
    ],
)
def test_coerce_text_rejects_with_the_value_and_the_type(fields, text, words):
    with pytest.raises(ParameterInvalid) as info:
        coerce_text(param(**fields), text)
    message = str(info.value)
    assert message.startswith("parameter 'p': ")
    assert words in message
    assert text in message


def test_rule_violations_name_parameter_value_and_rule():
    pipeline = read_pipeline(PRODUCT_PIPELINE)
    base = {"training_data_path": "s3://b/k"}
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters(pipeline.parameters, text_values={**base, "model_name": "9lives"})
    assert info.value.name == "model_name"
    assert "'9lives'" in str(info.value)
    assert "pattern" in str(info.value)
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters(
            pipeline.parameters,
            text_values={**base, "model_name": "m", "evaluation_threshold": "1.5"},
        )
    assert info.value.name == "evaluation_threshold"
    assert "1.5" in str(info.value) and "maximum" in str(info.value)


def test_unknown_parameter_suggests_the_closest_name():
    pipeline = read_pipeline(PRODUCT_PIPELINE)
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters(pipeline.parameters, text_values={"model_nme": "x"})
    assert info.value.name == "model_nme"
    assert "did you mean 'model_name'" in str(info.value)


def test_typed_values_are_checked_strictly():
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters([param(type="string")], values={"p": 1.1})
    assert 'quote it: "1.1"' in str(info.value)
    with pytest.raises(ParameterInvalid):
        resolve_parameters([param(type="integer")], values={"p": True})
    assert resolve_parameters([param(type="float")], values={"p": 3}) == {"p": 3.0}


def test_text_values_win_over_file_values():
    values = resolve_parameters([param(type="integer")], values={"p": 1}, text_values={"p": "2"})
    assert values == {"p": 2}


def test_min_max_are_lengths_for_strings_and_arrays():
    short = param(type="string", validation={"min": 3, "max": 5})
    with pytest.raises(ParameterInvalid, match="length 2, which is below the minimum length 3"):
        resolve_parameters([short], values={"p": "ab"})
    items = param(type="array", validation={"max": 1})
    with pytest.raises(ParameterInvalid, match="above the maximum length 1"):
        resolve_parameters([items], values={"p": [1, 2]})


def test_enum_suggests_a_close_value():
    choice = param(validation={"enum": ["staging", "production"]})
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters([choice], values={"p": "prodution"})
    assert "did you mean 'production'" in str(info.value)


def test_secret_values_never_appear_in_errors():
    secret = param(secret=True, validation={"pattern": "[a-z]+"})
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters([secret], values={"p": "Hunter2-SECRET"})
    assert "Hunter2-SECRET" not in str(info.value)
    assert REDACTED in str(info.value)
    number = param(type="integer", secret=True)
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters([number], text_values={"p": "SECRET-not-a-number"})
    assert "SECRET-not-a-number" not in str(info.value)


def test_redacted_replaces_only_secrets():
    declared = [param(secret=True), Parameter(name="q")]
    assert redacted(declared, {"p": "x", "q": "y"}) == {"p": REDACTED, "q": "y"}


def test_patterns_match_the_whole_value():
    assert matches("[a-z]+", "abc")
    assert not matches("[a-z]+", "abc1")
    assert not matches("b", "abc")
    assert not matches("^[a-z]+$", "abc\n")


def test_pathological_pattern_is_linear():
    # (a+)+$ backtracks exponentially on a backtracking engine; this one cannot.
    assert not matches("(a+)+$", "a" * 100_000 + "!")


def test_unsupported_pattern_is_rejected_with_the_reason():
    from engine.parameters import PatternInvalid

    with pytest.raises(PatternInvalid, match="look-around"):
        compile_pattern("(?=a)a")
    with pytest.raises(PatternInvalid):
        compile_pattern("(unclosed")
