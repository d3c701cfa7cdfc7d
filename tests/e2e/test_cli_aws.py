"""The CLI against AWS: ``bunsui config``, every command through the signed HTTP API, and
each AWS error as one line with exit code 2.

The API here is :class:`FakeApi`: the HTTP API's contract (routes, the
``engine.records`` JSON, the error shape) answered by a local backend in this
process, whose driver threads play the stack's part (they run the sessions
the API starts). It sits behind :class:`ApiGateway`, which refuses unsigned
requests and checks each SigV4 signature, as an HTTP API with IAM auth does.
The CLI runs in-process (``main()``); CloudFormation is moto's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from moto import mock_aws

from bunsui import aws_logs, driving, logs, remote, sessions
from bunsui.aws_access import AwsAccess, AwsError, StackCache
from bunsui.aws_logs import CloudWatchLogBook
from bunsui.cli import main
from bunsui.config import AwsSettings
from bunsui.schedules import default_name
from engine.errors import BunsuiError, Conflict, PipelineInvalid, PipelineNotFound, SessionNotFound
from engine.loader import load_pipeline
from engine.local.backend import LocalBackend
from engine.local.timers import now_iso
from engine.parameters import resolve_parameters
from engine.records import entry_to_dict, run_to_dict, session_to_dict
from engine.state import JobRun, JobStatus, Session, SessionStatus
from tests.e2e.aws.gateway import ApiGateway
from tests.e2e.test_cli_sessions import (
    JOB_KEYS,
    LOG_KEYS,
    SESSION_KEYS,
    python_job,
    two_step,
    waiting_job,
    write_pipeline,
)

pytestmark = pytest.mark.e2e
SECRET = "bunsui-test-secret"
HANG_GUARD = 20.0


# ---------------------------------------------------------------------- the API


class FakeApi:
    """The HTTP API's contract, answered by a local backend (a stand-in for the stack).

    Sessions it starts are driven by threads of this process, as the stack's
    reducer would drive them. ``page_size`` makes run listings come in pages.
    """

    def __init__(self, home: Path, page_size: int = 2) -> None:
        self.backend = LocalBackend(home)
        self.page_size = page_size
        self.threads: list[threading.Thread] = []
        self.schedules: dict[str, dict[str, Any]] = {}
        self.before: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if self.before is not None:
            early = self.before(event)
            if early is not None:
                return early
        method = event["requestContext"]["http"]["method"]
        parts = event["rawPath"].strip("/").split("/")
        query = event.get("queryStringParameters") or {}
        body = json.loads(event["body"]) if event.get("body") else {}
        try:
            status, data = self.route(method, parts, query, body)
        except BunsuiError as exc:
            status = (
                404
                if isinstance(exc, SessionNotFound | PipelineNotFound)
                else 409
                if isinstance(exc, Conflict)
                else 400
            )
            error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
            if isinstance(exc, PipelineInvalid):
                error["problems"] = [p.to_dict() for p in exc.problems]
            data = {"error": error}
        return {
            "statusCode": status,
            "headers": {"content-type": "application/json"},
            "body": "" if data is None else json.dumps(data),
        }

    def route(
        self, method: str, parts: list[str], query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        store = self.backend.store
        match method, parts:
            case "POST", ["pipelines"]:
                return self.put_pipeline(body)
            case "GET", ["pipelines"]:
                rows = store.list_pipelines()
                return 200, {
                    "pipelines": [{"name": n, "version": v, "created_at": at} for n, v, at in rows]
                }
            case "GET", ["pipelines", name]:
                version = int(query["version"]) if "version" in query else None
                number, document = store.get_pipeline_version(name, version)
                return 200, {"name": name, "version": number, "document": document}
            case "GET", ["pipelines", name, "versions"]:
                latest = store.get_pipeline_version(name)[0]
                versions = [{"version": v, "created_at": None} for v in range(1, latest + 1)]
                return 200, {"name": name, "versions": versions}
            case "DELETE", ["pipelines", name]:
                store.delete_pipeline(name)
                return 204, None
            case "POST", ["sessions"]:
                session = self.backend.create_session(
                    body["pipeline"], body.get("parameters"), body.get("parameter_text")
                )
                self.drive(session.id)
                return 201, {"session": session_to_dict(session)}
            case "GET", ["sessions"]:
                statuses = {SessionStatus(s) for s in query.get("status", "").split(",") if s}
                found = store.sessions(
                    query.get("pipeline"), statuses or None, int(query.get("limit", 100))
                )
                return 200, {"sessions": [session_to_dict(s) for s in found]}
            case "GET", ["sessions", session_id]:
                return 200, {"session": session_to_dict(store.get_session(session_id))}
            case "GET", ["sessions", session_id, "runs"]:
                return 200, self.runs(session_id, query)
            case "GET", ["sessions", session_id, "runs", key]:
                store.get_session(session_id)
                run = store.get_run(session_id, key)
                if run is None:
                    return 404, {"error": {"type": "RunNotFound", "message": "no such run."}}
                return 200, {"run": run_to_dict(run)}
            case "GET", ["sessions", session_id, "history"]:
                store.get_session(session_id)
                found = store.history(session_id, int(query.get("after", 0)))
                return 200, {"entries": [[seq, entry_to_dict(e)] for seq, e in found]}
            case "POST", ["sessions", session_id, ("cancel" | "pause" | "resume") as kind]:
                how = self.backend.request(session_id, kind, body.get("reason", ""))
                if how == "drive":
                    self.drive(session_id, resume=True)
                return 202, {"session": session_to_dict(store.get_session(session_id))}
            case "POST", ["sessions", session_id, "retry"]:
                return self.retry(session_id, body)
            case "POST", ["schedules"]:
                store.get_pipeline_version(body["pipeline"])
                if body["name"] in self.schedules:
                    raise Conflict(f"schedule '{body['name']}' already exists.")
                self.schedules[body["name"]] = {**body, "state": "ENABLED", "created_at": now_iso()}
                return 201, self.schedules[body["name"]]
            case "GET", ["schedules"]:
                return 200, {"schedules": list(self.schedules.values())}
            case "DELETE", ["schedules", name]:
                if self.schedules.pop(name, None) is None:
                    return 404, {"error": {"type": "ScheduleNotFound", "message": f"no {name}."}}
                return 204, None
        return 404, {"message": "Not Found"}

    def put_pipeline(self, body: dict[str, Any]) -> tuple[int, Any]:
        text = body["document"]
        pipeline = load_pipeline(text, body.get("source"))
        store = self.backend.store
        try:
            before = store.get_pipeline_version(pipeline.name)[0]
        except PipelineNotFound:
            before = None
        checksum = hashlib.sha256(text.encode()).hexdigest()
        version = store.put_pipeline_version(pipeline.name, text, checksum, now_iso())
        return 201, {
            "name": pipeline.name,
            "version": version,
            "jobs": len(pipeline.jobs),
            "created": version != before,
        }

    def runs(self, session_id: str, query: dict[str, str]) -> dict[str, Any]:
        store = self.backend.store
        store.get_session(session_id)
        statuses = {JobStatus(s) for s in query.get("status", "").split(",") if s}
        found = store.runs(session_id, statuses or None, query.get("job"))
        start = int(query.get("next", 0))
        size = min(self.page_size, int(query.get("limit", 100)))
        page = found[start : start + size]
        more = start + size < len(found)
        return {"runs": [run_to_dict(r) for r in page], "next": str(start + size) if more else None}

    def retry(self, session_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        session = self.backend.store.get_session(session_id)
        values = None
        if body.get("parameters") or body.get("parameter_text"):
            pipeline = self.backend.pipeline(session.pipeline, session.version)[0]
            given = {**session.parameters, **(body.get("parameters") or {})}
            values = resolve_parameters(pipeline.parameters, given, body.get("parameter_text"))
        self.drive(session_id, retry=True, parameters=values)
        return 202, {"session": session_to_dict(session)}

    def drive(self, session_id: str, **options: Any) -> None:
        """Run the session as the stack would: elsewhere, after the API has answered."""

        def run() -> None:
            time.sleep(0.05)
            with contextlib.suppress(BunsuiError):
                self.backend.drive(session_id, **options)

        thread = threading.Thread(target=run, name=f"stack-{session_id}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def close(self) -> None:
        for session in self.backend.store.sessions(limit=1000):
            if not session.status.terminal:
                with contextlib.suppress(BunsuiError):
                    self.backend.request(session.id, "cancel", "test over")
        for thread in self.threads:
            thread.join(HANG_GUARD)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of the test's own for the config, the AWS files and the local state."""
    return prepare_home(tmp_path, monkeypatch)


