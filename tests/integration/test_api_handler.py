"""The HTTP API handler with the sample requests of events/ (API Gateway HTTP API, payload
2.0) on moto: every route, every error a user can cause as a 4xx with the CLI's own
message, and the committed OpenAPI document."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from bunsui.cli import main as cli
from handlers import api
from tests.conftest import PRODUCT_PIPELINE, ROOT
from tests.integration.test_aws_service import (
    PRODUCT_PARAMETER_TEXT,
    AwsWorld,
    Context,
)
from tests.integration.test_aws_service import world as aws_world

SAMPLE_SESSION = "20260115-5d1c9b2e7a40"


@pytest.fixture
def world(aws_world: AwsWorld, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsWorld]:
    monkeypatch.setattr(api, "engine", lambda: aws_world.engine)
    yield aws_world


__all__ = ["aws_world"]


def call(event: dict[str, Any]) -> tuple[int, Any]:
    reply = api.handler(event, Context())
    body = reply.get("body")
    if body and reply.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return reply["statusCode"], json.loads(body) if body else None


def request(name: str, session_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """A sample request, for a live session's id; ``body`` replaces its JSON body."""
    text = (ROOT / "events" / f"{name}.json").read_text()
    if session_id is not None:
        text = text.replace(SAMPLE_SESSION, session_id)
    event = json.loads(text)
    if "body" in changes:
        event["body"] = json.dumps(changes.pop("body"))
    event.update(changes)
    return event


def created(world: AwsWorld) -> None:
    status, _ = call(request("api-create-pipeline"))
    assert status == 201


def start(world: AwsWorld) -> str:
    created(world)
    status, body = call(request("api-start-session"))
    assert status == 201, body
    return body["session"]["id"]


def cli_error_lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """What the bunsui CLI prints for an error: its lines, without ``error: ``."""
    capsys.readouterr()
    assert cli(list(argv)) == 2
    lines = capsys.readouterr().err.splitlines()
    return [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]


# ---------------------------------------------------------------------- pipelines


def test_the_ml_pipeline_is_created_listed_shown_and_deleted(world: AwsWorld):
    status, body = call(request("api-create-pipeline"))
    assert (status, body) == (
        201,
        {"name": "ML Training Pipeline", "version": 1, "jobs": 6, "created": True},
    )
    assert call(request("api-create-pipeline"))[1]["created"] is False
    status, body = call(request("api-list-pipelines"))
    assert status == 200 and [p["name"] for p in body["pipelines"]] == ["ML Training Pipeline"]
    status, body = call(request("api-show-pipeline"))  # a name with spaces, percent-encoded
    assert status == 200 and body["document"] == PRODUCT_PIPELINE.read_text()
    assert body["version"] == 1 and body["created_at"]
    status, body = call(request("api-pipeline-versions"))
    assert status == 200 and [v["version"] for v in body["versions"]] == [1]
    status, body = call(request("api-delete-pipeline"))
    assert (status, body) == (204, None)
    status, body = call(request("api-delete-pipeline"))
    assert status == 404 and body["error"] == {
        "type": "PipelineNotFound",
        "message": "pipeline 'ML Training Pipeline' not found.",
    }


def test_an_invalid_pipeline_is_a_400_with_every_problem_and_the_clis_text(
    world: AwsWorld, capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch
):
    event = request("api-create-invalid-pipeline")
    status, body = call(event)
    assert status == 400
    error = body["error"]
    assert error["type"] == "PipelineInvalid"
    assert [p["path"] for p in error["problems"]] == ["jobs[1].depends_on[0]", "jobs[2].type"]
    assert error["problems"][0]["line"] == 52
    (tmp_path / "ml-pipeline.yaml").write_text(json.loads(event["body"])["document"])
    monkeypatch.chdir(tmp_path)
    expected = cli_error_lines(capsys, "pipeline", "validate", "--file", "ml-pipeline.yaml")
    assert error["message"].splitlines() == expected
    assert call(request("api-list-pipelines"))[1] == {"pipelines": []}


