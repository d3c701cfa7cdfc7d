"""Hostile input ends in a clear PipelineInvalid (or ParameterInvalid), never a crash or a hang.

No test here measures time: pytest-timeout, configured for the whole suite,
is the guard against a hang. What is asserted is the behaviour: the error
type, and that its message names the limit that was hit.
"""

from __future__ import annotations

import pytest

from engine.errors import ParameterInvalid, PipelineInvalid
from engine.loader import load_pipeline, read_pipeline, validate_pipeline
from engine.parameters import resolve_parameters
from engine.pipeline import Parameter
from engine.source import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_VALUES

ONE_JOB = 'version: "1.1"\nname: p\njobs:\n  - id: a\n    type: lambda\n    parameters:\n'


def rejected(text: str | bytes) -> PipelineInvalid:
    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(text, "hostile.yaml")
    return caught.value


def messages(error: PipelineInvalid) -> str:
    return "\n".join(p.message for p in error.problems)


def test_alias_bomb_is_stopped_by_the_expansion_limit():
    # "Billion laughs": 9 levels of 9 aliases each would expand to 9**9 strings.
    lines = ['version: "1.1"', "name: p", 'l0: &l0 "lol"']
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    lines.append("jobs: [{id: a, type: lambda, parameters: {function_name: f}}]")

    error = rejected("\n".join(lines) + "\n")

    (problem,) = error.problems
    assert f"expands to more than {MAX_VALUES:,} values" in problem.message
    assert "alias" in problem.message
    assert "fewer nested aliases" in problem.hint
    assert problem.line is not None


def test_alias_bomb_inside_a_payload():
    lines = [ONE_JOB + "      function_name: f", "      payload:", '        a0: &a0 ["x", "x"]']
    for level in range(1, 25):
        lines.append(f"        a{level}: &a{level} [*a{level - 1}, *a{level - 1}]")

    error = rejected("\n".join(lines) + "\n")

    assert "expands to more than" in messages(error)


def test_fifty_megabyte_file_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.write(b'version: "1.1"\nname: p\ndescription: "')
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            handle.write(chunk)
        handle.write(b'"\n')

    with pytest.raises(PipelineInvalid) as caught:
        read_pipeline(path)

    (problem,) = caught.value.problems
    assert f"limited to {MAX_DOCUMENT_BYTES:,} bytes (10 MiB)" in problem.message
    assert "split the pipeline" in problem.hint
    assert caught.value.source == str(path)


def test_fifty_megabyte_file_is_not_reported_as_ten(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * (50 << 20) + b"\n")

    with pytest.raises(PipelineInvalid) as caught:
        read_pipeline(path)

    message = caught.value.problems[0].message
    assert f"the file is {path.stat().st_size:,} bytes (50.0 MiB)" in message


def test_oversized_text_given_directly_reports_its_size():
    error = rejected("#" * (MAX_DOCUMENT_BYTES + 1))

    assert messages(error).startswith(
        f"the file is {MAX_DOCUMENT_BYTES + 1:,} bytes (10.0 MiB); pipeline files are limited to "
        f"{MAX_DOCUMENT_BYTES:,} bytes"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        "a: " + "{a: " * 100_000,
        "- " * 100_000 + "x",
        ONE_JOB + "      function_name: f\n      payload: " + "[" * 100_000 + "]" * 100_000,
    ],
    ids=["open-brackets", "closed-brackets", "open-braces", "block-sequences", "in-payload"],
)
def test_nesting_one_hundred_thousand_deep(text):
    error = rejected(text)

    (problem,) = error.problems
    assert "nesting" in problem.message
    assert str(MAX_DEPTH) in problem.hint or str(MAX_DEPTH) in problem.message


def test_nesting_just_past_the_limit_is_located():
    text = ONE_JOB + "      function_name: f\n      payload: " + "[" * 70 + "]" * 70 + "\n"

    (problem,) = rejected(text).problems

    assert problem.message == f"nesting is deeper than {MAX_DEPTH} levels."
    assert problem.path.startswith("jobs[0].parameters.payload[0][0]")
    assert problem.line == 8


def test_nesting_within_the_limit_loads():
    depth = MAX_DEPTH - 6  # the payload itself sits 5 levels down
    text = ONE_JOB + "      function_name: f\n      payload: " + "[" * depth + "]" * depth + "\n"

    assert load_pipeline(text).jobs[0].parameters.payload


def test_catastrophic_regex_pattern_is_linear_time():
    # A backtracking engine needs about 2**100000 steps here; the engine is linear.
    param = Parameter(name="x", validation={"pattern": "(a+)+$"})

    with pytest.raises(ParameterInvalid) as caught:
        resolve_parameters([param], text_values={"x": "a" * 100_000 + "!"})

    assert caught.value.name == "x"
    assert "does not match the pattern '(a+)+$'" in caught.value.message
    assert resolve_parameters([param], text_values={"x": "a" * 100_000}) == {"x": "a" * 100_000}


def test_catastrophic_regex_pattern_in_a_default():
    text = (
        'version: "1.1"\nname: p\nparameters:\n'
        "  - name: x\n    default: " + "a" * 50_000 + "!\n    validation: {pattern: '(a+)+$'}\n"
        "jobs: [{id: a, type: lambda, parameters: {function_name: f}}]\n"
    )

    (problem,) = rejected(text).problems

    assert problem.path == "parameters[0].default"
    assert "does not match the pattern" in problem.message


