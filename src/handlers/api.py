"""Lambda entry point of the HTTP API: pipelines, sessions, their runs and history, schedules.

Each route parses its request (Powertools' event handler validates paths,
queries and bodies against the models of :mod:`handlers.models`), makes one
call of :class:`engine.aws.service.AwsEngine` and shapes the reply from the
records of :mod:`engine.records`. Errors map to answers by type, never by
text: a Bunsui error a user caused is a 4xx whose message is the line the
CLI prints for the same error, ``{"error": {"type", "message", "problems"?}}``.

``python -m handlers.api --openapi`` prints the OpenAPI document (the
committed ``docs/openapi.json``).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

# The pipeline language and the reducer load here, in the init phase: this function's first
# event runs them (engine.aws.service imports them where it uses them, for the history
# projector's sake, which never does).
from engine import loader, reducer  # noqa: F401
from engine.aws.bus import EventNotPut
from engine.aws.dispatch import Throttled, error_line, is_throttling
from engine.aws.schedules import Schedule, ScheduleNotFound
from engine.aws.service import AwsEngine, RunNotFound, lambda_engine
from engine.aws.timers import TimerNotScheduled
from engine.errors import (
    BunsuiError,
    Conflict,
    PipelineInvalid,
    PipelineNotFound,
    SessionNotFound,
    plain,
)
from engine.records import entry_to_dict, run_to_dict, session_to_dict
from engine.state import JobStatus, SessionStatus
from handlers.models import (
    CancelRequest,
    EmptyRequest,
    ErrorBody,
    HistoryList,
    PipelineCreate,
    PipelineCreated,
    PipelineDocument,
    PipelineList,
    PipelineVersions,
    RetryRequest,
    RunList,
    RunReply,
    ScheduleCreate,
    ScheduleList,
    ScheduleRecord,
    SessionList,
    SessionReply,
    SessionStart,
)

API_VERSION = "1.0.0"
logger = Logger(service="bunsui")
tracer = Tracer(service="bunsui")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Bunsui"))
app = APIGatewayHttpResolver(enable_validation=True)

RUN_KEY = r"^[A-Za-z0-9_-]+(\[[0-9]{1,8}\])?$"
STATUSES: tuple[tuple[type[BunsuiError], HTTPStatus], ...] = (
    (SessionNotFound, HTTPStatus.NOT_FOUND),
    (PipelineNotFound, HTTPStatus.NOT_FOUND),
    (RunNotFound, HTTPStatus.NOT_FOUND),
    (ScheduleNotFound, HTTPStatus.NOT_FOUND),
    (Conflict, HTTPStatus.CONFLICT),
    (Throttled, HTTPStatus.SERVICE_UNAVAILABLE),
    (EventNotPut, HTTPStatus.BAD_GATEWAY),
    (TimerNotScheduled, HTTPStatus.BAD_GATEWAY),
)
"""The answer of each error; any other Bunsui error is the request's fault (400)."""


class RequestInvalid(BunsuiError):
    """A request a route's model accepts but whose values make no sense."""


def engine() -> AwsEngine:
    """The container's engine (tests replace it)."""
    return lambda_engine()


def _error(status: int, kind: str, message: str, problems: list[dict[str, Any]] | None = None):
    # Each line plain (an invalid pipeline's message is one line per problem, as the CLI's).
    error: dict[str, Any] = {
        "type": kind,
        "message": "\n".join(plain(line) for line in message.split("\n")),
    }
    if problems is not None:
        error["problems"] = [
            {k: plain(v) if isinstance(v, str) else v for k, v in problem.items()}
            for problem in problems
        ]
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body={"error": error}
    )


def _errors(*codes: int) -> dict[int, OpenAPIResponse]:
    described = {
        400: "Invalid request, pipeline or parameter (the CLI's message).",
        404: "No such pipeline, session, run or schedule.",
        409: "The session's state does not allow it.",
    }
    return {
        code: {
            "description": described[code],
            "content": {"application/json": {"model": ErrorBody}},
        }
        for code in codes
    }


def _ok(code: int, description: str, *errors: int) -> dict[int, OpenAPIResponse]:
    return {code: {"description": description}, **_errors(400, *errors)}