def test_a_pipeline_too_large_to_keep_is_a_400_that_says_so(world: AwsWorld):
    # A valid pipeline whose job carries 600 KB of incompressible text.
    noise = base64.b64encode(random.Random(3).randbytes(450 * 1024)).decode()
    document = (
        "version: '1.1'\nname: noisy\njobs:\n"
        f"  - {{id: a, type: lambda, parameters: {{function_name: f, payload: {{n: {noise}}}}}}}\n"
    )
    status, body = call(request("api-create-pipeline", body={"document": document}))
    assert status == 400, body
    assert body["error"]["type"] == "InputTooLarge"
    assert "at most 350 KB compressed: split the pipeline" in body["error"]["message"]
    assert call(request("api-list-pipelines"))[1] == {"pipelines": []}


# ---------------------------------------------------------------------- sessions


def test_a_session_starts_with_the_products_parameters(world: AwsWorld):
    session_id = start(world)
    status, body = call(request("api-session-status", session_id))
    assert status == 200
    session = body["session"]
    assert (session["status"], session["version"], session["total"]) == ("running", 1, 6)
    assert session["parameters"]["hyperparameters"] == {"max_depth": 10, "n_estimators": 100}
    assert session["parameters"]["evaluation_threshold"] == 0.85
    [event] = world.bus_events()
    assert event["detail-type"] == "Session Started"
    assert event["detail"] == {"session_id": session_id}
    status, body = call(request("api-list-sessions"))
    assert status == 200 and [s["id"] for s in body["sessions"]] == [session_id]


def test_a_bad_parameter_is_a_400_with_the_clis_message(
    world: AwsWorld, capsys: pytest.CaptureFixture[str]
):
    created(world)
    event = request("api-start-session-bad-parameter")
    status, body = call(event)
    assert status == 400
    text = json.loads(event["body"])["parameter_text"]
    [expected] = cli_error_lines(
        capsys,
        "pipeline",
        "plan",
        "--file",
        str(PRODUCT_PIPELINE),
        "--parameters",
        *(f"{name}={value}" for name, value in text.items()),
    )
    assert body == {"error": {"type": "ParameterInvalid", "message": expected}}
    assert expected.startswith("parameter 'evaluation_threshold': 1.5 is above the maximum")
    assert world.bus_events() == []


def test_an_unknown_session_is_a_404_with_the_clis_message(world: AwsWorld):
    status, body = call(request("api-session-unknown"))
    assert (status, body) == (
        404,
        {
            "error": {
                "type": "SessionNotFound",
                "message": "session '20991231-000000000000' not found.",
            }
        },
    )


def test_a_malformed_body_is_a_400(world: AwsWorld):
    status, body = call(request("api-start-session-malformed-body"))
    assert status == 400
    assert body["error"]["type"] == "RequestInvalid"
    assert "the body is not JSON" in body["error"]["message"]


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"parameter_text": PRODUCT_PARAMETER_TEXT}, "body.pipeline"),
        ({"pipeline": "p", "extra": 1}, "body.extra"),
        ({"pipeline": "p", "parameter_text": {"n": 5}}, "body.parameter_text.n"),
        ({"pipeline": ""}, "body.pipeline"),
    ],
)
def test_a_request_that_breaks_its_model_is_a_400_naming_the_field(
    world: AwsWorld, changes: dict[str, Any], where: str
):
    status, body = call(request("api-start-session", body=changes))
    assert status == 400
    assert body["error"]["type"] == "RequestInvalid"
    assert where in [p["path"] for p in body["error"]["problems"]]
    assert body["error"]["message"].startswith("invalid request: ")


def test_cancel_pause_resume_are_accepted_and_an_ended_session_is_a_409(world: AwsWorld):
    session_id = start(world)
    for name in ("api-pause-session", "api-resume-session", "api-cancel-session"):
        status, body = call(request(name, session_id))
        assert status == 202 and body["session"]["id"] == session_id
    events = world.bus_events()
    assert [e["detail-type"] for e in events] == [
        "Session Started",
        "Session Pause Requested",
        "Session Resume Requested",
        "Session Cancel Requested",
    ]
    assert events[-1]["detail"]["reason"] == "wrong training data"
    for event in events:
        world.engine.handle(event)
    assert world.engine.session(session_id).status.value == "cancelled"
    status, body = call(request("api-cancel-session", session_id))
    assert status == 409
    assert body["error"] == {
        "type": "Conflict",
        "message": f"session '{session_id}' has ended (cancelled).",
    }


