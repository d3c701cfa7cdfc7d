"""A ``secret: true`` parameter on the AWS backend, through the Lambda handlers on moto: the
job gets the value, and no surface Bunsui controls shows it.

A session of a pipeline whose job reads the secret three ways (its payload, a
longer template, its condition) is started through the API handler, driven by
the reducer handler until it ends, and its history projected by the history
handler from the table's stream, all in-process with the handlers' Powertools
loggers. One distinctive value is then searched for in each surface: the
handlers' logs and what they print (one test), the history and the bus (one
test), every API answer about the session (one test), and every item of the
table, where the value must exist only as KMS ciphertext (one test).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from handlers import api, history, reducer
from tests.integration.test_aws_handlers import logs, stream_records
from tests.integration.test_aws_handlers import world as handlers_world
from tests.integration.test_aws_service import AwsWorld, Context
from tests.integration.test_aws_service import world as aws_world

__all__ = ["aws_world", "handlers_world", "logs"]

SECRET = "tok-Vw3k-SECRET-5d0a"
"""The secret: distinctive, so that finding it anywhere is a leak and nothing else."""
PIPELINE = """
version: "1.1"
name: secret-flow
parameters:
  - {name: api_token, type: string, secret: true, required: true, validation: {pattern: "tok-.+"}}
  - {name: region, type: string, default: eu}
jobs:
  - id: call
    type: lambda
    condition: "${api_token != 'nope'}"
    parameters:
      function_name: caller
      payload: {token: "${api_token}", header: "Bearer ${api_token} for ${region}"}
  - id: after
    type: lambda
    depends_on: [call]
    parameters: {function_name: after, payload: {ok: "${jobs.call.output.ok}"}}
"""


@dataclass
class Flow:
    """A finished session of the secret pipeline and what each surface showed of it."""

    world: AwsWorld
    session_id: str
    answers: list[Any] = field(default_factory=list)
    bus: list[dict[str, Any]] = field(default_factory=list)


def request(method: str, path: str, body: Any = None, query: str = "") -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as IAM-authorized requests arrive."""
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"content-type": "application/json", "host": "api.example"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "1.2.3.4"},
            "requestId": "r",
            "routeKey": f"{method} {path}",
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = json.dumps(body)
    if query:
        event["queryStringParameters"] = dict(part.split("=", 1) for part in query.split("&"))
    return event


def call(flow: Flow, method: str, path: str, body: Any = None, query: str = "") -> Any:
    """One API request; its status and JSON answer are kept for the search."""
    reply = api.handler(request(method, path, body, query), Context())
    answer = json.loads(reply["body"]) if reply.get("body") else None
    flow.answers.append((method, path, reply["statusCode"], answer))
    return reply["statusCode"], answer


def drive(flow: Flow) -> None:
    """Hand what is on the bus to the reducer and answer every invocation, until quiet."""
    answered = 0
    for _ in range(20):
        events = flow.world.bus_events()
        flow.bus += events
        for event in events:
            reducer.handler(event, Context())
        while answered < len(flow.world.invokes):
            payload = json.loads(flow.world.invokes[answered]["Payload"])
            answered += 1
            reducer.handler(flow.world.lambda_result(payload, {"ok": True}), Context())
        if not events and answered == len(flow.world.invokes):
            return


@pytest.fixture
def flow(handlers_world: AwsWorld, logs: io.StringIO, caplog: pytest.LogCaptureFixture):
    """The session from the API to its end, its history projected, every log kept."""
    caplog.set_level(logging.DEBUG, logger="engine")
    levels = {module: module.logger.log_level for module in (api, reducer, history)}
    for module in levels:
        module.logger.setLevel(logging.DEBUG)
    try:
        yield from _run(handlers_world)
    finally:
        for module, level in levels.items():
            module.logger.setLevel(level)


