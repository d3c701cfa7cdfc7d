"""Every class of pipeline error: its message, path, line, column and fix.

Each document is small and inline, so the expected line and column can be
read off the text. Lines and columns are 1-based.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent, indent

import pytest

from engine.errors import PipelineInvalid, Problem
from engine.loader import load_pipeline, read_pipeline, validate_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ml-pipeline"


def problems_of(text: str | bytes) -> list[Problem]:
    """The problems of a document that must not load."""
    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(text, "f.yaml")
    assert caught.value.problems, "PipelineInvalid without problems"
    return caught.value.problems


def the_problem(text: str | bytes) -> Problem:
    """The one problem of a document with exactly one."""
    found = problems_of(text)
    assert len(found) == 1, [p.render() for p in found]
    return found[0]


def doc(text: str) -> str:
    return dedent(text).lstrip("\n")


def assert_at(problem: Problem, path: str, line: int | None, column: int | None) -> None:
    assert (problem.path, problem.line, problem.column) == (path, line, column), problem


HEAD = 'version: "1.1"\nname: p\n'
"""Two lines; a job list that follows starts on line 3."""


def one_job(job_type: str, parameters: str) -> str:
    return HEAD + doc(
        f"""
        jobs:
          - id: a
            type: {job_type}
            parameters: {parameters}
        """
    )


# ------------------------------------------------------------------ YAML itself


def test_yaml_syntax_error_is_located_with_a_fix():
    problem = the_problem("a: [1, 2\n")

    assert problem.message.startswith("YAML syntax error:")
    assert "did not find expected ',' or ']'" in problem.message
    assert_at(problem, "", 2, 1)
    assert "indentation" in problem.hint


def test_yaml_tab_indentation_gets_the_tab_hint():
    problem = the_problem("a:\n\tb: 1\n")

    assert "YAML syntax error" in problem.message
    assert_at(problem, "", 2, 1)
    assert problem.hint == "indent with spaces, not tabs."


def test_document_that_is_a_list_is_not_a_pipeline():
    problem = the_problem("- a\n- b\n")

    assert problem.message == "the document is a list, not a mapping of pipeline fields."
    assert_at(problem, "", 1, 1)
    assert problem.hint.startswith('start with: version: "1.1"')


@pytest.mark.parametrize(
    ("text", "kind"),
    [("42\n", "an integer"), ("'x'\n", "a string"), ("true\n", "a boolean"), ("1.5\n", "a number")],
)
def test_document_that_is_a_scalar_is_not_a_pipeline(text, kind):
    problem = the_problem(text)

    assert problem.message == f"the document is {kind}, not a mapping of pipeline fields."
    assert problem.path == ""
    assert "start with" in problem.hint


def test_document_that_is_a_scalar_is_located_at_its_start():
    assert_at(the_problem("42\n"), "", 1, 1)


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# only a comment\n", "# one\n\n# two\n   # three\n", "---\n", "~\n"],
    ids=["empty", "blank-lines", "one-comment", "only-comments", "bare-marker", "null"],
)
def test_empty_file(text):
    problem = the_problem(text)

    assert problem.message == "the file is empty."
    assert problem.path == ""
    assert 'version: "1.1"' in problem.hint


def test_two_yaml_documents_in_one_file():
    problem = the_problem("a: 1\n---\nb: 2\n")

    assert "more than one YAML document" in problem.message
    assert_at(problem, "", 2, 1)
    assert problem.hint == "keep one pipeline per file."


def test_file_that_is_not_utf8():
    problem = the_problem(b"version: \xff\n")

    assert problem.message == "is not UTF-8 text (byte 9)."
    assert problem.hint == "save the file as UTF-8."


def test_duplicate_yaml_keys_are_all_reported():
    text = HEAD + doc(
        """
        jobs:
          - id: a
            type: lambda
            id: b
            parameters: {function_name: f, function_name: g}
        """
    )

    first, second = problems_of(text)

    assert first.message == "duplicate key 'id'; the earlier value would be silently replaced."
    assert_at(first, "jobs[0].id", 6, 5)
    assert first.hint == "remove one of the two."
    assert second.message.startswith("duplicate key 'function_name'")
    assert_at(second, "jobs[0].parameters.function_name", 7, 36)


@pytest.mark.parametrize(
    "tagged",
    [
        "!!python/object:os.system {}",
        "!!python/object/apply:os.system ['touch SENTINEL']",
        "!!python/name:os.system ''",
        "!!binary aGVsbG8=",
        "!custom x",
    ],
)
def test_unsupported_yaml_tag(tagged):
    text = one_job("lambda", "{function_name: f}") + f"    description: {tagged}\n"

    problem = the_problem(text)

    tag = tagged.split()[0].replace("!!", "tag:yaml.org,2002:")
    assert problem.message == f"unsupported YAML tag '{tag}'."
    assert_at(problem, "jobs[0].description", 7, 18)
    assert problem.hint.startswith("remove the tag")


def test_mapping_key_that_is_not_a_string():
    problem = the_problem(HEAD + "1: x\n")

    assert problem.message == "mapping key 1 is not a string."
    assert_at(problem, "", 3, 1)
    assert problem.hint == 'quote the key: "1".'


def test_alias_without_anchor():
    problem = the_problem(HEAD + "description: *nope\n")

    assert problem.message == "alias '*nope' refers to no anchor defined before it."
    assert_at(problem, "description", 3, 14)
    assert problem.hint == "define '&nope' earlier in the file."


def test_integer_with_too_many_digits_is_a_located_problem():
    problem = the_problem(HEAD + "max_concurrency: " + "1" * 70 + "\n")

    assert "out of range" in problem.message
    assert_at(problem, "max_concurrency", 3, 18)


def test_tagged_integer_with_too_many_digits_is_a_located_problem():
    problem = the_problem(HEAD + "max_concurrency: !!int " + "1" * 70 + "\n")

    assert "out of range" in problem.message
    assert_at(problem, "max_concurrency", 3, 18)


# ------------------------------------------------------------------ unknown and missing fields


def test_unknown_top_level_field_with_suggestion():
    text = one_job("lambda", "{function_name: f}") + "descrption: x\n"

    problem = the_problem(text)

    assert problem.message == "unknown field 'descrption'."
    assert_at(problem, "descrption", 7, 1)
    assert problem.hint == "did you mean 'description'?"


def test_unknown_top_level_field_without_close_match_lists_the_fields():
    problem = the_problem(one_job("lambda", "{function_name: f}") + "zzz: 1\n")

    assert problem.message == "unknown field 'zzz'."
    assert problem.hint == (
        "remove it; allowed here: description, jobs, max_concurrency, metadata, name, "
        "parameters, timeout, version."
    )


def test_unknown_job_field_with_suggestion():
    text = one_job("lambda", "{function_name: f}") + "    retires: 2\n"

    problem = the_problem(text)

    assert problem.message == "unknown field 'retires'."
    assert_at(problem, "jobs[0].retires", 7, 5)
    assert problem.hint == "did you mean 'retries'?"


def test_unknown_field_inside_job_parameters_with_suggestion():
    text = HEAD + doc(
        """
        jobs:
          - id: a
            type: lambda
            parameters:
              function_name: f
              paylod: {}
        """
    )

    problem = the_problem(text)

    assert problem.message == "unknown field 'paylod'."
    assert_at(problem, "jobs[0].parameters.paylod", 8, 7)
    assert problem.hint == "did you mean 'payload'?"


def test_misspelt_required_job_parameter_reports_both_halves():
    text = HEAD + doc(
        """
        jobs:
          - id: a
            type: lambda
            parameters:
              function_nam: f
        """
    )

    missing, unknown = problems_of(text)

    assert missing.message == "missing required field 'function_name'."
    assert missing.path == "jobs[0].parameters.function_name"
    assert unknown.message == "unknown field 'function_nam'."
    assert_at(unknown, "jobs[0].parameters.function_nam", 7, 7)
    assert unknown.hint == "did you mean 'function_name'?"


@pytest.mark.parametrize(
    ("field", "hint"),
    [
        ("version", 'add version: "1.1" at the top of the file.'),
        ("name", 'add name: "My Pipeline" at the top of the file.'),
        ("jobs", "add a jobs: list with at least one job."),
    ],
)
def test_missing_top_level_field(field, hint):
    lines = {
        "version": 'version: "1.1"\n',
        "name": "name: p\n",
        "jobs": "jobs:\n  - {id: a, type: lambda, parameters: {function_name: f}}\n",
    }
    text = "".join(line for key, line in lines.items() if key != field)

    problem = the_problem(text)

    assert problem.message == f"missing required field '{field}'."
    # A missing field has no place of its own: it is reported where the mapping starts.
    assert_at(problem, field, 1, 1)
    assert problem.hint == hint


def test_missing_job_id():
    text = HEAD + doc(
        """
        jobs:
          - type: lambda
            parameters: {function_name: f}
        """
    )

    problem = the_problem(text)

    assert problem.message == "missing required field 'id'."
    assert_at(problem, "jobs[0].id", 4, 5)
    assert problem.hint == "give the job an id, e.g. id: prepare_data."


def test_missing_job_type():
    text = HEAD + doc(
        """
        jobs:
          - id: a
            parameters: {function_name: f}
        """
    )

    problem = the_problem(text)

    assert problem.message == "missing required field 'type'."
    assert_at(problem, "jobs[0]", 4, 5)
    assert problem.hint == "add type: one of lambda, ecs, step_function, glue, batch, emr, custom."


@pytest.mark.parametrize(
    ("job_type", "given", "missing"),
    [
        ("lambda", "{qualifier: live}", "function_name"),
        ("ecs", "{cluster: c}", "task_definition"),
        ("step_function", "{input: {}}", "state_machine_arn"),
        ("glue", "{arguments: {}}", "job_name"),
        ("batch", "{job_definition: d}", "job_queue"),
        ("batch", "{job_queue: q}", "job_definition"),
        ("emr", "{cluster_id: j-ABC}", "step_config"),
        ("emr", "{step_config: {args: [x]}}", "cluster_id"),
        ("custom", "{environment: {}}", "command"),
    ],
)
def test_missing_required_job_parameter(job_type, given, missing):
    problem = the_problem(one_job(job_type, given))

    assert problem.message == f"missing required field '{missing}'."
    # Located at the parameters mapping: `    parameters: {` puts the brace at column 17.
    assert_at(problem, f"jobs[0].parameters.{missing}", 6, 17)
    assert problem.hint == f"add {missing}: ..."


def test_missing_job_parameters_block():
    text = HEAD + "jobs:\n  - id: a\n    type: glue\n"

    problem = the_problem(text)

    assert problem.message == "missing required field 'parameters'."
    assert_at(problem, "jobs[0].parameters", 4, 5)
    assert problem.hint == "add parameters: with the fields its type needs."


# ------------------------------------------------------------------ types and values


def test_retries_given_as_a_string():
    problem = the_problem(one_job("lambda", "{function_name: f}") + '    retries: "2"\n')

    assert problem.message == "expected an integer, got a string '2'."
    assert_at(problem, "jobs[0].retries", 7, 14)


def test_depends_on_given_as_a_string():
    text = one_job("lambda", "{function_name: f}") + '    depends_on: "a"\n'

    problem = the_problem(text)

    assert problem.message == "expected a list, got a string 'a'."
    assert_at(problem, "jobs[0].depends_on", 7, 17)
    assert problem.hint == "write a list: [a]."


def test_timeout_that_is_not_a_duration():
    problem = the_problem(one_job("lambda", "{function_name: f}") + "    timeout: abc\n")

    assert "'abc' is not a duration" in problem.message
    assert "90s, 15m, 2h" in problem.message
    assert_at(problem, "jobs[0].timeout", 7, 14)


def test_string_field_given_a_number_is_told_to_quote_it():
    problem = the_problem(
        'version: "1.1"\nname: 12\njobs: [{id: a, type: custom, parameters: {command: x}}]\n'
    )

    assert problem.message == "expected a string, got an integer 12."
    assert_at(problem, "name", 2, 7)
    assert problem.hint == 'quote it: "12".'


def test_number_out_of_range():
    problem = the_problem(one_job("lambda", "{function_name: f}") + "    retries: 101\n")

    assert "less than or equal to 100" in problem.message
    assert "(got 101)" in problem.message
    assert_at(problem, "jobs[0].retries", 7, 14)


def test_enum_value_with_suggestion():
    text = one_job("lambda", "{function_name: f}") + "    trigger_rule: all_sucess\n"

    problem = the_problem(text)

    assert problem.message.startswith("'all_sucess' is not one of: all_success, all_failed")
    assert_at(problem, "jobs[0].trigger_rule", 7, 19)
    assert problem.hint == "did you mean 'all_success'?"


def test_unknown_job_type_with_suggestion():
    problem = the_problem(one_job("lamda", "{function_name: f}"))

    assert problem.message == "unknown job type 'lamda'."
    assert_at(problem, "jobs[0].type", 5, 11)
    assert problem.hint.startswith("did you mean 'lambda'?")
    assert "lambda, ecs, step_function, glue, batch, emr, custom" in problem.hint


def test_unknown_job_type_without_close_match_lists_the_types():
    problem = the_problem(one_job("kubernetes", "{function_name: f}"))

    assert problem.message == "unknown job type 'kubernetes'."
    assert problem.hint == "job types: lambda, ecs, step_function, glue, batch, emr, custom."


# ------------------------------------------------------------------ the graph

LAMBDA = "    type: lambda\n    parameters: {function_name: f}\n"


def jobs_doc(*jobs: tuple[str, str]) -> str:
    """A document of lambda jobs given as (id, extra lines); each job is three lines + extra."""
    text = HEAD + "jobs:\n"
    for job_id, extra in jobs:
        text += f"  - id: {job_id}\n" + LAMBDA + extra
    return text


def test_duplicate_job_ids():
    problem = the_problem(jobs_doc(("a", ""), ("b", ""), ("a", "")))

    assert problem.message == "duplicate job id 'a' (first used by jobs[0])."
    assert_at(problem, "jobs[2].id", 10, 9)
    assert problem.hint == "give every job its own id."


def test_unknown_dependency_with_suggestion():
    text = jobs_doc(("prepare", ""), ("train", "    depends_on: [prepare, prepar]\n"))

    problem = the_problem(text)

    assert problem.message == "unknown job 'prepar' in depends_on."
    assert_at(problem, "jobs[1].depends_on[1]", 10, 27)
    assert problem.hint == "did you mean 'prepare'?"


def test_unknown_dependency_without_close_match():
    problem = the_problem(jobs_doc(("a", ""), ("b", "    depends_on: [zzz]\n")))

    assert problem.message == "unknown job 'zzz' in depends_on."
    assert problem.hint == "use the id of a job of this pipeline."


def test_dependency_listed_twice():
    problem = the_problem(jobs_doc(("a", ""), ("b", "    depends_on: [a, a]\n")))

    assert problem.message == "'a' is listed twice."
    assert_at(problem, "jobs[1].depends_on[1]", 10, 21)


def test_self_dependency():
    problem = the_problem(jobs_doc(("a", "    depends_on: [a]\n")))

    assert problem.message == "job 'a' depends on itself."
    assert_at(problem, "jobs[0].depends_on[0]", 7, 18)
    assert problem.hint == "remove it from depends_on."


def test_three_job_cycle_prints_its_path():
    text = jobs_doc(
        ("a", "    depends_on: [c]\n"),
        ("b", "    depends_on: [a]\n"),
        ("c", "    depends_on: [b]\n"),
    )

    problem = the_problem(text)

    assert problem.message == "dependency cycle: a -> b -> c -> a."
    # Reported at the edge that closes the cycle: b depends on a.
    assert_at(problem, "jobs[1].depends_on[0]", 11, 18)
    assert problem.hint.startswith("remove one of these dependencies")


def test_cycle_is_found_although_a_job_on_it_is_invalid():
    text = jobs_doc(
        ("a", "    depends_on: [b]\n    retries: many\n"),
        ("b", "    depends_on: [a]\n"),
    )

    messages = [p.message for p in problems_of(text)]

    assert "dependency cycle: a -> b -> a." in messages
    assert "expected an integer, got a string 'many'." in messages


# ------------------------------------------------------------------ parameters' rules


def params_doc(parameters: str) -> str:
    """A document whose parameter list starts on line 4."""
    return (
        HEAD
        + "parameters:\n"
        + indent(doc(parameters), "  ")
        + doc(
            """
        jobs:
          - {id: a, type: lambda, parameters: {function_name: f}}
        """
        )
    )


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(unclosed", "unclosed group"),
        ("(?=a)b", "look-around"),
        (r"(a)\1", "backreferences"),
    ],
)
def test_invalid_regex_pattern(pattern, reason):
    text = params_doc(
        f"""
          - name: x
            validation: {{pattern: '{pattern}'}}
        """
    )

    problem = the_problem(text)

    assert problem.message.startswith(f"invalid regular expression {pattern!r}:")
    assert reason in problem.message
    assert_at(problem, "parameters[0].validation.pattern", 5, 27)
    assert "look-around and back-references are not supported" in problem.hint


def test_min_greater_than_max():
    text = params_doc(
        """
          - name: x
            type: integer
            validation: {min: 5, max: 1}
        """
    )

    problem = the_problem(text)

    assert problem.message == "min (5) is greater than max (1); no value can pass."
    assert_at(problem, "parameters[0].validation.min", 6, 23)
    assert problem.hint == "swap them, or fix one."


@pytest.mark.parametrize(
    ("parameter", "rule_text"),
    [
        (
            """
              - name: x
                default: ABC
                validation: {pattern: '[a-z]+'}
            """,
            "'ABC' does not match the pattern '[a-z]+' (validation.pattern).",
        ),
        (
            """
              - name: x
                default: dev
                validation: {enum: [staging, prod]}
            """,
            """'dev' is not one of the allowed values (validation.enum): "staging", "prod".""",
        ),
        (
            """
              - name: x
                default: 50
                type: integer
                validation: {max: 10}
            """,
            "50 is above the maximum 10 (validation.max).",
        ),
    ],
    ids=["pattern", "enum", "max"],
)
def test_default_failing_its_own_validation(parameter, rule_text):
    problem = the_problem(params_doc(parameter))

    assert problem.message == f"the default fails the parameter's own rules: {rule_text}"
    assert_at(problem, "parameters[0].default", 5, 14)
    assert problem.hint == "change the default or the rule."


def test_parameter_declared_twice_and_reserved_name():
    text = params_doc(
        """
          - name: x
          - name: x
          - name: item
        """
    )

    twice, reserved = problems_of(text)

    assert twice.message == "parameter 'x' is declared twice (also parameters[0])."
    assert_at(twice, "parameters[1].name", 5, 11)
    assert reserved.message == "'item' is reserved by the expression language."
    assert_at(reserved, "parameters[2].name", 6, 11)


# ------------------------------------------------------------------ expressions


def test_expression_syntax_error_in_a_payload_string():
    text = HEAD + doc(
        """
        jobs:
          - id: a
            type: lambda
            parameters:
              function_name: f
              payload: {x: '${1 +}'}
        """
    )

    problem = the_problem(text)

    assert problem.message.startswith("invalid expression: expected a value, got end of expression")
    assert "(at character 6 of '${1 +}')" in problem.message
    assert_at(problem, "jobs[0].parameters.payload.x", 8, 20)
    assert "dsl-reference" in problem.hint


def test_expression_syntax_error_in_a_condition():
    problem = the_problem(jobs_doc(("a", "    condition: 'a >'\n")))

    assert problem.message.startswith("invalid condition: expected a value")
    assert "(at character 4 of 'a >')" in problem.message
    assert_at(problem, "jobs[0].condition", 7, 16)
    assert "dsl-reference" in problem.hint


def test_condition_mixing_text_and_a_template():
    problem = the_problem(jobs_doc(("a", "    condition: 'x is ${a}'\n")))

    assert "a condition must be one expression" in problem.message
    assert problem.path == "jobs[0].condition"


def test_unterminated_template():
    problem = the_problem(jobs_doc(("a", "    description: ok\n    condition: '${a'\n")))

    assert "'${' is never closed with '}'" in problem.message
    assert_at(problem, "jobs[0].condition", 8, 16)


def test_unknown_name_with_suggestion_of_a_parameter():
    text = params_doc(
        """
          - name: threshold
            type: float
            default: 0.5
        """
    ).replace(
        "{function_name: f}",
        "{function_name: f, payload: {x: '${treshold}'}}",
    )

    problem = the_problem(text)

    assert problem.message == (
        "unknown name 'treshold': it is not a parameter, and job 'a' has no upstream jobs "
        "whose outputs could provide it."
    )
    assert_at(problem, "jobs[0].parameters.payload.x", 8, 71)
    assert problem.hint == "did you mean 'threshold'?"


def test_unknown_name_below_an_upstream_job_that_declares_its_outputs():
    text = jobs_doc(
        ("a", "    outputs: [model_path]\n"),
        ("b", "    depends_on: [a]\n    condition: '${model_pth != null}'\n"),
    )

    problem = the_problem(text)

    assert problem.message == (
        "unknown name 'model_pth': it is not a parameter, and no upstream job of 'b' "
        "declares it in outputs."
    )
    assert_at(problem, "jobs[1].condition", 12, 16)
    assert problem.hint == "did you mean 'model_path'?"


def test_job_reference_that_is_not_upstream():
    text = jobs_doc(("a", ""), ("b", "    condition: '${jobs.a.status == \"succeeded\"}'\n"))

    problem = the_problem(text)

    assert problem.message == (
        "jobs.a is not upstream of job 'b': its value would not exist when this job runs."
    )
    assert_at(problem, "jobs[1].condition", 10, 16)
    assert problem.hint == "add 'a' (or a job after it) to depends_on of 'b'."


def test_job_reference_to_no_job():
    text = jobs_doc(("train", ""), ("b", "    condition: '${jobs.trian.output}'\n"))

    problem = the_problem(text)

    assert problem.message == "jobs.trian: no job has the id 'trian'."
    assert problem.hint == "did you mean 'train'?"


def test_item_outside_a_fan_out():
    text = HEAD + doc(
        """
        jobs:
          - id: a
            type: lambda
            parameters:
              function_name: f
              payload: {x: '${item}'}
        """
    )

    problem = the_problem(text)

    assert problem.message == "'item' exists only in a job with for_each."
    assert_at(problem, "jobs[0].parameters.payload.x", 8, 20)
    assert problem.hint == "add for_each to this job, or use another name."


def test_item_inside_a_fan_out_is_fine():
    text = jobs_doc(("a", "    for_each: [1, 2]\n    condition: '${item > 1}'\n"))

    assert load_pipeline(text).jobs[0].fan_out.items == [1, 2]


@pytest.mark.parametrize(
    ("upstream", "extra", "expected"),
    [
        ("a", "    retries: many\n", "expected an integer, got a string 'many'."),
        ("my-job", "", "job id 'my-job' is not an identifier"),
    ],
    ids=["invalid-field", "invalid-id"],
)
def test_upstream_name_below_an_invalid_job_does_not_crash(upstream, extra, expected):
    text = jobs_doc(
        (upstream, extra),
        ("b", f"    depends_on: [{upstream}]\n    condition: '${{score > 1}}'\n"),
    )

    messages = [p.message for p in problems_of(text)]

    assert len(messages) == 1
    assert messages[0].startswith(expected)


def test_job_reference_to_an_invalid_job_does_not_claim_it_is_missing():
    text = jobs_doc(
        ("a", "    retries: many\n"),
        ("b", "    depends_on: [a]\n    condition: '${jobs.a.status}'\n"),
    )

    messages = [p.message for p in problems_of(text)]

    assert not any("no job has the id 'a'" in message for message in messages)


@pytest.mark.parametrize(
    ("extra", "path", "hint"),
    [
        ("    for_each: {itmes: [1]}\n", "jobs[0].for_each.itmes", "did you mean 'items'?"),
        (
            "    outputs: [{name: x, typ: string}]\n",
            "jobs[0].outputs[0].typ",
            "did you mean 'type'?",
        ),
    ],
    ids=["for_each", "outputs"],
)
def test_misspelt_field_in_the_mapping_form_of_a_union_is_the_only_problem(extra, path, hint):
    problem = the_problem(jobs_doc(("a", extra)))

    assert (problem.path, problem.hint) == (path, hint)


# ------------------------------------------------------------------ all at once, and rendering

MANY_PROBLEMS = doc(
    """
    version: "1.1"
    name: p
    descrption: x
    parameters:
      - name: n
        type: integer
        default: 50
        validation: {min: 9, max: 3}
    jobs:
      - id: a
        type: lamda
        parameters: {function_name: f}
      - id: b
        type: lambda
        parameters:
          function_name: f
          payload: '${n +}'
        depends_on: [c]
      - id: c
        type: lambda
        parameters: {function_name: f}
        depends_on: [b, zz]
        retries: "2"
      - id: d
        type: lambda
        parameters: {function_name: f, payload: {x: '${item}'}}
    """
)


def test_every_problem_of_a_file_is_reported_at_once_sorted_by_line():
    found = problems_of(MANY_PROBLEMS)

    assert [(p.line, p.path, p.message.split(":")[0].split("'")[0]) for p in found] == [
        (3, "descrption", "unknown field "),
        (7, "parameters[0].default", "the default fails the parameter"),
        (8, "parameters[0].validation.min", "min (9) is greater than max (3); no value can pass."),
        (11, "jobs[0].type", "unknown job type "),
        (17, "jobs[1].parameters.payload", "invalid expression"),
        (22, "jobs[2].depends_on[0]", "dependency cycle"),
        (22, "jobs[2].depends_on[1]", "unknown job "),
        (23, "jobs[2].retries", "expected an integer, got a string "),
        (26, "jobs[3].parameters.payload.x", ""),
    ]
    assert found == sorted(found, key=lambda p: (p.line, p.column))
    assert "dependency cycle: b -> c -> b." in [p.message for p in found]
    assert found[-1].message == "'item' exists only in a job with for_each."


def test_exception_text_is_one_rendered_line_per_problem():
    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(MANY_PROBLEMS, "f.yaml")

    lines = str(caught.value).splitlines()
    assert lines == caught.value.lines()
    assert len(lines) == 9
    assert all(line.startswith("f.yaml:") for line in lines)


def test_rendered_line_format():
    problem = the_problem(one_job("lamda", "{function_name: f}"))

    assert problem.render("f.yaml") == (
        "f.yaml:5:11: jobs[0].type: unknown job type 'lamda'. Fix: did you mean 'lambda'? "
        "Job types: lambda, ecs, step_function, glue, batch, emr, custom."
    )


def test_rendered_line_without_location_path_or_hint():
    assert Problem("", "the file is empty.").render("f.yaml") == "f.yaml: the file is empty."
    assert Problem("a", "bad.", "fix it.", 3).render() == "<pipeline>:3: a: bad. Fix: fix it."


# ------------------------------------------------------------------ files and plain data


@pytest.mark.parametrize(
    "name",
    [
        "ml-pipeline.yaml",
        "hyperparameter-grid.yaml",
        "hyperparameter-tuning.yaml",
        "parallel-preparation.yaml",
    ],
)
def test_example_pipelines_load(name):
    pipeline = read_pipeline(EXAMPLES / name)

    assert pipeline.jobs
    assert pipeline.graph.topological_order


def test_product_pipeline_shape():
    pipeline = read_pipeline(EXAMPLES / "ml-pipeline.yaml")

    assert pipeline.name == "ML Training Pipeline"
    assert [job.id for job in pipeline.jobs][:3] == ["prepare_data", "validate_data", "train_model"]
    assert pipeline.job("train_model").timeout == 7200.0
    assert pipeline.parameter("model_name").required


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PipelineInvalid) as caught:
        read_pipeline(tmp_path / "nope.yaml")
    assert caught.value.problems[0].message == "file not found."

    with pytest.raises(PipelineInvalid) as caught:
        read_pipeline(tmp_path)
    assert caught.value.problems[0].message == "is a directory, not a pipeline file."


def valid_data() -> dict:
    return {
        "version": "1.1",
        "name": "From an API body",
        "parameters": [{"name": "bucket", "default": "b"}],
        "jobs": [
            {"id": "a", "type": "lambda", "parameters": {"function_name": "f"}},
            {
                "id": "b",
                "type": "custom",
                "depends_on": ["a"],
                "parameters": {"command": ["echo", "${bucket}", "${jobs.a.output}"]},
            },
        ],
    }


def test_plain_data_without_a_source_map_validates():
    pipeline = validate_pipeline(valid_data())

    assert pipeline.name == "From an API body"
    assert pipeline.graph.parents("b") == ["a"]
    assert pipeline.parameter("bucket").default == "b"


def test_plain_data_errors_carry_paths_but_no_lines():
    data = valid_data()
    data["jobs"][1]["depends_on"] = ["a", "aa"]
    data["jobs"][1]["retires"] = 1

    with pytest.raises(PipelineInvalid) as caught:
        validate_pipeline(data)

    found = {(p.path, p.message, p.hint) for p in caught.value.problems}
    assert found == {
        ("jobs[1].retires", "unknown field 'retires'.", "did you mean 'retries'?"),
        ("jobs[1].depends_on[1]", "unknown job 'aa' in depends_on.", "did you mean 'a'?"),
    }
    assert all(p.line is None and p.column is None for p in caught.value.problems)
    assert str(caught.value).startswith("<pipeline>: jobs[")


def test_plain_data_that_is_not_a_mapping():
    with pytest.raises(PipelineInvalid) as caught:
        validate_pipeline(["a"], source="body")

    assert caught.value.lines() == [
        "body: the document is a list, not a mapping of pipeline fields. Fix: start with: "
        'version: "1.1", name: ..., jobs: [...]'
    ]