@pytest.mark.parametrize(
    ("where", "expression"),
    [
        ("payload", "(" * 100_000 + "1" + ")" * 100_000),
        ("payload", "-" * 100_000 + "1"),
        ("payload", "[" * 100_000 + "]" * 100_000),
        ("payload", "len(" * 100_000 + "1" + ")" * 100_000),
        ("condition", "(" * 100_000 + "1" + ")" * 100_000),
        ("condition", "not " * 100_000 + "true"),
    ],
    ids=["parens", "minus", "lists", "calls", "condition-parens", "condition-not"],
)
def test_expression_one_hundred_thousand_deep(where, expression):
    if where == "payload":
        text = ONE_JOB + f"      function_name: f\n      payload: '${{{expression}}}'\n"
    else:
        text = ONE_JOB + f"      function_name: f\n    condition: '{expression}'\n"

    (problem,) = rejected(text).problems

    assert problem.path == (
        "jobs[0].parameters.payload" if where == "payload" else "jobs[0].condition"
    )
    assert "longer than 4096 characters" in problem.message


@pytest.mark.parametrize(
    "expression",
    ["(" * 40 + "1" + ")" * 40, "-" * 40 + "1", "[" * 40 + "]" * 40, "abs(" * 40 + "1" + ")" * 40],
    ids=["parens", "minus", "lists", "calls"],
)
def test_expression_nesting_within_the_length_limit_hits_the_depth_limit(expression):
    text = ONE_JOB + f"      function_name: f\n      payload: '${{{expression}}}'\n"

    (problem,) = rejected(text).problems

    assert "expression nests deeper than 32 levels" in problem.message
    assert problem.path == "jobs[0].parameters.payload"


def test_plain_data_nested_one_hundred_thousand_deep():
    # A JSON API body is not bounded by the YAML reader.
    deep: object = "${x}"
    for _ in range(100_000):
        deep = [deep]
    data = {
        "version": "1.1",
        "name": "p",
        "jobs": [
            {"id": "a", "type": "lambda", "parameters": {"function_name": "f", "payload": deep}}
        ],
    }

    with pytest.raises(PipelineInvalid) as caught:
        validate_pipeline(data)

    assert "nests deeper than 200 levels" in caught.value.problems[0].message


def test_ten_thousand_job_chain_loads():
    lines = [
        'version: "1.1"',
        "name: chain",
        "parameters:",
        "  - {name: bucket, default: b}",
        "jobs:",
    ]
    for i in range(10_000):
        lines.append(f"  - id: j{i}")
        lines.append("    type: lambda")
        payload = "{b: '${bucket}'" + (f", up: '${{jobs.j{i - 1}.output}}'" if i else "") + "}"
        lines.append(f"    parameters: {{function_name: f, payload: {payload}}}")
        if i:
            lines.append(f"    depends_on: [j{i - 1}]")

    pipeline = load_pipeline("\n".join(lines) + "\n")

    assert len(pipeline.jobs) == 10_000
    levels = pipeline.graph.levels()
    assert len(levels) == 10_000
    assert levels[-1] == ["j9999"]
    assert pipeline.graph.is_ancestor("j0", of="j9999")


def test_ten_thousand_job_cycle_is_found():
    jobs = [
        {
            "id": f"j{i}",
            "type": "custom",
            "parameters": {"command": "true"},
            "depends_on": [f"j{(i - 1) % 10_000}"],
        }
        for i in range(10_000)
    ]

    with pytest.raises(PipelineInvalid) as caught:
        validate_pipeline({"version": "1.1", "name": "ring", "jobs": jobs})

    (problem,) = caught.value.problems
    assert problem.message.startswith("dependency cycle: ")
    assert problem.message.count(" -> ") == 10_000


def test_more_jobs_than_the_limit():
    jobs = [
        {"id": f"j{i}", "type": "custom", "parameters": {"command": "true"}} for i in range(10_001)
    ]

    with pytest.raises(PipelineInvalid) as caught:
        validate_pipeline({"version": "1.1", "name": "wide", "jobs": jobs})

    (problem,) = caught.value.problems
    assert problem.path == "jobs"
    assert "10000" in problem.message


def test_huge_integer_parameter_value_is_a_parameter_error():
    param = Parameter(name="n", type="integer", validation={"max": 10})

    with pytest.raises(ParameterInvalid) as caught:
        resolve_parameters([param], text_values={"n": "9" * 400})

    assert "out of range" in caught.value.message


@pytest.mark.parametrize("field", ["default: ", "validation: {max: "])
def test_huge_integer_in_a_parameter_rule_is_a_located_problem(field):
    closing = "}" if field.startswith("validation") else ""
    text = (
        'version: "1.1"\nname: p\nparameters:\n  - name: n\n    type: integer\n'
        f"    {field}0x{'f' * 300}{closing}\n"
        "jobs: [{id: a, type: lambda, parameters: {function_name: f}}]\n"
    )

    (problem,) = rejected(text).problems

    assert problem.path.startswith("parameters[0]")