def prepare_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The config, empty AWS files and the local state in tmp_path; short waits."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "BUNSUI_BACKEND",
        "BUNSUI_AWS_STACK_NAME",
        "BUNSUI_AWS_REGION",
        "BUNSUI_AWS_PROFILE",
        "BUNSUI_AWS_ENDPOINT",
        "XDG_CONFIG_HOME",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "aws").mkdir()
    (tmp_path / "aws" / "credentials").write_text("")
    (tmp_path / "aws" / "config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws" / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws" / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("BUNSUI_CONFIG", str(tmp_path / "config" / "config.json"))
    monkeypatch.setenv("BUNSUI_HOME", str(tmp_path / "local"))
    monkeypatch.chdir(tmp_path)
    for module, name in (
        (driving, "REMOTE_POLL_SECONDS"),
        (sessions, "REMOTE_POLL_SECONDS"),
        (logs, "REMOTE_FOLLOW_SECONDS"),
        (aws_logs, "FOLLOW_SECONDS"),
    ):
        monkeypatch.setattr(module, name, 0.05)
    monkeypatch.setattr(remote, "BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr(sessions, "REQUEST_WAIT_SECONDS", 10.0)
    return tmp_path


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials from the environment alone, and no AWS endpoint but the real one's."""
    for name in ("AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDBUNSUITEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return home


@pytest.fixture
def api(env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeApi, ApiGateway]]:
    """The fake stack's API behind a gateway; the CLI configured for it (aws.endpoint)."""
    fake = FakeApi(env / "stack")
    with ApiGateway(fake, secret_key=SECRET) as gateway:
        monkeypatch.setenv("BUNSUI_BACKEND", "aws")
        monkeypatch.setenv("BUNSUI_AWS_ENDPOINT", gateway.url)
        try:
            yield fake, gateway
        finally:
            fake.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def local(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    """The same command on the local backend (for comparing outputs)."""
    with monkeypatch.context() as patch:
        patch.setenv("BUNSUI_BACKEND", "local")
        return cli(capsys, *args)


def one_error(err: str) -> str:
    """The one line of an error, without its prefix (and proof that there is one line)."""
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err.removeprefix("error: ").rstrip("\n")


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def stable(session: dict[str, Any]) -> dict[str, Any]:
    """A session's JSON without what differs from run to run (ids, times, durations)."""
    drop = {"session_id", "created_at", "ended_at", "duration", "started_at"}
    kept = {k: v for k, v in session.items() if k not in drop and k != "jobs"}
    kept["jobs"] = [{k: v for k, v in job.items() if k not in drop} for job in session["jobs"]]
    return kept


# ---------------------------------------------------------------------- config


def test_config_set_get_show_unset_and_env_overrides(env, capsys, monkeypatch):
    code, out, err = cli(capsys, "config", "get", "backend")
    assert (code, out) == (0, "local\n"), err
    assert cli(capsys, "config", "get", "aws.stack_name")[:2] == (1, "")

    for key, value in (
        ("backend", "aws"),
        ("aws.stack_name", "bunsui-prod"),
        ("aws.region", "eu-west-1"),
        ("aws.profile", "ops"),
        ("aws.endpoint", "https://abc123.execute-api.eu-west-1.amazonaws.com"),
    ):
        code, out, err = cli(capsys, "config", "set", key, value)
        assert code == 0 and out == f"{key} = {value}\n", err
        assert cli(capsys, "config", "get", key)[1] == f"{value}\n"
    stored = json.loads((env / "config" / "config.json").read_text())
    assert stored == {
        "backend": "aws",
        "aws": {
            "stack_name": "bunsui-prod",
            "region": "eu-west-1",
            "profile": "ops",
            "endpoint": "https://abc123.execute-api.eu-west-1.amazonaws.com",
        },
    }

    monkeypatch.setenv("BUNSUI_AWS_REGION", "us-east-2")
    code, out, _ = cli(capsys, "config", "show", "--format", "json")
    shown = json.loads(out)
    assert shown["file"] == str(env / "config" / "config.json")
    assert shown["settings"]["aws.region"] == {
        "value": "us-east-2",
        "source": "env BUNSUI_AWS_REGION",
    }
    assert shown["settings"]["aws.stack_name"] == {"value": "bunsui-prod", "source": "file"}
    code, out, _ = cli(capsys, "config", "show")
    assert code == 0 and "aws.profile" in out and "ops" in out and "env BUNSUI_AWS_REGION" in out

    code, out, _ = cli(capsys, "config", "unset", "aws.endpoint")
    assert code == 0 and "aws.endpoint unset" in out
    assert cli(capsys, "config", "get", "aws.endpoint")[0] == 1
    code, out, _ = cli(capsys, "config", "unset", "backend")
    assert out == "backend unset (default: local).\n"
    assert cli(capsys, "config", "get", "backend")[1] == "local\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("set", "backend", "cloud"),
            "backend 'cloud': backend is one of local, aws.",
        ),
        (
            ("set", "aws.region", "Europe"),
            "aws.region 'Europe': aws.region is an AWS region such as us-east-1.",
        ),
        (
            ("set", "aws.endpoint", "ftp://x"),
            "aws.endpoint 'ftp://x': aws.endpoint is the API's URL, such as "
            "https://abc123.execute-api.us-east-1.amazonaws.com.",
        ),
        (
            ("get", "aws.table"),
            "unknown key 'aws.table'; the keys are: backend, aws.stack_name, aws.region, "
            "aws.profile, aws.endpoint.",
        ),
    ],
)
def test_config_refuses_unknown_keys_and_bad_values(env, capsys, args, message):
    code, out, err = cli(capsys, "config", *args)
    assert (code, out) == (2, "")
    assert one_error(err) == message