def _run(world: AwsWorld) -> Iterator[Flow]:
    flow = Flow(world, "")
    status, _ = call(flow, "POST", "/pipelines", {"document": PIPELINE})
    assert status == 201
    status, answer = call(
        flow, "POST", "/sessions", {"pipeline": "secret-flow", "parameter_text": {"api_token": "x"}}
    )
    assert status == 400 and "******" in answer["error"]["message"]  # refused, not shown
    status, answer = call(
        flow,
        "POST",
        "/sessions",
        {"pipeline": "secret-flow", "parameter_text": {"api_token": SECRET}},
    )
    assert status == 201, answer
    flow.session_id = answer["session"]["id"]
    drive(flow)
    assert world.engine.session(flow.session_id).status.value == "succeeded"
    payload = world.invoked()[0]
    assert (payload["token"], payload["header"]) == (SECRET, f"Bearer {SECRET} for eu")
    assert history.handler({"Records": stream_records(world)}, Context()) == {
        "batchItemFailures": []
    }
    yield flow


def test_the_handlers_logs_never_hold_the_secret(
    flow: Flow,
    logs: io.StringIO,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    written = logs.getvalue()
    lines = [json.loads(line) for line in written.splitlines() if line.startswith("{")]
    assert any(line.get("session_id") == flow.session_id for line in lines)  # logs were kept
    assert SECRET not in written
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record


def test_the_history_and_the_bus_never_hold_the_secret(flow: Flow):
    entries, _ = flow.world.engine.history(flow.session_id, 0)
    kinds = [entry.kind for _, entry in entries]
    assert kinds[0] == "session_started" and kinds[-1] == "session_succeeded"
    assert SECRET not in repr(entries)
    status, answer = call(flow, "GET", f"/sessions/{flow.session_id}/history")
    assert status == 200 and answer["entries"]
    assert SECRET not in json.dumps(answer)
    assert flow.bus and SECRET not in json.dumps(flow.bus)


def test_the_apis_answers_about_the_session_never_hold_the_secret(flow: Flow):
    session = flow.session_id
    status, answer = call(flow, "GET", f"/sessions/{session}")
    assert status == 200 and answer["session"]["parameters"]["api_token"] == "******"
    call(flow, "GET", "/sessions")
    status, answer = call(flow, "GET", f"/sessions/{session}/runs")
    inputs = {run["key"]: run["inputs"] for run in answer["runs"]}
    assert inputs["call"]["payload"]["token"] == "${api_token}"
    assert inputs["call"]["payload"]["header"] == "Bearer ${api_token} for eu"
    call(flow, "GET", f"/sessions/{session}/runs/call")
    status, answer = call(flow, "POST", f"/sessions/{session}/retry", {})
    assert status in (202, 409), answer
    status, answer = call(
        flow,
        "POST",
        "/schedules",
        {
            "name": "nightly",
            "pipeline": "secret-flow",
            "cron": "0 3 * * ? *",
            "parameter_text": {"api_token": SECRET},
        },
    )
    assert status == 201, answer
    call(flow, "GET", "/schedules")
    assert len(flow.answers) >= 10
    for method, path, status, answer in flow.answers:
        assert SECRET not in json.dumps(answer), (method, path, status)


def test_the_table_holds_the_secret_only_as_kms_ciphertext(flow: Flow):
    world = flow.world
    items = []
    scan: dict[str, Any] = {"TableName": world.table}
    while True:
        page = world.clients.dynamodb.scan(**scan)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            break
        scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert len(items) > 5
    for item in items:
        assert SECRET.encode() not in _bytes(item), (item["pk"], item["sk"])
    (kept,) = [i for i in items if i["sk"]["S"] == "SECRETS"]
    assert kept["pk"]["S"] == f"SESSION#{flow.session_id}"
    plain = world.clients.kms.decrypt(
        CiphertextBlob=kept["ciphertext"]["B"],
        EncryptionContext={"session_id": flow.session_id},
    )["Plaintext"]
    assert json.loads(plain) == {"api_token": SECRET}


def _bytes(value: Any) -> bytes:
    """Every string and binary of an item, as bytes (binaries also base64-decoded when
    they are base64 text), to search for the value in any form the table keeps."""
    if isinstance(value, dict):
        return b"\0".join(_bytes(v) for v in value.values())
    if isinstance(value, list):
        return b"\0".join(_bytes(v) for v in value)
    if isinstance(value, bytes):
        try:
            return value + b"\0" + base64.b64decode(value, validate=True)
        except ValueError:
            return value
    return str(value).encode()