@app.exception_handler(BunsuiError)
def _bunsui_error(exc: BunsuiError) -> Response:
    status = next((s for kind, s in STATUSES if isinstance(exc, kind)), HTTPStatus.BAD_REQUEST)
    problems = [p.to_dict() for p in exc.problems] if isinstance(exc, PipelineInvalid) else None
    logger.info("refused", extra={"error": type(exc).__name__, "status": int(status)})
    headers = {"Retry-After": "1"} if status == HTTPStatus.SERVICE_UNAVAILABLE else None
    response = _error(int(status), type(exc).__name__, str(exc), problems)
    if headers:
        response.headers.update(headers)
    return response


@app.exception_handler(Exception)
def _failure(exc: Exception) -> Response:
    """Not the request's fault: AWS refused or failed, or Bunsui has a bug. Throttling
    is a 503 the client may retry; the rest a 500 whose details are in the log."""
    if isinstance(exc, ClientError) and is_throttling(exc):
        response = _error(503, "Throttled", f"AWS is throttling requests: {error_line(exc)}")
        response.headers.update({"Retry-After": "1"})
        return response
    logger.exception("request failed")
    request_id = app.lambda_context.aws_request_id if app.lambda_context else "?"
    return _error(
        500,
        "InternalError",
        f"the request failed; see the API function's log (request {request_id}).",
    )


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> Response:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            message = f"the body is not JSON: {reason}"
        else:
            message = str(error.get("msg", "invalid"))
        problems.append({"path": plain(where), "message": plain(message)})
    text = "; ".join(f"{p['path']}: {p['message']}" for p in problems[:5])
    return _error(400, "RequestInvalid", f"invalid request: {text}", problems)


@app.exception_handler(RequestUnsupportedContentType)
def _unsupported(exc: RequestUnsupportedContentType) -> Response:
    return _error(415, "RequestInvalid", "the body must be JSON (content-type application/json).")


@app.not_found
def _no_route(exc: NotFoundError) -> Response:
    event = app.current_event
    return _error(404, "NotFound", plain(f"no route {event.http_method} {event.path}."))


T = TypeVar("T")


def _listed(text: str | None, kind: Callable[[str], T], what: str) -> set[T] | None:
    """A comma-separated query value of statuses."""
    if not text:
        return None
    found = set()
    for part in text.split(","):
        try:
            found.add(kind(part.strip()))
        except ValueError:
            choices = _choices(kind)
            raise RequestInvalid(f"{what} '{part.strip()}' is not one of: {choices}.") from None
    return found


def _choices(kind: Any) -> str:
    return ", ".join(member.value for member in kind)


# ---------------------------------------------------------------------- pipelines


@app.post(
    "/pipelines",
    status_code=201,
    summary="Store a pipeline document as a new version",
    responses=_ok(201, "Stored (or the latest version already)."),
)
def create_pipeline(body: Annotated[PipelineCreate, Body()]) -> PipelineCreated:
    saved = engine().create_pipeline(body.document, body.source)
    logger.info("pipeline stored", extra={"pipeline": saved.name, "version": saved.version})
    return PipelineCreated(
        name=saved.name, version=saved.version, jobs=saved.jobs, created=saved.created
    )


@app.get("/pipelines", summary="The stored pipelines and their latest versions")
def list_pipelines() -> PipelineList:
    return PipelineList.model_validate(
        {
            "pipelines": [
                {"name": name, "version": version, "created_at": created}
                for name, version, created in engine().pipelines()
            ]
        }
    )


@app.get(
    "/pipelines/<name>",
    summary="A pipeline version's document (the latest when no version is given)",
    responses=_ok(200, "The document.", 404),
)
def show_pipeline(
    name: str, version: Annotated[int | None, Query(ge=1)] = None
) -> PipelineDocument:
    found = engine().pipeline_document(unquote(name), version)
    return PipelineDocument(
        name=found.name, version=found.version, document=found.document, created_at=found.created_at
    )


@app.get(
    "/pipelines/<name>/versions",
    summary="Every version of a pipeline",
    responses=_ok(200, "The versions, oldest first.", 404),
)
def pipeline_versions(name: str) -> PipelineVersions:
    name = unquote(name)
    versions = engine().pipeline_versions(name)
    return PipelineVersions.model_validate(
        {"name": name, "versions": [{"version": v, "created_at": c} for v, c in versions]}
    )


@app.delete(
    "/pipelines/<name>",
    status_code=204,
    summary="Delete a pipeline (sessions that pinned a version keep it)",
    responses=_ok(204, "Deleted.", 404),
)
def delete_pipeline(name: str) -> None:
    engine().delete_pipeline(unquote(name))
    return Response(status_code=204, content_type=None, body=None)  # type: ignore[return-value]