def test_a_bad_value_in_the_environment_or_a_broken_file_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setenv("BUNSUI_BACKEND", "remote")
    code, _, err = cli(capsys, "pipeline", "list")
    assert code == 2
    assert one_error(err) == (
        "backend 'remote' (env BUNSUI_BACKEND): backend is one of local, aws."
    )
    monkeypatch.delenv("BUNSUI_BACKEND")
    (env / "config").mkdir()
    (env / "config" / "config.json").write_text("{not json")
    code, _, err = cli(capsys, "session", "list")
    assert code == 2 and "config.json cannot be read" in one_error(err)


def test_the_aws_backend_needs_a_stack(env, capsys, monkeypatch):
    monkeypatch.setenv("BUNSUI_BACKEND", "aws")
    code, _, err = cli(capsys, "pipeline", "list")
    assert code == 2
    assert one_error(err) == (
        "the aws backend needs a stack: run bunsui config set aws.stack_name NAME "
        "(or aws.endpoint URL)."
    )


# ---------------------------------------------------------------------- the gateway


def test_the_gateway_refuses_unsigned_and_badly_signed_requests(env):
    fake = FakeApi(env / "stack")
    with ApiGateway(fake, secret_key=SECRET) as gateway:
        request = urllib.request.Request(gateway.url + "/pipelines")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403
        assert json.loads(refused.value.read()) == {"message": "Forbidden"}
        assert [c.status for c in gateway.calls] == [403]

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signed = AWSRequest(method="GET", url=gateway.url + "/pipelines")
        SigV4Auth(Credentials("AKID", "wrong-secret"), "execute-api", "eu-west-1").add_auth(signed)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(gateway.url + "/pipelines", headers=dict(signed.headers))
            )
        assert refused.value.code == 403
        assert "signature" in json.loads(refused.value.read())["message"]

        signed = AWSRequest(method="GET", url=gateway.url + "/pipelines")
        SigV4Auth(Credentials("AKID", SECRET), "execute-api", "eu-west-1").add_auth(signed)
        request = urllib.request.Request(gateway.url + "/pipelines", headers=dict(signed.headers))
        with urllib.request.urlopen(request) as answer:
            assert json.loads(answer.read()) == {"pipelines": []}


def test_the_gateway_builds_payload_2_events(env):
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        return {"statusCode": 202, "body": json.dumps({"ok": context.function_name})}

    with ApiGateway(handler, routes=["POST /sessions/{id}/cancel"]) as gateway:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = gateway.url + "/sessions/s%201/cancel?b=2&a=1"
        body = b'{"reason": "r"}'
        signed = AWSRequest(
            method="POST", url=url, data=body, headers={"content-type": "application/json"}
        )
        SigV4Auth(Credentials("AKID", "x"), "execute-api", "eu-west-1").add_auth(signed)
        request = urllib.request.Request(url, data=body, headers=dict(signed.headers))
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 202 and json.loads(answer.read()) == {"ok": "bunsui-api"}
    [event] = seen
    assert event["version"] == "2.0"
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "POST /sessions/{id}/cancel"
    assert event["rawPath"] == "/sessions/s 1/cancel"
    assert event["pathParameters"] == {"id": "s 1"}
    assert event["rawQueryString"] == "b=2&a=1"
    assert event["queryStringParameters"] == {"a": "1", "b": "2"}
    assert event["requestContext"]["http"]["method"] == "POST"
    assert (event["body"], event["isBase64Encoded"]) == ('{"reason": "r"}', False)
    assert event["headers"]["content-type"] == "application/json"


def test_requests_are_signed_for_the_region_the_api_url_names(env):
    settings = AwsSettings(endpoint="https://abc123.execute-api.ap-south-1.amazonaws.com")
    client = remote.ApiClient(AwsAccess(settings), settings, StackCache(env))
    assert client.signing_region(settings.endpoint + "/sessions") == "ap-south-1"
    assert client.signing_region("https://api.example.com/sessions") == "eu-west-1"


# ---------------------------------------------------------------------- pipelines


