"""The `bunsui` command as a user runs it: exit codes, stdout/stderr, formats."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from bunsui.arguments import expand_parameters
from bunsui.cli import main
from tests.conftest import EXAMPLES, PRODUCT_PARAMETERS, PRODUCT_PIPELINE

pytestmark = pytest.mark.e2e
BUNSUI = shutil.which("bunsui", path=str(Path(sys.executable).parent))


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_the_product_pipeline(capsys):
    code, out, err = run(capsys, "pipeline", "validate", "--file", str(PRODUCT_PIPELINE))
    assert code == 0, err
    assert "'ML Training Pipeline' is valid" in out
    assert "6 jobs in 6 levels" in out


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_validates_as_json(capsys, name):
    code, out, _ = run(
        capsys, "pipeline", "validate", "-f", str(EXAMPLES / name), "--format", "json"
    )
    assert code == 0
    assert json.loads(out)["valid"] is True


def test_plan_with_the_product_session_parameters_exactly_as_written(capsys):
    code, out, err = run(
        capsys,
        "pipeline",
        "plan",
        "--file",
        str(PRODUCT_PIPELINE),
        "--parameters",
        *PRODUCT_PARAMETERS,
        "--format",
        "json",
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["parameters"]["hyperparameters"] == {"max_depth": 10, "n_estimators": 100}
    assert plan["parameters"]["evaluation_threshold"] == 0.85
    assert plan["levels"][4] == ["deploy_model"]


def test_plan_table_shows_levels_inputs_and_upstream_names(capsys):
    code, out, _ = run(
        capsys,
        "pipeline",
        "plan",
        "--file",
        str(PRODUCT_PIPELINE),
        "--parameters",
        *PRODUCT_PARAMETERS,
    )
    assert code == 0
    assert "Level 4" in out
    assert 'HYPERPARAMETERS: \'{"max_depth": 10, "n_estimators": 100}\'' in out
    assert "from upstream output: evaluation_passed" in out
    assert "condition: ${evaluation_passed} decided at run time" in out


def test_parameters_may_be_repeated_or_read_from_a_file(capsys, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        "model_name: from_file\ntraining_data_path: s3://b/k\nevaluation_threshold: 0.9\n"
    )
    code, out, err = run(
        capsys,
        "pipeline",
        "plan",
        "-f",
        str(PRODUCT_PIPELINE),
        "--parameters-file",
        str(values),
        "-p",
        "model_name=from_flag",
        "--format",
        "yaml",
    )
    assert code == 0, err
    plan = yaml.safe_load(out)
    assert plan["parameters"]["model_name"] == "from_flag"
    assert plan["parameters"]["evaluation_threshold"] == 0.9


def test_a_bad_parameter_is_one_line_and_exit_2(capsys):
    code, out, err = run(
        capsys,
        "pipeline",
        "plan",
        "-f",
        str(PRODUCT_PIPELINE),
        "--parameters",
        "model_name=customer_churn_model",
        "training_data_path=s3://b/k",
        "evaluation_threshold=1.5",
    )
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "evaluation_threshold" in lines[0] and "1.5" in lines[0] and "maximum" in lines[0]


def test_an_unknown_parameter_suggests_a_name(capsys):
    code, _, err = run(capsys, "pipeline", "plan", "-f", str(PRODUCT_PIPELINE), "-p", "model_nam=x")
    assert code == 2
    assert "did you mean 'model_name'" in err


def test_an_invalid_pipeline_lists_every_problem_and_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        PRODUCT_PIPELINE.read_text()
        .replace("depends_on: [prepare_data]", "depends_on: [prepare_dat]")
        .replace("type: ecs", "type: ec2")
    )
    code, _out, err = run(capsys, "pipeline", "validate", "--file", str(bad))
    assert code == 2
    assert f"{bad}:52:18: jobs[1].depends_on[0]: unknown job 'prepare_dat'" in err
    assert "did you mean 'prepare_data'?" in err
    assert "jobs[2].type: unknown job type 'ec2'" in err
    assert "2 problems." in err


def test_invalid_pipeline_as_json_goes_to_stdout(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: '1.1'\nname: x\njobs: []\n")
    code, out, _ = run(capsys, "pipeline", "validate", "--file", str(bad), "--format", "json")
    assert code == 2
    result = json.loads(out)
    assert result["valid"] is False
    assert result["problems"][0]["path"] == "jobs"


def test_missing_file_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "pipeline", "validate", "--file", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "file not found" in err


@pytest.mark.parametrize(
    ("fmt", "marker"),
    [
        ("text", "L4  ◀ deploy_model"),
        ("mermaid", 'evaluate_model -.->|"${evaluation_passed}"| deploy_model'),
        ("dot", '"evaluate_model" -> "deploy_model" [style=dashed, label="${evaluation_passed}"];'),
    ],
)
def test_graph_formats(capsys, fmt, marker):
    code, out, _ = run(capsys, "pipeline", "graph", "-f", str(PRODUCT_PIPELINE), "--format", fmt)
    assert code == 0
    assert marker in out


def test_schema_is_a_json_schema_every_example_conforms_to(capsys):
    code, out, _ = run(capsys, "pipeline", "schema")
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in EXAMPLES.glob("*.yaml"):
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert errors == [], (path.name, [e.message for e in errors])
    bad = yaml.safe_load(PRODUCT_PIPELINE.read_text())
    bad["jobs"][0]["type"] = "lamda"
    assert list(validator.iter_errors(bad))


def test_expand_parameters_keeps_other_arguments():
    argv = ["pipeline", "plan", "--parameters", "a=1", "b=x=y", "--format", "json", "-p", "c=3"]
    assert expand_parameters(argv) == [
        "pipeline",
        "plan",
        "--parameters",
        "a=1",
        "--parameters",
        "b=x=y",
        "--format",
        "json",
        "-p",
        "c=3",
    ]


def test_a_pair_without_equals_is_an_error(capsys):
    code, _, err = run(capsys, "pipeline", "plan", "-f", str(PRODUCT_PIPELINE), "-p", "model_name")
    assert code == 2
    assert "is not name=value" in err


def test_the_installed_command_never_prints_a_traceback(tmp_path):
    assert BUNSUI, "the bunsui console script is installed in the venv"
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs: [\n")
    for args in (
        ["pipeline", "validate", "--file", str(bad)],
        ["pipeline", "plan", "--file", str(PRODUCT_PIPELINE), "-p", "evaluation_threshold=high"],
        ["pipeline", "graph", "--file", str(PRODUCT_PIPELINE), "--format", "png"],
        ["pipeline", "nonsense"],
    ):
        result = subprocess.run([BUNSUI, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip()


def test_version_and_help(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("bunsui ")
    code, out, _ = run(capsys, "pipeline", "--help")
    assert code == 0
    for command in ("validate", "plan", "graph", "schema"):
        assert command in out
