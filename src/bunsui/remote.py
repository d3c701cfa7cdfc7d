"""The CLI's AWS backend: the deployed stack's HTTP API, every request signed with SigV4.

:class:`AwsBackend` has the surface the commands use of the local backend:
``store`` (a read-only :class:`RemoteStore` over the API), ``save_pipeline``,
``pipeline``, ``create_session``, ``request``, ``retry`` and ``logs``. The
API answers with the records of ``engine.records`` and, for an error a user
caused, ``{"error": {"type", "message"}}`` whose message is the text the
local CLI prints for the same error; it becomes the same exception here.

The API's URL is the stack's ``ApiEndpoint`` output (read once, then cached:
see :class:`bunsui.aws_access.StackCache`) or ``aws.endpoint`` when set.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from bunsui.aws_access import AwsAccess, AwsError, Stack, StackCache, describe_stack
from bunsui.aws_logs import CloudWatchLogBook
from bunsui.config import AwsSettings
from engine.errors import (
    BunsuiError,
    Conflict,
    PipelineInvalid,
    PipelineNotFound,
    Problem,
    SessionNotFound,
)
from engine.events import HistoryEntry
from engine.loader import load_pipeline, read_pipeline
from engine.pipeline import Pipeline
from engine.records import entry_from_dict, run_from_dict, session_from_dict
from engine.state import JobRun, JobStatus, Session, SessionStatus

T = TypeVar("T")

API_TIMEOUT_SECONDS = 35.0
"""A little more than API Gateway's own limit (30 s) for an integration."""
TRIES = 5
"""How often a throttled (429) or unavailable (503) request is sent in all."""
BACKOFF_SECONDS = 0.25
"""The first wait before trying again; it doubles each time (with jitter), up to BACKOFF_CAP."""
BACKOFF_CAP = 4.0
RUNS_PAGE = 1000
_EXECUTE_API = re.compile(r"[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?")


class ApiRejected(BunsuiError):
    """The API refused a request (4xx) with an error the CLI has no class of its own for."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class RemotePipelineInvalid(PipelineInvalid):
    """A pipeline the API found invalid: its problems as the API rendered them."""

    def __init__(self, message: str, problems: Sequence[Problem]) -> None:
        super().__init__(problems)
        self.args = (message,)
        self._lines = message.splitlines()

    def lines(self) -> list[str]:
        return self._lines


class LocalOnly(BunsuiError):
    """An option or command that only the local backend has."""


@dataclass
class _Stale(Exception):
    """A failure a changed stack would explain (the API moved): read the stack again."""

    error: AwsError


def _path(*segments: str) -> str:
    """An API path; each segment percent-encoded (pipeline names may hold spaces, '/'...)."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def _query(params: Mapping[str, Any]) -> str:
    """The query string in SigV4's canonical form (sorted, every reserved byte encoded), so
    the string signed and the string sent are the same."""
    pairs = [
        (quote(str(name), safe="-_.~"), quote(str(value), safe="-_.~"))
        for name, value in params.items()
        if value is not None
    ]
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _with_message(error: BunsuiError, message: str) -> BunsuiError:
    error.args = (message,)
    return error


def _problems(raw: Any) -> list[Problem]:
    problems = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and isinstance(item.get("message"), str):
            problems.append(
                Problem(
                    path=str(item.get("path") or ""),
                    message=item["message"],
                    hint=str(item.get("hint") or ""),
                    line=item.get("line"),
                    column=item.get("column"),
                )
            )
    return problems


def rejected(error: Mapping[str, Any], status: int, context: Mapping[str, Any]) -> BunsuiError:
    """The exception the local backend raises for the error the API answered with.

    Args:
        context: What the request was about (``session_id``, ``pipeline``,
            ``version``), for the attributes the commands read (a missing
            pipeline's ``version``).
    """
    kind = str(error.get("type") or "")
    message = str(error.get("message") or f"the Bunsui API refused the request ({status}).")
    if kind == "SessionNotFound":
        return _with_message(SessionNotFound(str(context.get("session_id", "?"))), message)
    if kind == "PipelineNotFound":
        found = PipelineNotFound(str(context.get("pipeline", "?")), context.get("version"))
        return _with_message(found, message)
    if kind == "Conflict":
        return Conflict(message)
    if kind == "PipelineInvalid":
        return RemotePipelineInvalid(message, _problems(error.get("problems")))
    return ApiRejected(message, kind or None)