def test_pipeline_commands_answer_as_locally(api, capsys, monkeypatch, env):
    fake, gateway = api
    file = two_step(env)
    for command in (
        ("pipeline", "create", "--file", str(file), "--format", "json"),
        ("pipeline", "update", "--file", str(file), "--format", "json"),
        ("pipeline", "list", "--format", "json"),
        ("pipeline", "show", "Two Step", "--format", "json"),
    ):
        remote_answer = cli(capsys, *command)
        local_answer = local(capsys, monkeypatch, *command)
        assert remote_answer[0] == local_answer[0] == 0, remote_answer[2]
        mine, theirs = json.loads(remote_answer[1]), json.loads(local_answer[1])
        if command[1] == "list":
            assert [{**p, "created_at": None} for p in mine] == [
                {**p, "created_at": None} for p in theirs
            ]
        else:
            assert mine == theirs
    assert fake.backend.store.list_pipelines()[0][:2] == ("Two Step", 1)

    code, _, err = cli(capsys, "pipeline", "create", "--file", str(file))
    assert code == 2
    assert one_error(err) == (
        f"pipeline 'Two Step' already exists; store a new version with: "
        f"bunsui pipeline update --file {file}"
    )
    two_step(env, description="changed")
    code, out, _ = cli(capsys, "pipeline", "update", "--file", str(file))
    assert (code, out) == (0, "✓ pipeline 'Two Step' updated: new version 2.\n")
    code, out, _ = cli(capsys, "pipeline", "show", "Two Step", "--version", "1", "--format", "json")
    assert (json.loads(out)["version"], json.loads(out)["latest_version"]) == (1, 2)
    code, out, _ = cli(capsys, "pipeline", "show", "Two Step")
    assert "version 2" in out and "changed" in out
    code, out, _ = cli(capsys, "pipeline", "list")
    assert "Two Step" in out

    code, _, err = cli(capsys, "pipeline", "show", "Two Stp")
    assert code == 2
    assert one_error(err) == (
        "pipeline 'Two Stp' not found. Did you mean 'Two Step'? (bunsui pipeline list)"
    )
    code, _, err = cli(capsys, "pipeline", "show", "Two Step", "--version", "7")
    assert one_error(err) == "pipeline 'Two Step' has no version 7."

    code, out, _ = cli(capsys, "pipeline", "delete", "Two Step", "--format", "json")
    assert json.loads(out) == {"pipeline": "Two Step", "deleted": True, "latest_version": 2}
    assert json.loads(cli(capsys, "pipeline", "list", "--format", "json")[1]) == []
    # every request was signed: the gateway refused none
    assert gateway.calls and all(call.status != 403 for call in gateway.calls)


def test_an_invalid_pipeline_is_reported_before_anything_is_sent(api, capsys, env):
    _, gateway = api
    broken = env / "broken.yaml"
    broken.write_text("version: '1.0'\nname: x\njobs: []\n")
    code, _, err = cli(capsys, "pipeline", "create", "--file", str(broken))
    assert code == 2 and err.startswith(f"error: {broken}:")
    assert gateway.calls == []


# ---------------------------------------------------------------------- sessions


def test_session_start_follows_to_the_end_with_the_local_json(api, capsys, monkeypatch, env):
    file = two_step(env)
    cli(capsys, "pipeline", "create", "--file", str(file))
    local(capsys, monkeypatch, "pipeline", "create", "--file", str(file))
    start = ("session", "start", "--pipeline", "Two Step", "--parameters", "greeting=hello")
    code, out, err = cli(capsys, *start, "--format", "json")
    assert code == 0, err
    mine = json.loads(out)
    code, out, _ = local(capsys, monkeypatch, *start, "--format", "json")
    theirs = json.loads(out)
    assert set(mine) == set(theirs) == SESSION_KEYS
    assert all(set(job) == JOB_KEYS for job in mine["jobs"])
    assert stable(mine) == stable(theirs)
    assert mine["status"] == "succeeded" and mine["driver_pid"] is None
    assert mine["jobs"][1]["output"] == {"echo": "hello"}

    code, out, _ = cli(capsys, "session", "status", "--session-id", mine["session_id"])
    assert code == 0 and "Two Step" in out and "succeeded" in out
    code, out, _ = cli(
        capsys, "session", "status", "--session-id", mine["session_id"], "--format", "json"
    )
    assert stable(json.loads(out)) == stable(mine)

    code, out, err = cli(capsys, *start)  # the table: the summary once it has ended
    assert code == 0, err
    assert "session id:" in out and "succeeded" in out


def test_a_failed_session_exits_1_then_retry_with_a_parameter_succeeds(api, capsys, env):
    cli(capsys, "pipeline", "create", "--file", str(two_step(env)))
    code, out, _ = cli(
        capsys, "session", "start", "--pipeline", "Two Step", "-p", "fail=true", "--format", "json"
    )
    failed = json.loads(out)
    assert code == 1 and failed["status"] == "failed" and failed["jobs_failed"] == 1
    session_id = failed["session_id"]
    code, _, err = cli(capsys, "session", "resume", "--session-id", session_id)
    assert code == 2
    assert one_error(err) == (
        f"session '{session_id}' has ended (failed); re-run its failed jobs with: "
        f"bunsui session retry --session-id {session_id}"
    )

    code, out, err = cli(
        capsys,
        "session",
        "retry",
        "--session-id",
        session_id,
        "-p",
        "fail=false",
        "--format",
        "json",
    )
    assert code == 0, err
    retried = json.loads(out)
    assert retried["status"] == "succeeded" and retried["parameters"]["fail"] is False
    produce, consume = retried["jobs"]
    assert produce["attempts"] == 1 and consume["attempts"] == 2
    assert (env / "produce.count").read_text().count("ran") == 1  # kept its output

    code, _, err = cli(capsys, "session", "retry", "--session-id", session_id)
    assert one_error(err) == (
        f"session '{session_id}' is succeeded; only a failed or cancelled session can be retried."
    )


def test_a_retry_the_stack_never_applies_is_one_line(api, capsys, env, monkeypatch):
    fake, _ = api
    cli(capsys, "pipeline", "create", "--file", str(two_step(env)))
    code, out, _ = cli(capsys, "session", "start", "--pipeline", "Two Step", "-p", "fail=true")
    session_id = out.split("session id: ")[1].split()[0]
    monkeypatch.setattr(sessions, "REQUEST_WAIT_SECONDS", 0.3)
    failed = session_to_dict(fake.backend.store.get_session(session_id))
    fake.before = lambda event: (
        {"statusCode": 202, "body": json.dumps({"session": failed})}
        if event["rawPath"].endswith("/retry")
        else None
    )
    code, out, err = cli(capsys, "session", "retry", "--session-id", session_id)
    assert (code, out) == (2, "")
    assert one_error(err) == (
        f"the stack has not retried session '{session_id}' within 0.3s: see its reducer's "
        f"logs and dead-letter queue, and bunsui session status --session-id {session_id}"
    )