# ---------------------------------------------------------------------- sessions


@app.post(
    "/sessions",
    status_code=201,
    summary="Start a session of a pipeline's latest version",
    responses=_ok(201, "Started: the reducer runs its first jobs shortly.", 404, 409),
)
def start_session(body: Annotated[SessionStart, Body()]) -> SessionReply:
    session = engine().start_session(body.pipeline, body.parameters, body.parameter_text)
    logger.append_keys(session_id=session.id)
    logger.info("session started", extra={"pipeline": session.pipeline})
    metrics.add_metric(name="SessionsStarted", unit=MetricUnit.Count, value=1)
    return SessionReply.model_validate({"session": session_to_dict(session)})


@app.get("/sessions", summary="Sessions, newest first", responses=_ok(200, "The sessions."))
def list_sessions(
    pipeline: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    status: Annotated[str | None, Query(max_length=200, description="e.g. running,paused")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SessionList:
    statuses = _listed(status, SessionStatus, "status")
    found = engine().sessions(pipeline, statuses, limit)
    return SessionList.model_validate({"sessions": [session_to_dict(s) for s in found]})


@app.get(
    "/sessions/<session_id>",
    summary="A session",
    responses=_ok(200, "The session.", 404),
)
def show_session(session_id: str) -> SessionReply:
    session = engine().session(unquote(session_id))
    return SessionReply.model_validate({"session": session_to_dict(session)})


@app.get(
    "/sessions/<session_id>/runs",
    summary="A page of a session's job runs, by job id then item index",
    responses=_ok(200, "The runs.", 404),
)
def list_runs(
    session_id: str,
    job: Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    status: Annotated[str | None, Query(max_length=200, description="e.g. failed,skipped")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    next: Annotated[str | None, Query(max_length=160, pattern=RUN_KEY)] = None,
) -> RunList:
    statuses = _listed(status, JobStatus, "status")
    page = engine().runs(unquote(session_id), job, statuses, limit, next)
    return RunList.model_validate({"runs": [run_to_dict(r) for r in page.runs], "next": page.next})


@app.get(
    "/sessions/<session_id>/runs/<key>",
    summary="One job run of a session",
    responses=_ok(200, "The run.", 404),
)
def show_run(session_id: str, key: str) -> RunReply:
    run = engine().run(unquote(session_id), unquote(key))
    return RunReply.model_validate({"run": run_to_dict(run)})


@app.get(
    "/sessions/<session_id>/history",
    summary="A session's history entries after number `after`",
    responses=_ok(200, "The entries, oldest first.", 404),
)
def session_history(session_id: str, after: Annotated[int, Query(ge=0)] = 0) -> HistoryList:
    entries, more = engine().history(unquote(session_id), after)
    return HistoryList.model_validate(
        {"entries": [[seq, entry_to_dict(entry)] for seq, entry in entries], "next": more}
    )


def _requested(session_id: str, kind: str, reason: str = "cancelled by user") -> SessionReply:
    session = engine().request(unquote(session_id), kind, reason)
    logger.append_keys(session_id=session.id)
    logger.info(f"{kind} requested")
    return SessionReply.model_validate({"session": session_to_dict(session)})


@app.post(
    "/sessions/<session_id>/cancel",
    status_code=202,
    summary="Cancel a session: running work is stopped, the rest skipped",
    responses=_ok(202, "Asked: the reducer applies it shortly.", 404, 409),
)
def cancel_session(
    session_id: str, body: Annotated[CancelRequest | None, Body()] = None
) -> SessionReply:
    return _requested(session_id, "cancel", (body or CancelRequest()).reason)


@app.post(
    "/sessions/<session_id>/pause",
    status_code=202,
    summary="Pause a session: nothing new starts, running jobs finish",
    responses=_ok(202, "Asked: the reducer applies it shortly.", 404, 409),
)
def pause_session(
    session_id: str, body: Annotated[EmptyRequest | None, Body()] = None
) -> SessionReply:
    return _requested(session_id, "pause")


@app.post(
    "/sessions/<session_id>/resume",
    status_code=202,
    summary="Resume a paused session",
    responses=_ok(202, "Asked: the reducer applies it shortly.", 404, 409),
)
def resume_session(
    session_id: str, body: Annotated[EmptyRequest | None, Body()] = None
) -> SessionReply:
    return _requested(session_id, "resume")


@app.post(
    "/sessions/<session_id>/retry",
    status_code=202,
    summary="Re-run a failed or cancelled session's failed, cancelled and skipped jobs",
    responses=_ok(202, "Asked: the reducer re-runs them shortly.", 404, 409),
)
def retry_session(
    session_id: str, body: Annotated[RetryRequest | None, Body()] = None
) -> SessionReply:
    body = body or RetryRequest()
    session = engine().retry(unquote(session_id), body.parameters, body.parameter_text)
    logger.append_keys(session_id=session.id)
    logger.info("retry requested")
    return SessionReply.model_validate({"session": session_to_dict(session)})


# ---------------------------------------------------------------------- schedules


def _schedule_record(schedule: Schedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "pipeline": schedule.pipeline,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "parameters": dict(schedule.parameters),
        "parameter_text": dict(schedule.parameter_text),
        "state": schedule.state,
        "created_at": schedule.created_at,
    }


@app.post(
    "/schedules",
    status_code=201,
    summary="Start sessions of a pipeline on a schedule",
    responses=_ok(201, "Scheduled.", 404, 409),
)
def create_schedule(body: Annotated[ScheduleCreate, Body()]) -> ScheduleRecord:
    wanted = Schedule(
        body.name, body.pipeline, body.cron, body.parameters, body.parameter_text, body.timezone
    )
    created = engine().create_schedule(wanted)
    logger.info("schedule created", extra={"schedule": created.name, "pipeline": created.pipeline})
    return ScheduleRecord.model_validate(_schedule_record(created))


@app.get("/schedules", summary="The scheduled sessions")
def list_schedules() -> ScheduleList:
    found = engine().list_schedules()
    return ScheduleList.model_validate({"schedules": [_schedule_record(s) for s in found]})


@app.delete(
    "/schedules/<name>",
    status_code=204,
    summary="Delete a scheduled session",
    responses=_ok(204, "Deleted.", 404),
)
def delete_schedule(name: str) -> None:
    engine().delete_schedule(unquote(name))
    return Response(status_code=204, content_type=None, body=None)  # type: ignore[return-value]


# ---------------------------------------------------------------------- entry points


@logger.inject_lambda_context(log_event=False, clear_state=True)  # bodies may hold secrets
@tracer.capture_lambda_handler(capture_response=False)  # responses may be large
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    refused = _unreadable_body(event)
    if refused is not None:
        return refused
    try:
        return app.resolve(event, context)
    finally:
        flush(metrics)


def _unreadable_body(event: dict[str, Any]) -> dict[str, Any] | None:
    """A 400 for a body no route can read: bytes that are not UTF-8, or JSON that is not
    an object (the resolver would fail on the first, and take a list for its first item)."""
    body = event.get("body") if isinstance(event, dict) else None
    if not body:
        return None
    try:
        text = base64.b64decode(body).decode("utf-8") if event.get("isBase64Encoded") else body
    except (ValueError, UnicodeDecodeError):
        return _refusal("the body is not UTF-8 text.")
    try:
        document = json.loads(text)
    except ValueError:
        return None  # answered by the route's own validation: "the body is not JSON"
    if not isinstance(document, dict):
        return _refusal("the body must be a JSON object.")
    return None


def _refusal(message: str) -> dict[str, Any]:
    """The 400 ``RequestInvalid`` answer, as API Gateway takes it from the function."""
    return {
        "statusCode": 400,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": json.dumps({"error": {"type": "RequestInvalid", "message": message}}),
        "isBase64Encoded": False,
    }


def flush(recorded: Metrics) -> None:
    """Publish the metrics of this request, if it recorded any (most record none)."""
    if recorded.metric_set:
        recorded.flush_metrics()


def openapi() -> dict[str, Any]:
    """The API's OpenAPI document. Powertools documents a 422 for request validation;
    this API answers those with a 400 (``ErrorBody``), so the 422s are left out."""
    document = json.loads(
        app.get_openapi_json_schema(
            title="Bunsui API",
            version=API_VERSION,
            description="Pipelines, sessions and schedules of a deployed Bunsui stack. Every "
            "request is signed with SigV4 (IAM auth); errors are ErrorBody with the message "
            "the bunsui CLI prints for the same error.",
        )
    )
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            if "204" in responses:
                responses["204"].pop("content", None)  # no body, no content type
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def main(argv: list[str]) -> int:
    if argv != ["--openapi"]:
        sys.stderr.write("usage: python -m handlers.api --openapi\n")
        return 2
    sys.stdout.write(json.dumps(openapi(), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