class ApiClient:
    """Signed JSON requests to the stack's HTTP API, with retries and one-line errors."""

    def __init__(self, access: AwsAccess, settings: AwsSettings, cache: StackCache) -> None:
        self.access = access
        self.settings = settings
        self.cache = cache
        self._stack: Stack | None = None
        self._read_now = False
        """Whether this process read the stack (then reading it again tells nothing new)."""

    # ------------------------------------------------------------------ where

    @property
    def where(self) -> str:
        """The stack (or endpoint) as messages name it."""
        if self.settings.endpoint:
            return f"the API at {self.settings.endpoint}"
        return f"stack {self.settings.stack_name} in {self.access.region}"

    def base_url(self, refresh: bool = False) -> str:
        """The API's URL: ``aws.endpoint``, the cached stack output, or the stack read now."""
        if self.settings.endpoint:
            return self.settings.endpoint.rstrip("/")
        name = self.settings.stack_name
        if not name:
            raise AwsError(
                "the aws backend needs a stack: run bunsui config set aws.stack_name NAME "
                "(or aws.endpoint URL)."
            )
        key = StackCache.key(self.access.profile, self.access.region, name)
        if not refresh:
            self._stack = self._stack or self.cache.get(key)
            if self._stack is not None:
                return self._stack.api_endpoint
        stack = describe_stack(self.access, name)
        self.cache.put(key, stack)
        self._stack = stack
        self._read_now = True
        return stack.api_endpoint

    def signing_region(self, url: str) -> str:
        """The API's region: the one its default URL names, else the configured one."""
        found = _EXECUTE_API.fullmatch(urlsplit(url).hostname or "")
        return found[1] if found else self.access.region

    # ------------------------------------------------------------------ requests

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request; the answer's JSON (None for 204).

        Raises:
            BunsuiError: the API's 4xx error as the local backend raises it.
            AwsError: no credentials, access denied, throttled, unreachable, a 5xx.
        """
        base = self.base_url()
        try:
            return self._send(base, method, path, query or {}, body, context or {})
        except _Stale as stale:
            if self.settings.endpoint or self._read_now:
                raise stale.error from None
            # The outputs came from the cache: the stack may have changed since.
            fresh = self.base_url(refresh=True)
            if fresh == base:
                raise stale.error from None
        try:
            return self._send(fresh, method, path, query or {}, body, context or {})
        except _Stale as stale:
            raise stale.error from None

    def read(self, method: str, path: str, parse: Callable[[Any], T], **options: Any) -> T:
        """Send one request (as :meth:`call`) and read its answer with ``parse``.

        Raises:
            AwsError: the answer is not of the shape ``parse`` reads (another version of
                the stack's API).
        """
        answer = self.call(method, path, **options)
        try:
            return parse(answer)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AwsError(
                f"the Bunsui API's answer to {method} {path} is not what this CLI reads "
                f"({type(exc).__name__}: {exc}); is {self.where} deployed from this version "
                "of Bunsui?"
            ) from None

    def _send(
        self,
        base: str,
        method: str,
        path: str,
        query: Mapping[str, Any],
        body: Any,
        context: Mapping[str, Any],
    ) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        text = _query(query)
        url = base + path + (f"?{text}" if text else "")
        for attempt in range(TRIES):
            status, reason, answer = self._http(method, url, data)
            again = status in (429, 503) or (
                status in (502, 504) and method in ("GET", "HEAD", "DELETE")
            )
            if not again or attempt == TRIES - 1:
                break
            delay = min(BACKOFF_CAP, BACKOFF_SECONDS * 2**attempt)
            time.sleep(delay * random.uniform(0.5, 1.0))
        return self._result(base, method, path, status, reason, answer, context)

    def _http(self, method: str, url: str, data: bytes | None) -> tuple[int, str, Any]:
        """One signed exchange: status, reason and the body (JSON when it parses)."""
        headers = {"content-type": "application/json"} if data is not None else {}
        request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(self.access.credentials(), "execute-api", self.signing_region(url)).add_auth(
            request
        )
        prepared = urllib.request.Request(
            url, data=data, headers=dict(request.headers.items()), method=method
        )
        try:
            with urllib.request.urlopen(prepared, timeout=API_TIMEOUT_SECONDS) as answer:
                return answer.status, answer.reason, _parse(answer.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, str(exc.reason), _parse(exc.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, socket.timeout | TimeoutError):
                reason = f"no answer in {API_TIMEOUT_SECONDS:g}s"
            raise _Stale(
                AwsError(f"cannot reach the Bunsui API at {url.split('?')[0]}: {reason}")
            ) from None

    def _result(
        self,
        base: str,
        method: str,
        path: str,
        status: int,
        reason: str,
        answer: Any,
        context: Mapping[str, Any],
    ) -> Any:
        if 200 <= status < 300:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and 400 <= status < 500:
            raise rejected(error, status, context)
        said = _said(answer) or reason
        if status == 403:
            raise _Stale(
                AwsError(
                    f"access denied by the Bunsui API ({self.where}): {said}; the credentials "
                    f"of profile {self.access.profile} need execute-api:Invoke on it."
                )
            )
        if status == 404:
            raise _Stale(
                AwsError(
                    f"the Bunsui API at {base} has no route {method} {path}: is {self.where} "
                    "deployed from this version of Bunsui?"
                )
            )
        if status == 429:
            raise AwsError(
                f"the Bunsui API is throttling requests (429 {said}, tried {TRIES} times); "
                "try again in a moment."
            )
        if status >= 500:
            raise AwsError(
                f"the Bunsui API failed on {method} {path} ({status} {said}); its function's "
                "logs are in CloudWatch Logs."
            )
        raise AwsError(f"the Bunsui API answered {status} to {method} {path}: {said}")


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _said(answer: Any) -> str:
    """API Gateway's own message (``{"message": ...}``), or a short text body."""
    if isinstance(answer, dict):
        for key in ("message", "Message"):
            if isinstance(answer.get(key), str):
                return " ".join(answer[key].split())
        return ""
    return " ".join(str(answer or "").split())[:200]


class RemoteStore:
    """The reads the commands make of a store, over the API (and ``delete_pipeline``)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    # ------------------------------------------------------------------ sessions

    def get_session(self, session_id: str) -> Session:
        return self.api.read(
            "GET",
            _path("sessions", session_id),
            lambda data: session_from_dict(data["session"]),
            context={"session_id": session_id},
        )

    def sessions(
        self,
        pipeline: str | None = None,
        statuses: set[SessionStatus] | None = None,
        limit: int = 100,
    ) -> list[Session]:
        query = {
            "pipeline": pipeline,
            "status": ",".join(sorted(s.value for s in statuses)) if statuses else None,
            "limit": limit,
        }
        return self.api.read(
            "GET",
            "/sessions",
            lambda data: [session_from_dict(item) for item in data["sessions"]],
            query=query,
            context={"pipeline": pipeline},
        )

    def get_run(self, session_id: str, key: str) -> JobRun | None:
        try:
            return self.api.read(
                "GET",
                _path("sessions", session_id, "runs", key),
                lambda data: run_from_dict(data["run"]),
                context={"session_id": session_id},
            )
        except ApiRejected as exc:
            if exc.kind in ("RunNotFound", "NotFound", "NotFoundError"):
                return None
            raise

    def runs(
        self,
        session_id: str,
        statuses: set[JobStatus] | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[JobRun]:
        """Every run (page after page), ordered by job id then item index."""
        found: list[JobRun] = []
        token: str | None = None
        while True:
            page = RUNS_PAGE if limit is None else min(RUNS_PAGE, limit - len(found))
            query = {
                "job": job_id,
                "status": ",".join(sorted(s.value for s in statuses)) if statuses else None,
                "limit": page,
                "next": token,
            }
            runs, token = self.api.read(
                "GET",
                _path("sessions", session_id, "runs"),
                lambda data: ([run_from_dict(item) for item in data["runs"]], data.get("next")),
                query=query,
                context={"session_id": session_id},
            )
            found += runs
            if not token or (limit is not None and len(found) >= limit):
                return found

    def history(self, session_id: str, after: int = 0) -> list[tuple[int, HistoryEntry]]:
        found: list[tuple[int, HistoryEntry]] = []
        while True:
            page, more = self.api.read(
                "GET",
                _path("sessions", session_id, "history"),
                lambda data: (
                    [(int(seq), entry_from_dict(entry)) for seq, entry in data["entries"]],
                    bool(data.get("next")),
                ),
                query={"after": after},
                context={"session_id": session_id},
            )
            found += page
            if not page or not more:
                return found
            after = page[-1][0]

    # ------------------------------------------------------------------ pipelines

    def list_pipelines(self) -> list[tuple[str, int, str]]:
        return self.api.read(
            "GET",
            "/pipelines",
            lambda data: [
                (item["name"], int(item["version"]), item["created_at"])
                for item in data["pipelines"]
            ],
        )

    def get_pipeline_version(self, name: str, version: int | None = None) -> tuple[int, str]:
        return self.api.read(
            "GET",
            _path("pipelines", name),
            lambda data: (int(data["version"]), str(data["document"])),
            query={"version": version},
            context={"pipeline": name, "version": version},
        )

    def pipeline_versions(self, name: str) -> list[tuple[int, str]]:
        return self.api.read(
            "GET",
            _path("pipelines", name, "versions"),
            lambda data: [(int(item["version"]), item["created_at"]) for item in data["versions"]],
            context={"pipeline": name},
        )

    def delete_pipeline(self, name: str) -> None:
        self.api.call("DELETE", _path("pipelines", name), context={"pipeline": name})


class AwsBackend:
    """The commands' backend when ``backend`` is ``aws``: a deployed stack through its API.

    Nothing is asked of AWS until a command needs it.
    """

    remote = True

    def __init__(self, settings: AwsSettings, folder: Path) -> None:
        self.settings = settings
        self.access = AwsAccess(settings)
        self.api = ApiClient(self.access, settings, StackCache(folder))
        self.store = RemoteStore(self.api)
        self.logs = CloudWatchLogBook(self.access, self.store, self._job_type)
        self._pipelines: dict[tuple[str, int], Pipeline] = {}

    @property
    def where(self) -> str:
        return self.api.where

    # ------------------------------------------------------------------ pipelines

    def save_pipeline(self, path: Path) -> tuple[Pipeline, int]:
        """Check a pipeline file here (problems with their lines), then store it as a new
        version (the same text: the same version)."""
        pipeline = read_pipeline(path)
        text = path.read_text(encoding="utf-8")
        version = self.api.read(
            "POST",
            "/pipelines",
            lambda data: int(data["version"]),
            body={"document": text, "source": str(path)},
            context={"pipeline": pipeline.name},
        )
        return pipeline, version

    def pipeline(self, name: str, version: int | None = None) -> tuple[Pipeline, int]:
        """A stored pipeline version (the latest when None)."""
        if version is not None and (name, version) in self._pipelines:
            return self._pipelines[(name, version)], version
        number, text = self.store.get_pipeline_version(name, version)
        key = (name, number)
        if key not in self._pipelines:
            self._pipelines[key] = load_pipeline(text, f"{name} (version {number})")
        return self._pipelines[key], number

    def _job_type(self, session: Session, job_id: str) -> str:
        return str(self.pipeline(session.pipeline, session.version)[0].job(job_id).type)

    # ------------------------------------------------------------------ sessions

    def create_session(
        self,
        name: str,
        values: Mapping[str, Any] | None = None,
        text_values: Mapping[str, str] | None = None,
        *,
        template: Path | None = None,
        mapping: Path | None = None,
    ) -> Session:
        """Start a session of the latest version; the API checks the parameters (the
        ``name=value`` texts coerced by their declared types, as locally)."""
        if template is not None or mapping is not None:
            raise LocalOnly("--template and --local-map are for the local backend only.")
        return self.api.read(
            "POST",
            "/sessions",
            lambda data: session_from_dict(data["session"]),
            body={
                "pipeline": name,
                "parameters": dict(values or {}),
                "parameter_text": dict(text_values or {}),
            },
            context={"pipeline": name},
        )

    def request(self, session_id: str, kind: str, reason: str = "cancelled by user") -> str:
        """Ask the stack to cancel, pause or resume a session; it applies it shortly.

        Returns:
            ``"sent"``: the API accepted it (the session's status changes when the
            stack's reducer has applied it).
        """
        session = self.store.get_session(session_id)
        if session.status.terminal:
            raise Conflict(f"session '{session_id}' has ended ({session.status.value}).")
        body = {"reason": reason} if kind == "cancel" else {}
        self.api.call(
            "POST",
            _path("sessions", session_id, kind),
            body=body,
            context={"session_id": session_id},
        )
        return "sent"

    def retry(
        self,
        session_id: str,
        values: Mapping[str, Any] | None = None,
        text_values: Mapping[str, str] | None = None,
    ) -> Session:
        """Re-run a failed or cancelled session's failed, cancelled and skipped jobs, with
        changed parameter values (the API merges and checks them as locally)."""
        body: dict[str, Any] = {}
        if values:
            body["parameters"] = dict(values)
        if text_values:
            body["parameter_text"] = dict(text_values)
        return self.api.read(
            "POST",
            _path("sessions", session_id, "retry"),
            lambda data: session_from_dict(data["session"]),
            body=body,
            context={"session_id": session_id},
        )

    # ------------------------------------------------------------------ schedules

    def create_schedule(self, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """Store a schedule (``name``, ``pipeline``, ``cron``, ``timezone``, parameters)."""
        return self.api.read(
            "POST",
            "/schedules",
            lambda data: {**data, "name": data["name"]},
            body=dict(schedule),
            context={"pipeline": schedule["pipeline"]},
        )

    def list_schedules(self) -> list[dict[str, Any]]:
        return self.api.read("GET", "/schedules", lambda data: list(data["schedules"]))

    def delete_schedule(self, name: str) -> None:
        self.api.call("DELETE", _path("schedules", name))

    def driver_pid(self, session_id: str) -> int | None:
        """No process of this machine drives a session on AWS."""
        return None
