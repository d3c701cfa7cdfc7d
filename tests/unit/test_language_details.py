"""Rules of the language that sit between the loader, parameters, inputs and plan."""

from __future__ import annotations

import pytest

from engine.errors import PipelineInvalid
from engine.inputs import JobScope, job_inputs
from engine.loader import load_pipeline
from engine.parameters import resolve_parameters
from engine.plan import make_plan

HEAD = 'version: "1.1"\nname: details\n'


def problems(text: str) -> list:
    with pytest.raises(PipelineInvalid) as info:
        load_pipeline(HEAD + text, "f.yaml")
    return info.value.problems


def test_arguments_and_commands_are_text_payloads_keep_types():
    pipeline = load_pipeline(
        HEAD
        + """
parameters:
  - {name: n, type: integer, default: 3}
  - {name: obj, type: object, default: {a: 1}}
jobs:
  - id: run
    type: custom
    parameters: {command: ["echo", "${n}", "${obj}"], environment: {FLAG: true, N: 2}}
  - id: call
    type: lambda
    depends_on: [run]
    parameters: {function_name: "fn-${n}", payload: {n: "${n}", obj: "${obj}"}}
"""
    )
    scope = JobScope({"n": 3, "obj": {"a": 1}})
    run = job_inputs(pipeline.jobs[0], scope)
    assert run["command"] == ["echo", "3", '{"a": 1}']
    assert run["environment"] == {"FLAG": "true", "N": "2"}
    call = job_inputs(pipeline.jobs[1], scope)
    assert call["function_name"] == "fn-3"
    assert call["payload"] == {"n": 3, "obj": {"a": 1}}


@pytest.mark.parametrize("value", [".inf", "-.Inf", ".nan"])
def test_non_finite_numbers_are_rejected_where_written(value):
    (problem,) = problems(
        f"metadata: {{x: {value}}}\njobs: [{{id: a, type: custom, parameters: {{command: x}}}}]\n"
    )
    assert problem.path == "metadata.x"
    assert "not a finite number" in problem.message
    assert (problem.line, problem.column) == (3, 15)


@pytest.mark.parametrize("name", ["in", "None", "true"])
def test_expression_keywords_cannot_name_parameters(name):
    found = problems(
        f"parameters: [{{name: '{name}'}}]\n"
        "jobs: [{id: a, type: custom, parameters: {command: x}}]\n"
    )
    assert any("word of the expression language" in p.message for p in found)


def test_optional_parameter_without_default_is_null_not_an_upstream_name():
    pipeline = load_pipeline(
        HEAD
        + """
parameters:
  - {name: note, type: string}
  - {name: ratio, type: float, default: 1}
jobs:
  - {id: a, type: custom, parameters: {command: x}}
"""
    )
    values = resolve_parameters(pipeline.parameters, {})
    assert values == {"note": None, "ratio": 1.0}
    assert isinstance(values["ratio"], float)


def test_a_fan_out_does_not_provide_bare_names_downstream():
    found = problems("""
jobs:
  - id: tune
    type: custom
    for_each: [1, 2]
    outputs: [accuracy]
    parameters: {command: x}
  - id: pick
    type: lambda
    depends_on: [tune]
    parameters: {function_name: f, payload: "${accuracy}"}
""")
    assert [p.path for p in found] == ["jobs[1].parameters.payload"]
    assert "no upstream job of 'pick' declares it" in found[0].message


def test_constraint_errors_win_over_type_errors_of_other_union_members():
    (problem,) = problems(
        "jobs: [{id: a, type: ecs, parameters: {task_definition: t, memory: -1}}]\n"
    )
    assert problem.path == "jobs[0].parameters.memory"
    assert "greater than or equal to 0" in problem.message
    assert "quote" not in problem.hint


def test_a_job_written_as_text_says_so():
    (problem,) = problems("jobs: [just-a-string]\n")
    assert problem.path == "jobs[0]"
    assert "a job is a mapping" in problem.message
    assert "'just-a-string'" in problem.message


def test_a_null_value_is_named_once():
    (problem,) = problems(
        "jobs: [{id: a, type: custom, parameters: {command: x, environment: {A: null}}}]\n"
    )
    assert problem.message.endswith("got null.")


def test_a_matrix_over_an_upstream_output_is_planned_as_known_at_run_time():
    pipeline = load_pipeline(
        HEAD
        + """
jobs:
  - {id: grid, type: lambda, parameters: {function_name: g}}
  - id: tune
    type: custom
    depends_on: [grid]
    for_each: {matrix: {depth: "${jobs.grid.output.depths}", trees: [50, 100]}}
    parameters: {command: x}
"""
    )
    tune = make_plan(pipeline, {}).jobs[1]
    assert tune.fan_out["count"] is None
    assert tune.fan_out["source"]["matrix"]["depth"] == "${jobs.grid.output.depths}"
    assert tune.from_upstream == ["jobs.grid.output.depths"]


@pytest.mark.parametrize(
    "text",
    ['{"a": NaN}', '{"a": 1e400}', '{"a": [99999999999999999999999]}', "[Infinity]"],
)
def test_nested_parameter_values_must_be_json_numbers(text):
    from engine.errors import ParameterInvalid
    from engine.pipeline import Parameter

    kind = "array" if text.startswith("[") else "object"
    with pytest.raises(ParameterInvalid) as info:
        resolve_parameters([Parameter(name="p", type=kind)], text_values={"p": text})
    assert info.value.name == "p"


def test_a_null_tag_needs_a_null_value():
    (problem,) = problems(
        "metadata: {a: !!null abc}\njobs: [{id: a, type: custom, parameters: {command: x}}]\n"
    )
    assert "'abc' is not null" in problem.message


def test_drawings_escape_user_text_but_keep_their_markup():
    from bunsui.drawing import draw_dot, draw_mermaid

    pipeline = load_pipeline(
        HEAD.replace("details", "Modèle")
        + """
jobs:
  - {id: a, name: 'say "hi" <now>', type: custom, parameters: {command: x}}
"""
    )
    mermaid = draw_mermaid(pipeline)
    assert "say #quot;hi#quot; #lt;now#gt;<br/><i>a · custom</i>" in mermaid
    assert 'digraph "Modèle"' in draw_dot(pipeline)