def test_parameter_errors_come_back_as_the_local_cli_prints_them(api, capsys, monkeypatch, env):
    file = two_step(env)
    cli(capsys, "pipeline", "create", "--file", str(file))
    local(capsys, monkeypatch, "pipeline", "create", "--file", str(file))
    for args in (("-p", "fail=maybe"), ("-p", "colour=red")):
        command = ("session", "start", "--pipeline", "Two Step", *args)
        code, out, err = cli(capsys, *command)
        assert (code, out) == (2, "")
        assert err == local(capsys, monkeypatch, *command)[2]
        assert one_error(err).startswith("parameter ")
    code, _, err = cli(capsys, "session", "start", "--pipeline", "Two Stp")
    assert one_error(err) == (
        "pipeline 'Two Stp' not found. Did you mean 'Two Step'? (bunsui pipeline list)"
    )


def test_run_file_detach_list_graph_and_logs(api, capsys, env):
    file = two_step(env)
    code, out, err = cli(capsys, "run", str(file), "--detach")
    assert code == 0, err
    assert out.startswith("pipeline 'Two Step' version 1\nsession ")
    assert "runs on AWS (the API at http://127.0.0.1:" in out
    session_id = out.split("session ")[1].split()[0]
    wait_until(
        lambda: (
            json.loads(
                cli(capsys, "session", "status", "--session-id", session_id, "--format", "json")[1]
            )["status"]
            == "succeeded"
        ),
        "the session's end",
    )

    code, out, _ = cli(capsys, "session", "list", "--format", "json")
    [row] = json.loads(out)
    assert row["session_id"] == session_id and row["jobs_finished"] == 2
    assert row["driven"] is False
    code, out, _ = cli(capsys, "session", "list", "--status", "failed", "--format", "json")
    assert json.loads(out) == []
    code, out, _ = cli(capsys, "session", "list", "--pipeline", "Two Step")
    assert session_id in out
    code, _, err = cli(capsys, "session", "list", "--pipeline", "Two Stp")
    assert "Did you mean 'Two Step'?" in one_error(err)

    code, out, _ = cli(
        capsys, "session", "graph", "--session-id", session_id, "--format", "mermaid"
    )
    assert code == 0 and "produce" in out and "classDef" in out

    code, out, _ = cli(capsys, "logs", "download", "--session-id", session_id, "--output", "-")
    entries = json.loads(out)
    assert entries and all(set(e) == LOG_KEYS for e in entries)
    assert [e["event"] for e in entries][:2] == ["session_started", "job_dispatched"]
    assert entries[-1]["event"] == "session_succeeded"
    code, out, _ = cli(capsys, "logs", "tail", "--session-id", session_id, "-n", "1")
    assert code == 0 and "session succeeded" in out
    code, out, _ = cli(capsys, "logs", "tail", "--session-id", session_id, "--follow")
    assert code == 0 and "session succeeded" in out


def test_cancel_pause_and_resume_go_through_the_api(api, capsys, env):
    fake, _ = api
    jobs = [
        {"id": "first", **python_job(waiting_job(env, "first"))},
        {"id": "second", "depends_on": ["first"], **python_job("print('second')")},
    ]
    write_pipeline(env / "wait.yaml", "Waits", jobs)
    cli(capsys, "pipeline", "create", "--file", str(env / "wait.yaml"))

    code, out, _ = cli(capsys, "session", "start", "--pipeline", "Waits", "-d", "--format", "json")
    session_id = json.loads(out)["session_id"]
    wait_until((env / "first.pid").exists, "the first job")
    code, out, err = cli(capsys, "session", "pause", "--session-id", session_id)
    assert code == 0, err
    assert out.startswith(f"session {session_id} is paused; continue it with")
    code, out, _ = cli(capsys, "session", "status", "--session-id", session_id)
    assert "paused" in out and "runs on AWS" in out
    (env / "first.go").write_text("")
    wait_until(
        lambda: fake.backend.store.get_run(session_id, "first").status is JobStatus.SUCCEEDED,
        "the first job's end",
    )
    code, out, err = cli(capsys, "session", "resume", "--session-id", session_id)
    assert code == 0, err
    assert "succeeded" in out and "second" in out

    (env / "first.go").unlink()
    (env / "first.pid").unlink()
    code, out, _ = cli(capsys, "session", "start", "--pipeline", "Waits", "-d", "--format", "json")
    session_id = json.loads(out)["session_id"]
    wait_until((env / "first.pid").exists, "the first job")
    code, out, err = cli(capsys, "session", "cancel", "--session-id", session_id, "--reason", "no")
    assert (code, out) == (0, f"session {session_id} is cancelled.\n"), err
    session = fake.backend.store.get_session(session_id)
    assert session.status is SessionStatus.CANCELLED
    code, _, err = cli(capsys, "session", "cancel", "--session-id", session_id)
    assert one_error(err) == f"session '{session_id}' has ended (cancelled)."


def test_logs_tail_follow_reads_a_running_session_until_it_ends(api, capsys, env):
    jobs = [{"id": "slow", **python_job(waiting_job(env, "slow", "print('slow is done')"))}]
    write_pipeline(env / "slow.yaml", "Slow", jobs)
    cli(capsys, "pipeline", "create", "--file", str(env / "slow.yaml"))
    code, out, _ = cli(capsys, "session", "start", "--pipeline", "Slow", "-d", "--format", "json")
    session_id = json.loads(out)["session_id"]
    done: dict[str, Any] = {}
    follower = threading.Thread(
        target=lambda: done.update(
            result=cli(capsys, "logs", "tail", "--session-id", session_id, "--follow")
        )
    )
    follower.start()
    wait_until((env / "slow.pid").exists, "the job")
    time.sleep(0.2)
    assert follower.is_alive()  # it follows while the session runs
    (env / "slow.go").write_text("")
    follower.join(HANG_GUARD)
    code, out, err = done["result"]
    assert code == 0, err
    lines = out.splitlines()
    assert "session started" in lines[0] and "session succeeded" in lines[-1]
    assert any("attempt 1 started" in line for line in lines)


