"""The plan Lambda handler, called in-process with the sample events of events/."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from handlers.plan import handler
from tests.conftest import ROOT

EVENTS = ROOT / "events"


@dataclass
class Context:
    function_name: str = "bunsui-plan"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:bunsui-plan"
    aws_request_id: str = "0f5c2b8e-request"


def invoke(name: str) -> dict:
    return handler(json.loads((EVENTS / name).read_text()), Context())


def test_plans_the_product_pipeline():
    reply = invoke("plan-ml-pipeline.json")
    assert reply["valid"] is True
    plan = reply["plan"]
    assert plan["pipeline"] == "ML Training Pipeline"
    assert [job["id"] for job in plan["jobs"]][-1] == "update_registry"
    evaluate = next(job for job in plan["jobs"] if job["id"] == "evaluate_model")
    assert evaluate["inputs"]["payload"]["threshold"] == 0.85


def test_invalid_pipeline_gets_the_cli_messages():
    reply = invoke("plan-invalid-pipeline.json")
    assert reply["valid"] is False
    error = reply["error"]
    assert error["type"] == "PipelineInvalid"
    paths = [p["path"] for p in error["problems"]]
    assert paths == ["jobs[1].depends_on[0]", "jobs[2].type"]
    assert "ml-pipeline.yaml:52:18" in error["message"]


def test_bad_parameter_names_parameter_value_and_rule():
    reply = invoke("plan-bad-parameter.json")
    assert reply["error"]["type"] == "ParameterInvalid"
    assert reply["error"]["parameter"] == "evaluation_threshold"
    assert "1.5" in reply["error"]["message"]


@pytest.mark.parametrize("event", [{}, {"document": ""}, {"document": "x", "extra": 1}, []])
def test_a_malformed_event_is_answered_not_crashed_on(event):
    reply = handler(event, Context())
    assert reply["valid"] is False
    assert reply["error"]["type"] == "RequestInvalid"


def test_every_sample_event_is_used_by_a_test():
    used = {"plan-ml-pipeline.json", "plan-invalid-pipeline.json", "plan-bad-parameter.json"}
    assert {path.name for path in EVENTS.glob("plan-*.json")} == used


def test_function_requirements_match_the_project_pins():
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for line in (ROOT / "src" / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert pins[name.lower().replace("_", "-")] == version, name
