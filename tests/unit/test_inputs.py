from __future__ import annotations

import pytest

from engine.errors import UnknownName
from engine.inputs import JobScope, Upstream, env_text, fan_out_items, job_inputs
from engine.loader import load_pipeline
from engine.pipeline import ForEach


def test_names_resolve_parameters_first_then_nearest_upstream():
    scope = JobScope(
        {"x": "param"},
        upstream=[
            Upstream("near", "succeeded", {"x": "near", "y": "near"}),
            Upstream("far", "succeeded", {"y": "far", "z": "far"}),
        ],
    )
    assert scope.resolve("x") == "param"
    assert scope.resolve("y") == "near"
    assert scope.resolve("z") == "far"
    assert scope.resolve("jobs")["far"]["output"] == {"y": "far", "z": "far"}


def test_a_missing_name_names_the_upstream_jobs_searched():
    scope = JobScope({}, upstream=[Upstream("a", "succeeded", {}), Upstream("b", "succeeded", 3)])
    with pytest.raises(UnknownName) as info:
        scope.resolve("evaluation_passed")
    assert "evaluation_passed" in str(info.value)
    assert "(a, b)" in str(info.value)


def test_item_and_session_only_when_given():
    scope = JobScope({}, item={"k": 1}, item_index=4, session={"id": "s-1"})
    assert scope.resolve("item") == {"k": 1}
    assert scope.resolve("item_index") == 4
    assert scope.resolve("session")["id"] == "s-1"
    with pytest.raises(UnknownName):
        JobScope({}).resolve("item")


def test_environment_values_become_strings():
    pipeline = load_pipeline("""
version: "1.1"
name: env
parameters:
  - {name: hp, type: object, default: {depth: 3}}
  - {name: n, type: integer, default: 7}
jobs:
  - id: t
    type: ecs
    parameters:
      task_definition: train
      environment: {HP: "${hp}", N: "${n}", FLAG: true, TEXT: "n=${n}"}
""")
    inputs = job_inputs(pipeline.jobs[0], JobScope({"hp": {"depth": 3}, "n": 7}))
    assert inputs["environment"] == {"HP": '{"depth": 3}', "N": "7", "FLAG": "true", "TEXT": "n=7"}


def test_env_text():
    assert env_text("x") == "x"
    assert env_text(1.5) == "1.5"
    assert env_text(None) == "null"
    assert env_text([1, "a"]) == '[1, "a"]'


def test_matrix_items_vary_the_last_key_fastest():
    fan = ForEach(matrix={"a": [1, 2], "b": ["x", "y"]})
    assert fan_out_items(fan, JobScope({})) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


def test_items_from_an_expression_must_be_a_list():
    from engine.errors import ExpressionError

    fan = ForEach(items="${files}")
    assert fan_out_items(fan, JobScope({"files": ["a", "b"]})) == ["a", "b"]
    with pytest.raises(ExpressionError, match="must yield a list"):
        fan_out_items(fan, JobScope({"files": "a"}))