def test_schedule_create_list_delete(api, capsys, env, monkeypatch):
    fake, _ = api
    cli(capsys, "pipeline", "create", "--file", str(two_step(env)))
    code, out, err = cli(
        capsys,
        "schedule",
        "create",
        "--pipeline",
        "Two Step",
        "--cron",
        "0 6 * * ? *",
        "--parameters",
        "greeting=morning",
        "fail=false",
    )
    assert code == 0, err
    name = default_name("Two Step", "0 6 * * ? *")
    assert name.startswith("Two-Step-")
    assert out == f"✓ schedule '{name}' starts 'Two Step' at 0 6 * * ? * (UTC).\n"
    assert fake.schedules[name]["parameter_text"] == {"greeting": "morning", "fail": "false"}
    code, out, _ = cli(capsys, "schedule", "list", "--format", "json")
    [listed] = json.loads(out)
    assert (listed["name"], listed["cron"], listed["timezone"]) == (name, "0 6 * * ? *", "UTC")
    code, out, _ = cli(capsys, "schedule", "list")
    assert name in out and "morning" in out
    code, _, err = cli(
        capsys, "schedule", "create", "--pipeline", "Two Step", "--cron", "0 6 * * ? *"
    )
    assert one_error(err) == f"schedule '{name}' already exists."
    code, out, _ = cli(capsys, "schedule", "delete", name, "--format", "json")
    assert json.loads(out) == {"schedule": name, "deleted": True}
    assert fake.schedules == {}
    code, _, err = cli(capsys, "schedule", "delete", name)
    assert (code, one_error(err)) == (2, f"no {name}.")

    code, _, err = local(capsys, monkeypatch, "schedule", "list")
    assert one_error(err) == (
        "schedules run on AWS: bunsui config set backend aws (and aws.stack_name)."
    )


@pytest.mark.parametrize(
    "command",
    [
        ("session", "status"),
        ("session", "graph"),
        ("session", "cancel"),
        ("session", "pause"),
        ("session", "resume"),
        ("session", "retry"),
        ("logs", "tail"),
    ],
)
def test_unknown_session_is_the_local_line(api, capsys, monkeypatch, command):
    code, out, err = cli(capsys, *command, "--session-id", "nope")
    assert (code, out) == (2, "")
    assert one_error(err) == "session 'nope' not found."
    assert err == local(capsys, monkeypatch, *command, "--session-id", "nope")[2]


def test_local_only_options_are_refused_on_aws(api, capsys, env):
    _, gateway = api
    file = two_step(env)
    template = env / "template.yaml"
    template.write_text("Resources: {}\n")
    code, out, err = cli(capsys, "run", str(file), "--template", str(template))
    assert (code, out) == (2, "")
    assert one_error(err).startswith("--template: for the local backend only; on AWS")
    code, _, err = cli(capsys, "session", "start", "--pipeline", "x", "--local-map", "m.yaml")
    assert one_error(err).startswith("--local-map: for the local backend only")
    assert gateway.calls == []


# ---------------------------------------------------------------------- AWS errors