def test_retry_of_a_failed_or_cancelled_session_is_accepted_and_of_a_running_one_a_409(
    world: AwsWorld,
):
    session_id = start(world)
    status, body = call(request("api-retry-session", session_id))
    assert status == 409
    assert body["error"]["message"] == (
        f"session '{session_id}' is running; only a failed or cancelled session can be retried."
    )
    world.engine.request(session_id, "cancel")
    for event in world.bus_events():
        world.engine.handle(event)
    status, body = call(request("api-retry-session", session_id))
    assert status == 202 and body["session"]["status"] == "cancelled"
    [retry] = world.bus_events()
    assert retry["detail-type"] == "Session Retry Requested"
    assert retry["detail"]["parameters"]["evaluation_threshold"] == 0.8
    bad = request("api-retry-session", session_id, body={"parameter_text": {"nope": "1"}})
    status, body = call(bad)
    assert status == 400 and body["error"]["type"] == "ParameterInvalid"


def test_runs_and_history_of_a_session(world: AwsWorld):
    session_id = start(world)
    for event in world.bus_events():
        world.engine.handle(event)
    status, body = call(request("api-list-runs", session_id))
    assert status == 200
    assert [r["key"] for r in body["runs"]] == ["prepare_data"] and body["next"] is None
    assert body["runs"][0]["status"] == "running" and body["runs"][0]["attempt"] == 1
    status, body = call(request("api-show-run", session_id))
    assert status == 200 and body["run"]["inputs"]["function_name"] == "data-preparation-function"
    missing = request("api-show-run", session_id)
    missing["rawPath"] = missing["rawPath"].replace("prepare_data", "train_model")
    status, body = call(missing)
    assert status == 404 and body["error"]["type"] == "RunNotFound"
    status, body = call(request("api-session-history", session_id))
    assert status == 200 and body == {"entries": [], "next": False}  # the projector writes it
    bad = request("api-list-runs", session_id)
    bad["rawQueryString"], bad["queryStringParameters"] = "status=lost", {"status": "lost"}
    status, body = call(bad)
    assert status == 400 and body["error"]["message"].startswith("status 'lost' is not one of")


# ---------------------------------------------------------------------- schedules


def test_schedules_are_created_listed_and_deleted(world: AwsWorld):
    created(world)
    status, body = call(request("api-create-schedule"))
    assert status == 201, body
    assert (body["name"], body["cron"], body["timezone"]) == (
        "nightly-churn",
        "cron(0 2 * * ? *)",
        "Europe/Paris",
    )
    assert call(request("api-create-schedule"))[0] == 409
    status, body = call(request("api-list-schedules"))
    assert status == 200 and [s["name"] for s in body["schedules"]] == ["nightly-churn"]
    assert body["schedules"][0]["parameter_text"] == PRODUCT_PARAMETER_TEXT
    assert call(request("api-delete-schedule")) == (204, None)
    status, body = call(request("api-delete-schedule"))
    assert status == 404 and body["error"]["message"] == "schedule 'nightly-churn' not found."


# ------------------------------------------------------------ nothing a user sends is a 5xx


