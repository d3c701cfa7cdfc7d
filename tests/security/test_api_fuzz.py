"""The HTTP API fuzzed from its own OpenAPI document (docs/openapi.json) with schemathesis.

Each generated request, valid or deliberately not, goes through the stand-in
for API Gateway that the AWS flow uses (tests/e2e/aws/gateway.py: an HTTP API
with IAM auth, payload 2.0) to the real handler, ``handlers.api.handler``, on a
moto stack; a small WSGI adapter lets schemathesis call it in-process. Every
answer must conform to the document (status, content type, body schema), none
may be a 5xx, and every 4xx must be the documented error body with a readable
message. Half of the requests name a pipeline, session, run or schedule that
exists, so the routes get past their 404s.

The requests tried are the examples of each operation (``BUNSUI_FUZZ_EXAMPLES``
raises them for a long run; ``--hypothesis-show-statistics`` counts them). The
last section keeps, as plain tests, the failures the fuzzing found.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from engine.aws.schedules import Schedule
from handlers import api
from tests.conftest import PRODUCT_PIPELINE, ROOT
from tests.e2e.aws.gateway import ApiGateway
from tests.integration.test_aws_service import PIPELINE, PRODUCT_PARAMETER_TEXT, AwsWorld
from tests.security.fuzzing import assert_line_clear, fuzz

SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
ROUTES = [f"{op.method.upper()} {op.path}" for op in OPERATIONS]
REQUESTS = {
    op.label: st.one_of(
        op.as_strategy(generation_mode=GenerationMode.POSITIVE),
        op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    for op in OPERATIONS
}
"""Each operation's requests: valid ones, and ones that break the document on purpose."""
SCHEDULE = "nightly"
SIGNATURE = (
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260115/us-east-1/execute-api/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)
ERROR_TYPES = {
    "RequestInvalid",
    "PipelineInvalid",
    "ParameterInvalid",
    "PipelineNotFound",
    "SessionNotFound",
    "RunNotFound",
    "ScheduleNotFound",
    "ScheduleInvalid",
    "Conflict",
    "NotFound",
    "InputTooLarge",
}
"""The ``error.type`` of every 4xx a request can cause (the classes of the refusals)."""

ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_METRICS_NAMESPACE": "BunsuiTest",
    "POWERTOOLS_SERVICE_NAME": "bunsui",
}


class Stack:
    """The moto stack behind the API, with a pipeline, a session and a schedule to name."""

    def __init__(self, world: AwsWorld) -> None:
        self.world = world
        self.session_id = ""
        self.dirty = True

    def seed(self) -> None:
        """Make sure what requests may name exists again, after a DELETE removed some."""
        if not self.dirty:
            return
        self.dirty = False
        engine = self.world.engine
        if not engine.pipelines():
            engine.create_pipeline(PRODUCT_PIPELINE.read_text())
        if not self.session_id:
            self.session_id = engine.start_session(PIPELINE, None, PRODUCT_PARAMETER_TEXT).id
        if not engine.list_schedules():
            engine.create_schedule(
                Schedule(SCHEDULE, PIPELINE, "0 3 * * ? *", parameter_text=PRODUCT_PARAMETER_TEXT)
            )

    def name_real_ones(self, case: schemathesis.Case) -> None:
        """Point the case's path parameters, and the pipeline its body names, at what exists."""
        name = SCHEDULE if case.operation.path.startswith("/schedules") else PIPELINE
        known = {"name": name, "session_id": self.session_id, "key": "prepare_data"}
        for parameter in case.path_parameters or {}:
            if parameter in known:
                case.path_parameters[parameter] = known[parameter]
        if isinstance(case.body, dict) and "pipeline" in case.body:
            case.body["pipeline"] = PIPELINE


class GatewayApp:
    """A WSGI application in front of :class:`ApiGateway`: an HTTP request as API Gateway
    hands it to the function (payload 2.0), signed the way IAM auth requires."""

    def __init__(self, gateway: ApiGateway, stack: Stack) -> None:
        self.gateway = gateway
        self.stack = stack

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # The path as the client sent it, still percent-encoded (werkzeug keeps it).
        raw = environ.get("RAW_URI") or quote(environ.get("PATH_INFO", "/").encode("latin-1"))
        path = raw.split("?", 1)[0]
        query = environ.get("QUERY_STRING", "")
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        headers.update({"authorization": SIGNATURE, "x-amz-date": "20260115T103058Z"})
        headers.setdefault("host", "bunsuiapi.execute-api.us-east-1.amazonaws.com")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        method = environ["REQUEST_METHOD"]
        status, out_headers, out_body = self.gateway.answer(
            method, f"{path}?{query}" if query else path, headers, body
        )
        self.stack.dirty |= method == "DELETE" and status == 204
        start_response(f"{status} {'OK' if status < 400 else 'Error'}", list(out_headers.items()))
        return [out_body]

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any] | None]:
        """One request straight to the gateway: the status and the JSON body, if any."""
        headers = {
            "authorization": SIGNATURE,
            "x-amz-date": "20260115T103058Z",
            "host": "bunsuiapi.execute-api.us-east-1.amazonaws.com",
            "content-type": content_type,
        }
        status, _, reply = self.gateway.answer(method, path, headers, body)
        return status, json.loads(reply) if reply else None