def test_no_credentials_is_one_line(env, capsys, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("BUNSUI_BACKEND", "aws")
    monkeypatch.setenv("BUNSUI_AWS_ENDPOINT", "http://127.0.0.1:9")
    code, out, err = cli(capsys, "pipeline", "list")
    assert (code, out) == (2, "")
    assert one_error(err) == (
        "no AWS credentials found for profile default; run aws configure or set AWS_PROFILE."
    )
    monkeypatch.setenv("BUNSUI_AWS_PROFILE", "ops")
    (env / "aws" / "config").write_text("[profile ops]\nregion = eu-west-1\n")
    code, _, err = cli(capsys, "session", "list")
    assert one_error(err) == (
        "no AWS credentials found for profile ops; run aws configure or set AWS_PROFILE."
    )
    monkeypatch.setenv("BUNSUI_AWS_PROFILE", "nobody")
    code, _, err = cli(capsys, "session", "list")
    assert one_error(err).startswith("AWS profile 'nobody' not found")


def test_a_profile_signs_the_requests(api, capsys, env, monkeypatch):
    _, gateway = api
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (env / "aws" / "credentials").write_text(
        f"[ops]\naws_access_key_id = AKIDOPS\naws_secret_access_key = {SECRET}\n"
    )
    monkeypatch.setenv("BUNSUI_AWS_PROFILE", "ops")
    code, out, err = cli(capsys, "pipeline", "list", "--format", "json")
    assert (code, out) == (0, "[]\n"), err
    (env / "aws" / "credentials").write_text(
        "[ops]\naws_access_key_id = AKIDOPS\naws_secret_access_key = not-the-secret\n"
    )
    code, _, err = cli(capsys, "pipeline", "list")
    assert code == 2
    assert one_error(err) == (
        "access denied by the Bunsui API (the API at "
        f"{gateway.url}): The request signature we calculated does not match the signature "
        "you provided.; the credentials of profile ops need execute-api:Invoke on it."
    )


def test_access_denied_by_the_api_is_one_line(api, capsys):
    fake, gateway = api
    fake.before = lambda event: {
        "statusCode": 403,
        "body": json.dumps({"message": "User: arn:aws:iam::1:user/x is not authorized"}),
    }
    code, out, err = cli(capsys, "session", "list")
    assert (code, out) == (2, "")
    assert one_error(err) == (
        f"access denied by the Bunsui API (the API at {gateway.url}): User: "
        "arn:aws:iam::1:user/x is not authorized; the credentials of profile default need "
        "execute-api:Invoke on it."
    )


def test_throttling_is_retried_then_one_line(api, capsys):
    fake, gateway = api
    refusals = iter(range(3))

    def throttle(event: dict[str, Any]) -> dict[str, Any] | None:
        if next(refusals, None) is None:
            return None
        return {"statusCode": 429, "body": json.dumps({"message": "Too Many Requests"})}

    fake.before = throttle
    code, out, err = cli(capsys, "pipeline", "list", "--format", "json")
    assert (code, out) == (0, "[]\n"), err
    assert [c.status for c in gateway.calls] == [429, 429, 429, 200]

    fake.before = lambda event: {"statusCode": 429, "body": '{"message":"Too Many Requests"}'}
    code, out, err = cli(capsys, "pipeline", "list")
    assert (code, out) == (2, "")
    assert one_error(err) == (
        "the Bunsui API is throttling requests (429 Too Many Requests, tried 5 times); "
        "try again in a moment."
    )
    assert len(gateway.calls) == 4 + remote.TRIES


def test_a_failing_api_and_an_unknown_route_are_one_line(api, capsys):
    fake, gateway = api

    def broken(event: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    fake.before = broken
    code, _, err = cli(capsys, "session", "list")
    assert code == 2
    assert one_error(err) == (
        "the Bunsui API failed on GET /sessions (500 Internal Server Error); its function's "
        "logs are in CloudWatch Logs."
    )
    fake.before = lambda event: {"statusCode": 404, "body": '{"message":"Not Found"}'}
    code, _, err = cli(capsys, "pipeline", "list")
    assert one_error(err) == (
        f"the Bunsui API at {gateway.url} has no route GET /pipelines: is the API at "
        f"{gateway.url} deployed from this version of Bunsui?"
    )


def test_an_unreachable_endpoint_is_one_line(env, capsys, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("BUNSUI_BACKEND", "aws")
    monkeypatch.setenv("BUNSUI_AWS_ENDPOINT", f"http://127.0.0.1:{port}")
    code, out, err = cli(capsys, "session", "list")
    assert (code, out) == (2, "")
    assert one_error(err).startswith(
        f"cannot reach the Bunsui API at http://127.0.0.1:{port}/sessions: "
    )


@pytest.mark.parametrize(
    ("code", "line"),
    [
        (
            "AccessDeniedException",
            "access denied: profile default may not call logs:GetLogEvents: not you",
        ),
        ("ThrottlingException", "AWS is throttling logs:GetLogEvents (tried 5 times); try "
         "again in a moment."),
        ("ExpiredTokenException", "AWS refused the credentials of profile default: not you"),
        ("ServiceUnavailable", "logs:GetLogEvents failed: ServiceUnavailable: not you"),
    ],
)  # fmt: skip
def test_errors_of_other_aws_apis_are_one_line(env, code, line):
    def refused() -> None:
        raise ClientError({"Error": {"Code": code, "Message": "not\n you"}}, "GetLogEvents")

    with pytest.raises(AwsError) as caught:
        AwsAccess(AwsSettings()).call("logs:GetLogEvents", refused)
    assert str(caught.value) == line
    gone = ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetLogEvents")

    def missing() -> None:
        raise gone

    assert AwsAccess(AwsSettings()).call("x", missing, {"ResourceNotFoundException"}) is None


# ---------------------------------------------------------------------- the stack


STACK_TEMPLATE = """
Resources:
  Topic:
    Type: AWS::SNS::Topic
Outputs:
  ApiEndpoint:
    Value: {url}
  TableName:
    Value: bunsui-table
"""


def test_the_stack_outputs_are_read_once_and_cached(env, capsys, monkeypatch):
    monkeypatch.setenv("BUNSUI_BACKEND", "aws")
    monkeypatch.setenv("BUNSUI_AWS_STACK_NAME", "bunsui")
    with mock_aws():
        fake = FakeApi(env / "stack")
        secret = boto3.Session().get_credentials().secret_key  # moto's own
        with ApiGateway(fake, secret_key=secret) as first:
            cloudformation = boto3.client("cloudformation", region_name="eu-west-1")
            code, _, err = cli(capsys, "pipeline", "list")
            assert code == 2
            assert one_error(err) == (
                "stack 'bunsui' not found in eu-west-1 (profile default); deploy it with "
                "sam deploy --guided, or bunsui config set aws.stack_name NAME."
            )

            cloudformation.create_stack(
                StackName="bunsui", TemplateBody=STACK_TEMPLATE.format(url=first.url + "/")
            )
            code, out, err = cli(capsys, "pipeline", "list", "--format", "json")
            assert (code, out) == (0, "[]\n"), err
            cache = json.loads((env / "config" / "stacks.json").read_text())
            entry = cache["default|eu-west-1|bunsui"]
            assert entry["api_endpoint"] == first.url and entry["table_name"] == "bunsui-table"
            assert entry["last_updated"]

            # The cache answers: CloudFormation is not asked again (the stack may go).
            cloudformation.delete_stack(StackName="bunsui")
            assert cli(capsys, "session", "list", "--format", "json")[:2] == (0, "[]\n")

        # The API moved (a new deployment): the cached URL no longer answers, so the CLI
        # reads the stack again and goes on with its new output.
        with ApiGateway(fake, secret_key=secret) as second:
            cloudformation.create_stack(
                StackName="bunsui", TemplateBody=STACK_TEMPLATE.format(url=second.url)
            )
            code, out, err = cli(capsys, "session", "list", "--format", "json")
            assert (code, out) == (0, "[]\n"), err
            cache = json.loads((env / "config" / "stacks.json").read_text())
            assert cache["default|eu-west-1|bunsui"]["api_endpoint"] == second.url
        fake.close()


def test_a_stack_without_the_api_output_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setenv("BUNSUI_BACKEND", "aws")
    monkeypatch.setenv("BUNSUI_AWS_STACK_NAME", "other")
    with mock_aws():
        boto3.client("cloudformation", region_name="eu-west-1").create_stack(
            StackName="other",
            TemplateBody="Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n",
        )
        code, _, err = cli(capsys, "session", "list")
    assert code == 2
    assert one_error(err) == (
        "stack 'other' (CREATE_COMPLETE) has no ApiEndpoint output: is it a Bunsui stack, "
        "and fully deployed?"
    )


# ---------------------------------------------------------------------- job logs


class _Runs:
    """The two reads CloudWatchLogBook makes of the store."""

    def __init__(self, session: Session, runs: list[JobRun]) -> None:
        self.session = session
        self.found = runs

    def get_session(self, session_id: str) -> Session:
        return self.session

    def runs(self, session_id: str, job_id: str | None = None, **_: Any) -> list[JobRun]:
        return [r for r in self.found if job_id is None or r.job_id == job_id]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_job_logs_from_cloudwatch_lambda_by_request_id_and_ecs_by_stream(env):
    with mock_aws():
        region = "eu-west-1"
        iam = boto3.client("iam", region_name=region)
        role = iam.create_role(
            RoleName="fn",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        lambda_ = boto3.client("lambda", region_name=region)
        lambda_.create_function(
            FunctionName="train",
            Runtime="python3.12",
            Role=role,
            Handler="index.handler",
            Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
            # moto keeps no LoggingConfig: the group is the default one, /aws/lambda/<name>
        )
        ecs = boto3.client("ecs", region_name=region)
        ecs.create_cluster(clusterName="jobs")
        ecs.register_task_definition(
            family="prep",
            containerDefinitions=[
                {
                    "name": "main",
                    "image": "prep:1",
                    "memory": 512,
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {"awslogs-group": "/ecs/prep", "awslogs-stream-prefix": "job"},
                    },
                }
            ],
        )
        cw = boto3.client("logs", region_name=region)
        t0 = (int(time.time()) - 60) * 1000  # CloudWatch refuses events older than 14 days
        start, end = _iso(t0), _iso(t0 + 1000)
        for group, stream, lines in (
            (
                "/aws/lambda/train",
                "2024/05/01/[$LATEST]aaa",
                [
                    "START RequestId: req-0 Version: $LATEST",
                    "earlier request's line",
                    "REPORT RequestId: req-0 Duration: 1 ms",
                    "START RequestId: req-1 Version: $LATEST",
                    "training\n",
                    "[ERROR]\t2024-05-01T12:00:00.004Z\treq-1\tloss is nan",
                    "END RequestId: req-1",
                    "REPORT RequestId: req-1 Duration: 5 ms",
                    "START RequestId: req-2 Version: $LATEST",
                    "a later request's line",
                ],
            ),
            ("/ecs/prep", "job/main/task0001", ["", "", "", "preparing", "WARNING: few rows"]),
        ):
            cw.create_log_group(logGroupName=group)
            cw.create_log_stream(logGroupName=group, logStreamName=stream)
            cw.put_log_events(
                logGroupName=group,
                logStreamName=stream,
                logEvents=[{"timestamp": t0 + i, "message": m} for i, m in enumerate(lines) if m],
            )
        pipeline = load_pipeline(
            yaml.safe_dump(
                {
                    "version": "1.0",
                    "name": "P",
                    "jobs": [
                        {"id": "train", "type": "lambda", "parameters": {"function_name": "train"}},
                        {
                            "id": "prep",
                            "type": "ecs",
                            "parameters": {"task_definition": "prep", "cluster": "jobs"},
                        },
                    ],
                }
            )
        )
        session = Session("s1", "P", 1, {}, SessionStatus.FAILED)

        def run(job_id: str, handle: str, inputs: dict[str, Any]) -> JobRun:
            return JobRun(
                session_id="s1",
                key=job_id,
                job_id=job_id,
                status=JobStatus.FAILED,
                attempt=2,
                inputs=inputs,
                handle=handle,
                started_at=start,
                ended_at=end,
            )

        runs = [
            run("train", "req-1", {"function_name": "train"}),
            run(
                "prep",
                "arn:aws:ecs:eu-west-1:123456789012:task/jobs/task0001",
                {"task_definition": "prep", "cluster": "jobs"},
            ),
        ]
        book = CloudWatchLogBook(
            AwsAccess(AwsSettings(region=region)),
            _Runs(session, runs),  # type: ignore[arg-type]
            lambda s, job_id: str(pipeline.job(job_id).type),
        )
        lines = book.lines("s1")
        assert [(line.key, line.message) for line in lines] == [
            ("train", "START RequestId: req-1 Version: $LATEST"),
            ("prep", "preparing"),
            ("train", "training"),
            ("prep", "WARNING: few rows"),
            ("train", "[ERROR]\t2024-05-01T12:00:00.004Z\treq-1\tloss is nan"),
            ("train", "END RequestId: req-1"),
            ("train", "REPORT RequestId: req-1 Duration: 5 ms"),
        ]
        assert {line.attempt for line in lines} == {2}
        assert lines[0].at == _iso(t0 + 3)
        assert [line.message for line in book.lines("s1", "prep")] == [
            "preparing",
            "WARNING: few rows",
        ]
        followed = list(book.follow("s1", "train", until=lambda: True))
        assert len(followed) == 5 and followed[0].message.startswith("START RequestId: req-1")

        # --follow looks again for an attempt whose REPORT line has not arrived yet.
        stream = "2024/05/01/[$LATEST]bbb"
        cw.create_log_stream(logGroupName="/aws/lambda/train", logStreamName=stream)

        sent: list[str] = []

        def put(*lines: str) -> None:
            events = [
                {"timestamp": t0 + 100 + len(sent) + i, "message": m} for i, m in enumerate(lines)
            ]
            cw.put_log_events(
                logGroupName="/aws/lambda/train", logStreamName=stream, logEvents=events
            )
            sent.extend(lines)

        put("START RequestId: req-9 Version: $LATEST", "first")
        just_ended = run("train", "req-9", {"function_name": "train"})
        just_ended = just_ended.but(ended_at=_iso(int(time.time() * 1000)))
        late = CloudWatchLogBook(
            AwsAccess(AwsSettings(region=region)),
            _Runs(session, [just_ended]),  # type: ignore[arg-type]
            lambda s, job_id: str(pipeline.job(job_id).type),
        )
        looks: list[bool] = []

        def until() -> bool:  # the first look finds no REPORT; the rest arrives before the next
            if looks:
                put("second", "REPORT RequestId: req-9 Duration: 2 ms")
            looks.append(True)
            return len(looks) > 1

        assert [line.message for line in late.follow("s1", until=until)] == [
            "START RequestId: req-9 Version: $LATEST",
            "first",
            "second",
            "REPORT RequestId: req-9 Duration: 2 ms",
        ]

        # A deleted function keeps its logs; logs that are gone are no lines, not an error.
        lambda_.delete_function(FunctionName="train")
        cw.delete_log_stream(logGroupName="/ecs/prep", logStreamName="job/main/task0001")
        fresh = CloudWatchLogBook(
            AwsAccess(AwsSettings(region=region)),
            _Runs(session, runs),  # type: ignore[arg-type]
            lambda s, job_id: str(pipeline.job(job_id).type),
        )
        assert [line.key for line in fresh.lines("s1")] == ["train"] * 5
        cw.delete_log_group(logGroupName="/aws/lambda/train")
        assert fresh.lines("s1") == []