def _hostile() -> list[tuple[str, dict[str, Any]]]:
    status = request("api-session-status")
    runs = request("api-list-runs")
    start_event = request("api-start-session")
    cases = []
    for path in ("/sessions/%00", "/sessions/..%2F..", "/sessions/%E2%9C%93", "/sessions/x%5B1%5D"):
        cases.append(("odd session ids", {**status, "rawPath": path}))
    for query in ("limit=0", "limit=100000", "limit=ten", "next=%5B%5D", "status=", "job=a%20b"):
        cases.append((query, {**runs, "rawQueryString": query}))
    for body in ("[]", "null", '"text"', "{}", "", "{" * 5000):
        cases.append((f"body {body[:8]!r}", {**start_event, "body": body}))
    encoded = base64.b64encode(b'{"pipeline": "nope"}').decode()
    cases.append(("base64 body", {**start_event, "body": encoded, "isBase64Encoded": True}))
    plain = {**start_event, "headers": {**start_event["headers"], "content-type": "text/plain"}}
    cases.append(("not JSON content", plain))
    cases.append(("no route", {**status, "rawPath": "/nothing/here"}))
    cases.append(("an item's key", {**status, "rawPath": "/sessions/x/runs/tune%5B2%5D"}))
    cases.append(("a method without a route", {**runs, "requestContext": _method(runs, "PUT")}))
    cases.append(("a huge pipeline name", {**status, "rawPath": "/pipelines/" + "x" * 5000}))
    cases.append(("a huge document", request("api-create-pipeline", body={"document": "x: " * 9})))
    return cases


def _method(event: dict[str, Any], method: str) -> dict[str, Any]:
    context = json.loads(json.dumps(event["requestContext"]))
    context["http"]["method"] = method
    return context


def test_nothing_a_user_sends_is_a_5xx(world: AwsWorld):
    answers = [(what, call(event)) for what, event in _hostile()]  # one stack for them all
    assert len(answers) == 23
    wrong = [(what, answer) for what, answer in answers if not 400 <= answer[0] < 500]
    assert not wrong
    assert all(set(body["error"]) >= {"type", "message"} for _, (_, body) in answers)


def _refuse_reads(world: AwsWorld, code: str) -> None:
    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": code, "Message": "no"}}, "GetItem")

    world.clients.dynamodb.meta.events.register_first("before-call.dynamodb.GetItem", refuse)


def test_aws_throttling_is_a_503_to_try_again(world: AwsWorld):
    _refuse_reads(world, "ProvisionedThroughputExceededException")
    reply = api.handler(request("api-session-status"), Context())
    assert reply["statusCode"] == 503 and reply["headers"]["Retry-After"] == "1"
    assert json.loads(reply["body"])["error"]["type"] == "Throttled"


def test_a_failure_that_is_not_the_requests_is_a_500_pointing_at_the_log(world: AwsWorld):
    _refuse_reads(world, "AccessDeniedException")
    status, body = call(request("api-session-status"))
    assert status == 500
    assert body["error"] == {
        "type": "InternalError",
        "message": "the request failed; see the API function's log (request 7c1f3b2a-request).",
    }


# ---------------------------------------------------------------------- the OpenAPI document


def test_the_committed_openapi_document_is_the_generated_one():
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == api.openapi(), "regenerate: python -m handlers.api --openapi"


def test_every_route_of_the_template_is_documented_and_answered():
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)
    events = template["Resources"]["ApiFunction"]["Properties"]["Events"]
    routes = {
        (e["Properties"]["Method"].lower(), re.sub(r"\{[^}]+\}", "{}", e["Properties"]["Path"]))
        for e in events.values()
    }
    documented = {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, operations in api.openapi()["paths"].items()
        for method in operations
    }
    assert routes == documented
    schemas = api.openapi()["components"]["schemas"]
    assert {"ErrorBody", "SessionRecord", "RunRecord", "PipelineCreate"} <= set(schemas)
    for operation in (op for ops in api.openapi()["paths"].values() for op in ops.values()):
        assert "422" not in operation["responses"]
        assert any(code.startswith("2") for code in operation["responses"])


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub...) read as plain values."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)


_CfnLoader.add_multi_constructor("!", _tag)


def test_sample_events_for_sessions_name_a_real_route():
    for path in sorted((ROOT / "events").glob("api-*.json")):
        event = json.loads(path.read_text())
        assert event["version"] == "2.0" and event["rawPath"].startswith("/"), path.name
        assert event["routeKey"].split()[0] == event["requestContext"]["http"]["method"]