@pytest.fixture(scope="module")
def app() -> Iterator[GatewayApp]:
    """The API on one moto stack for the whole module: a stack per example would cost
    more than the requests themselves."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        with mock_aws():
            world = AwsWorld(patch)
            patch.setattr(api, "engine", lambda: world.engine)
            stack = Stack(world)
            stack.seed()
            with ApiGateway(api.handler, routes=ROUTES) as gateway:
                yield GatewayApp(gateway, stack)


def assert_documented_error(body: Any) -> None:
    """A 4xx is ``{"error": {"type", "message"}}``: a refusal's class and the CLI's text
    for it, naming no Python internals; an invalid pipeline lists its problems."""
    error = body["error"]
    assert error["type"] in ERROR_TYPES, error
    message = error["message"]
    assert isinstance(message, str) and message.strip(), error
    assert "Traceback" not in message and " object at 0x" not in message, message
    if error["type"] == "PipelineInvalid":
        assert len(message.split("\n")) == len(error["problems"]) >= 1, error


def assert_one_clear_line(body: Any) -> None:
    """The message is one plain line whatever the request held: a client prints it as is,
    and a line break, an escape sequence or a bidirectional control from the request must
    not reach a terminal or a log line through it."""
    assert_line_clear(body["error"]["message"])


# ---------------------------------------------------------------------- fuzzing


@pytest.mark.parametrize("operation", OPERATIONS, ids=ROUTES)
@fuzz(12)
@given(data=st.data())
def test_every_generated_request_gets_a_documented_answer(
    operation: Any, app: GatewayApp, data: st.DataObject
) -> None:
    case = data.draw(REQUESTS[operation.label], label="request")
    app.stack.seed()
    if data.draw(st.booleans(), label="name real ones"):
        app.stack.name_real_ones(case)
    response = case.call(app=app)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert_documented_error(response.json())
    # The document cannot say what a valid pipeline or parameter is: a request that fits
    # the schema may still be refused (400), so "valid data is accepted" is not a check
    # here. Every other check is, status codes and bodies included.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


# ---------------------------------------------------------------------- what the fuzzing found


def test_a_body_that_is_not_utf8_is_refused_with_a_400(app: GatewayApp):
    # API Gateway hands such a body to the function base64-encoded.
    status, body = app.request("POST", "/sessions", b"\x80")
    assert status == 400, body
    assert body["error"]["type"] == "RequestInvalid"


def test_an_empty_pipeline_filter_is_answered_without_a_500(app: GatewayApp):
    status, body = app.request("GET", "/sessions?pipeline=")
    assert status in (200, 400), body
    if status == 400:
        assert_documented_error(body)


@pytest.mark.parametrize(
    "path", ["/sessions/a%0Ab", "/pipelines/x%1B%5B31m", "/sessions/%0A/history"]
)
def test_a_path_the_routes_refuse_is_named_on_one_clear_line(app: GatewayApp, path: str):
    status, body = app.request("GET", path)
    assert status == 404
    assert_documented_error(body)
    assert_one_clear_line(body)


def test_an_unknown_body_field_is_named_on_one_clear_line(app: GatewayApp):
    session = app.stack.session_id
    status, body = app.request("POST", f"/sessions/{session}/pause", b'{"a\\nb\\u001b": 1}')
    assert status == 400
    assert_documented_error(body)
    assert_one_clear_line(body)


def test_an_unknown_status_is_named_on_one_clear_line(app: GatewayApp):
    status, body = app.request("GET", "/sessions?status=%1B%5B2J")
    assert status == 400
    assert_documented_error(body)
    assert_one_clear_line(body)


def test_a_list_body_is_not_taken_for_its_first_item(app: GatewayApp):
    session = app.stack.session_id
    status, body = app.request(
        "POST", f"/sessions/{session}/cancel", b'[{"reason": "r"}, {"unknown": 1}]'
    )
    assert status == 400, body
    assert body["error"]["type"] == "RequestInvalid"


@pytest.mark.parametrize("path", ["/pipelines/{name}", "/schedules/{name}"])
def test_a_204_is_documented_without_a_body(path: str):
    # A 204 has no body, so no content type: documented as JSON, every answer breaks it.
    answer = SCHEMA.raw_schema["paths"][path]["delete"]["responses"]["204"]
    assert "content" not in answer, answer
