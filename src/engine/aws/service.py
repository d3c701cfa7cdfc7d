"""The Bunsui application on AWS: what the API, the reducer, the sweeper and the
scheduled start call.

One :class:`AwsEngine` per Lambda container, built outside the handler
(:meth:`AwsEngine.from_env`), assembles the adapters behind the engine's ports:
:class:`~engine.aws.store.DynamoStore` (history projected from the stream),
:class:`~engine.aws.dispatch.AwsDispatcher`, :class:`~engine.aws.timers.SchedulerTimers`,
:class:`~engine.aws.secrets.KmsSecrets` and :class:`~engine.aws.bus.BunsuiBus`.
It mirrors the local backend's application layer (:mod:`engine.local.backend`):
a session is created with parameters checked exactly as ``--parameters k=v``
are, and nothing runs until its ``Session Started`` event reaches the reducer.

Requests that change a running session (cancel, pause, resume, retry) are
events on the bus, so only the reducer, which has the rights to dispatch and
stop work, ever drives a session. A retry travels as ``Session Retry Requested``
(:data:`RETRY_REQUESTED`) with the new parameter values already checked and
their secrets put aside: the event itself holds ``******`` in their place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from engine.aws import keys
from engine.aws.bus import SOURCE, BunsuiBus, EventNotPut
from engine.aws.correlate import Correlator, Envelope, Ignored
from engine.aws.dispatch import AwsDispatcher, Throttled, error_line, is_throttling
from engine.aws.secrets import KmsSecrets
from engine.aws.settings import Clients, Settings
from engine.aws.store import DynamoStore, whole_run
from engine.aws.timers import SchedulerTimers
from engine.errors import (
    BunsuiError,
    Conflict,
    DispatchFailed,
    PipelineNotFound,
    SessionNotFound,
)
from engine.events import (
    CancelRequested,
    Event,
    PauseRequested,
    ResumeRequested,
    SessionStarted,
)
from engine.ports import Dispatch, Dispatcher, Secrets, Store, Timers
from engine.state import JobRun, JobStatus, Session, SessionStatus

if TYPE_CHECKING:
    # Imported where they are used: the pipeline language (its models, the YAML loader,
    # parameters) and the reducer are most of a cold import, and the history projector
    # never needs them.
    from engine.aws.schedules import Schedule, ScheduledSessions
    from engine.pipeline import Pipeline
    from engine.reducer import Reducer

RETRY_REQUESTED = "Session Retry Requested"
"""Bunsui's detail-type for a retry asked through the API; the reducer's rule takes it."""

SWEEP_GRACE_SECONDS = 300.0
"""How long a step may be in flight in a live reducer before the sweeper takes it over."""

SWEEP_LIMIT = 200
"""Live sessions one sweep looks at, at most."""

HISTORY_PAGE = 1000
"""History entries in one answer."""

LIVE = frozenset({SessionStatus.RUNNING, SessionStatus.PAUSED, SessionStatus.CANCELLING})


@functools.cache
def lambda_engine() -> AwsEngine:
    """The engine of this Lambda container: made on the first invocation, then kept
    (with its clients and its cache of parsed pipeline versions)."""
    return AwsEngine.from_env()


def utc_now() -> str:
    """The wall-clock time, ISO-8601 UTC, in whole seconds: the clock of the API and the
    sweeper. EventBridge's times are whole seconds, so a session created now is never
    later than its own ``Session Started`` (whose time the reducer goes by)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def new_session_id(now: str) -> str:
    """A new session id, as the local backend makes them: ``yyyymmdd-<12 hex>``."""
    return f"{now[:10].replace('-', '')}-{uuid.uuid4().hex[:12]}"


def scheduled_session_id(schedule: str, scheduled_time: str) -> str:
    """The id of the session a schedule starts at a time: the same for a repeated
    delivery of that one start, so it cannot start the session twice."""
    digest = hashlib.sha256(f"{schedule}|{scheduled_time}".encode()).hexdigest()[:12]
    return f"{scheduled_time[:10].replace('-', '')}-{digest}"


class PageTokenInvalid(BunsuiError):
    """A ``next`` token that is not one of this listing's."""


class RunNotFound(BunsuiError):
    """A session has no run with this key (yet)."""

    def __init__(self, session_id: str, key: str) -> None:
        self.session_id = session_id
        self.key = key
        super().__init__(f"session '{session_id}' has no job run '{key}'.")


@dataclass(frozen=True)
class SavedPipeline:
    """A pipeline document stored: ``created`` is False when it was the latest already."""

    name: str
    version: int
    jobs: int
    created: bool


@dataclass(frozen=True)
class PipelineDocument:
    name: str
    version: int
    document: str
    created_at: str


@dataclass(frozen=True)
class RunPage:
    """Runs in key order; ``next`` is the key to go on after (None: the last page)."""

    runs: list[JobRun]
    next: str | None


@dataclass(frozen=True)
class Handled:
    """What one EventBridge event did, for the handler's log and metrics.

    Attributes:
        kind: The event's detail-type.
        session_id / key: What it was about, when it was ours.
        ignored: Why nothing was done (not Bunsui's event, a duplicate...).
        durations: ``(job type, seconds)`` of each run that this event ended after
            it had started (a job, a fan-out or an item).
    """

    kind: str
    session_id: str | None = None
    key: str | None = None
    ignored: str | None = None
    durations: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Swept:
    """A session the sweeper looked at: what it did, or why it could not."""

    session_id: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None


def ended_session(record: Mapping[str, Any]) -> Session | None:
    """The session a DynamoDB stream record shows ending: its status turned terminal.

    Each end is one change of the session item, so it is seen in one record (a
    retried session that ends again is a new end).
    """
    change = record.get("dynamodb") or {}
    sk = (change.get("Keys") or {}).get("sk", {}).get("S")
    new, old = change.get("NewImage"), change.get("OldImage")
    if sk != keys.SESSION_SK or not new or not old:
        return None
    session = keys.session_from_item(new)
    if not session.status.terminal or keys.session_from_item(old).status.terminal:
        return None
    return session


@dataclass(frozen=True)
class RetryRequest:
    """A ``Session Retry Requested`` event, read: retry the session that ended at
    ``ended_at`` (a duplicate delivery after a later end does nothing)."""

    session_id: str
    now: str
    ended_at: str | None
    parameters: dict[str, Any] | None


def detail_type(raw: Any) -> str:
    """An EventBridge event's detail-type ("?" when it has none)."""
    kind = raw.get("detail-type") if isinstance(raw, Mapping) else None
    return kind if isinstance(kind, str) else "?"


class RetryRequestedDetail(BaseModel):
    """``Session Retry Requested``: the session, when it had ended (the retry is of that
    end only: a duplicate delivery after a later end does nothing), new parameters."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    session_id: StrictStr = Field(min_length=1)
    ended_at: StrictStr | None = None
    parameters: dict[str, Any] | None = None


class RetryRequestedEvent(Envelope):
    detail: RetryRequestedDetail


class CountingStore:
    """The store, noting for the reducer's metrics what its writes did, at no extra request.

    ``lost``: conditional writes that lost (a transition or an edge count that
    found the record otherwise than its caller saw it: a race, or a duplicate);
    ``ended``: the runs its transitions made terminal; ``session``: the session
    last read.
    """

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.lost = 0
        self.ended: list[JobRun] = []
        self.session: Session | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_session(self, session_id: str) -> Session:
        self.session = self.inner.get_session(session_id)
        return self.session

    def transition(self, *args: Any, **kwargs: Any) -> JobRun | None:
        run = self.inner.transition(*args, **kwargs)
        self.lost += run is None
        if run is not None and run.status.terminal:
            self.ended.append(run)
        return run

    def count_edge(self, *args: Any, **kwargs: Any) -> JobRun | None:
        run = self.inner.count_edge(*args, **kwargs)
        self.lost += run is None
        return run

    def take_lost(self) -> int:
        lost, self.lost = self.lost, 0
        return lost


class ThrottledDispatchFails:
    """A dispatcher whose throttled starts count as failed attempts.

    A start is made after its attempt is claimed: were the throttling raised
    (and the event delivered again), the claimed attempt would never be
    started, and the event's second delivery finds it claimed. As a failed
    attempt it retries by the job's own rules instead.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.inner = dispatcher

    def dispatch(self, order: Dispatch) -> str | None:
        try:
            return self.inner.dispatch(order)
        except Throttled as exc:
            raise DispatchFailed(f"{exc} (the service was busy; the attempt failed)") from exc

    def stop(self, run: JobRun, job_type: str) -> None:
        self.inner.stop(run, job_type)

    def started(self, run: JobRun, job_type: str) -> bool | None:
        return self.inner.started(run, job_type)


class AwsEngine:
    """The application: pipelines, sessions, schedules, and the reducer's entry points.

    Args:
        settings: The stack's resources.
        clients: The boto3 clients (one set per Lambda container).
        store / dispatcher / timers / bus / secrets: Adapters (tests pass their
            own); by default the stack's.
        clock: The wall clock of requests that bring no time of their own.
    """

    def __init__(
        self,
        settings: Settings,
        clients: Clients | None = None,
        *,
        store: Store | None = None,
        dispatcher: Dispatcher | None = None,
        timers: Timers | None = None,
        bus: BunsuiBus | None = None,
        secrets: Secrets | None = None,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.settings = settings
        self.clients = clients or Clients()
        base = store or DynamoStore(
            settings.table,
            self.clients.dynamodb,
            history="stream",
            history_days=settings.history_days,
        )
        self.store = CountingStore(base)
        self.bus = bus or BunsuiBus(settings, self.clients)
        self.secrets = secrets or KmsSecrets(settings, self.clients)
        self.clock = clock
        self.correlator = Correlator(self.clients, settings)
        self._pipelines: dict[tuple[str, int], Pipeline] = {}
        self._dispatcher = ThrottledDispatchFails(
            dispatcher or AwsDispatcher(settings, self.clients)
        )
        self._timers = timers or SchedulerTimers(settings, self.clients)

    @functools.cached_property
    def reducer(self) -> Reducer:
        """The reducer, made on first use (with its modules: see the imports above)."""
        from engine.reducer import Reducer

        return Reducer(self.store, self._dispatcher, self._timers, self._pinned, self.secrets)

    @functools.cached_property
    def schedules(self) -> ScheduledSessions:
        """Scheduled sessions, made on first use (the API's alone)."""
        from engine.aws.schedules import ScheduledSessions

        return ScheduledSessions(self.settings, self.clients)

    @classmethod
    def from_env(cls) -> AwsEngine:
        """The engine of a Lambda function, from its environment (template.yaml sets it)."""
        return cls(Settings.from_env(), Clients())

    # ------------------------------------------------------------------ pipelines

    def create_pipeline(self, document: str, source: str | None = None) -> SavedPipeline:
        """Validate a pipeline document and store it as a new version (the same text as
        the latest version: that version, ``created`` False).

        Raises:
            PipelineInvalid: every problem of the document, located.
        """
        from engine.loader import load_pipeline

        pipeline = load_pipeline(document, source or "<request>")
        checksum = hashlib.sha256(document.encode()).hexdigest()
        before = self._latest_version(pipeline.name)
        version = self.store.put_pipeline_version(pipeline.name, document, checksum, self.clock())
        return SavedPipeline(pipeline.name, version, len(pipeline.jobs), version != before)

    def _latest_version(self, name: str) -> int | None:
        """The latest version's number (its document left unread), None for none."""
        try:
            versions = self.store.pipeline_versions(name)
        except PipelineNotFound:
            return None
        return max((version for version, _ in versions), default=None)

    def pipelines(self) -> list[tuple[str, int, str]]:
        """``(name, latest version, created_at)`` of every pipeline, by name."""
        return self.store.list_pipelines()

    def pipeline_document(self, name: str, version: int | None = None) -> PipelineDocument:
        """A stored version's text (the latest when None).

        Raises:
            PipelineNotFound: no such pipeline or version.
        """
        number, document = self.store.get_pipeline_version(name, version)
        try:
            created = dict(self.store.pipeline_versions(name))
        except PipelineNotFound:  # deleted: its versions stay readable by number
            created = {}
        return PipelineDocument(name, number, document, created.get(number, ""))

    def pipeline_versions(self, name: str) -> list[tuple[int, str]]:
        return self.store.pipeline_versions(name)

    def delete_pipeline(self, name: str) -> None:
        self.store.delete_pipeline(name)

    def pipeline(self, name: str, version: int | None = None) -> tuple[Pipeline, int]:
        """A stored pipeline version, parsed once per container (versions never change)."""
        if version is not None and (name, version) in self._pipelines:
            return self._pipelines[(name, version)], version
        number, text = self.store.get_pipeline_version(name, version)
        if (name, number) not in self._pipelines:
            from engine.loader import load_pipeline

            self._pipelines[(name, number)] = load_pipeline(text, f"{name} (version {number})")
        return self._pipelines[(name, number)], number

    def _pinned(self, name: str, version: int) -> Pipeline:
        return self.pipeline(name, version)[0]

    # ------------------------------------------------------------------ sessions

    def start_session(
        self,
        name: str,
        values: Mapping[str, Any] | None = None,
        text_values: Mapping[str, str] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Check the parameters, write a new session of the latest version and put
        ``Session Started`` on the bus (the reducer starts its first jobs).

        Args:
            name: The pipeline.
            values: Typed parameter values (an API body).
            text_values: ``name=value`` texts, coerced by the declared types as the
                CLI's ``--parameters`` are; they win over ``values``.
            session_id: The id (a scheduled start derives its own); new when None.

        Raises:
            PipelineNotFound: no such pipeline.
            ParameterInvalid: the first unknown, missing or invalid parameter.
        """
        from engine.parameters import resolve_parameters

        pipeline, version = self.pipeline(name)
        parameters = resolve_parameters(pipeline.parameters, values, text_values)
        now = self.clock()
        try:
            session = self.reducer.create(
                pipeline, version, parameters, session_id or new_session_id(now), now
            )
        except Conflict:
            if session_id is None:
                raise
            # The same start delivered again (a scheduled start's retry): the first may
            # have died before announcing it; a second Session Started changes nothing.
            session = self.store.get_session(session_id)
        self.bus.put(SessionStarted(session.id, now))
        return session

    def session(self, session_id: str) -> Session:
        return self.store.get_session(session_id)

    def sessions(
        self,
        pipeline: str | None = None,
        statuses: set[SessionStatus] | None = None,
        limit: int = 100,
    ) -> list[Session]:
        return self.store.sessions(pipeline, statuses, limit)

    def run(self, session_id: str, key: str) -> JobRun:
        """One run of a session.

        Raises:
            SessionNotFound: no such session.
            RunNotFound: it has no such run.
        """
        found = self.store.get_run(session_id, key)
        if found is None:
            self.store.get_session(session_id)
            raise RunNotFound(session_id, key)
        return found

    def runs(
        self,
        session_id: str,
        job_id: str | None = None,
        statuses: set[JobStatus] | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> RunPage:
        """A page of a session's runs in key order, after the run ``after``.

        Raises:
            SessionNotFound: no such session.
        """
        self.store.get_session(session_id)
        try:
            return run_page(
                self.clients.dynamodb,
                self.settings.table,
                session_id,
                job_id,
                statuses,
                limit,
                after,
            )
        except ClientError as exc:
            if keys.error_code(exc) != "ValidationException" or after is None:
                raise
            raise PageTokenInvalid(f"next '{after}' is not a run of this listing.") from exc

    def history(
        self, session_id: str, after: int = 0, limit: int = HISTORY_PAGE
    ) -> tuple[list[tuple[int, Any]], bool]:
        """History entries after number ``after``, and whether more follow.

        Raises:
            SessionNotFound: no such session.
        """
        self.store.get_session(session_id)
        entries = self.store.history(session_id, after)
        return entries[:limit], len(entries) > limit

    def request(self, session_id: str, kind: str, reason: str = "cancelled by user") -> Session:
        """Ask the reducer to cancel, pause or resume a session (it applies it shortly).

        Raises:
            SessionNotFound: no such session.
            Conflict: the session has ended.
        """
        session = self.store.get_session(session_id)
        if session.status.terminal:
            raise Conflict(f"session '{session_id}' has ended ({session.status.value}).")
        now = self.clock()
        event: Event
        if kind == "cancel":
            event = CancelRequested(session_id, now, reason or "cancelled by user")
        elif kind == "pause":
            event = PauseRequested(session_id, now)
        elif kind == "resume":
            event = ResumeRequested(session_id, now)
        else:
            raise ValueError(kind)
        self.bus.put(event)
        return session

    def retry(
        self,
        session_id: str,
        values: Mapping[str, Any] | None = None,
        text_values: Mapping[str, str] | None = None,
    ) -> Session:
        """Ask the reducer to re-run a failed or cancelled session's failed, cancelled and
        skipped jobs; new parameter values are merged over the session's and checked.

        Raises:
            SessionNotFound: no such session.
            Conflict: it is not failed or cancelled.
            ParameterInvalid: a new value is invalid.
        """
        session = self.store.get_session(session_id)
        if session.status not in (SessionStatus.FAILED, SessionStatus.CANCELLED):
            raise Conflict(
                f"session '{session_id}' is {session.status.value}; only a failed or "
                "cancelled session can be retried."
            )
        parameters = None
        if values or text_values:
            pipeline = self._pinned(session.pipeline, session.version)
            parameters = self._checked(session, pipeline, values or {}, text_values or {})
        detail = {
            "session_id": session_id,
            "ended_at": session.ended_at,
            "parameters": parameters,
        }
        put_detail(self.clients.events, self.settings.bus, RETRY_REQUESTED, detail)
        return session

    def _checked(
        self,
        session: Session,
        pipeline: Pipeline,
        values: Mapping[str, Any],
        text_values: Mapping[str, str],
    ) -> dict[str, Any]:
        """The session's parameters with new values merged and checked, secrets put aside.

        A secret kept from before (``******`` in the session) is not checked again:
        its value is not here, and it was checked when it was given.
        """
        from engine.parameters import REDACTED, redacted, resolve_parameters

        given = {*values, *text_values}
        kept = {
            p.name
            for p in pipeline.parameters
            if p.secret and p.name not in given and session.parameters.get(p.name) == REDACTED
        }
        declared = [p for p in pipeline.parameters if p.name not in kept]
        # A null is a value the session was not given: not given again, it stays null.
        merged = {k: v for k, v in session.parameters.items() if k not in kept and v is not None}
        checked = resolve_parameters(declared, {**merged, **values}, text_values)
        hidden = {
            p.name: checked[p.name]
            for p in pipeline.parameters
            if p.secret and p.name in checked and checked[p.name] != REDACTED
        }
        if hidden:
            self.secrets.put(session.id, hidden)
        return {**redacted(pipeline.parameters, checked), **dict.fromkeys(kept, REDACTED)}

    # ------------------------------------------------------------------ schedules

    def create_schedule(self, schedule: Schedule) -> Schedule:
        """A recurring start of a pipeline; the parameters are checked now (and again at
        each start, against the version then latest).

        Raises:
            PipelineNotFound / ParameterInvalid: as for a start.
            Conflict: a schedule has this name.
            ScheduleInvalid: Scheduler refused the expression or time zone.
        """
        from engine.parameters import resolve_parameters

        pipeline, _ = self.pipeline(schedule.pipeline)
        resolve_parameters(pipeline.parameters, schedule.parameters, schedule.parameter_text)
        return self.schedules.create(schedule, [p.name for p in pipeline.parameters if p.secret])

    def list_schedules(self) -> list[Schedule]:
        return self.schedules.list()

    def delete_schedule(self, name: str) -> None:
        self.schedules.delete(name)

    # ------------------------------------------------------------------ the reducer

    def handle(self, raw: Any) -> Handled:
        """Apply one EventBridge event: :meth:`read`, then :meth:`apply`."""
        return self.apply(detail_type(raw), self.read(raw))

    def read(self, raw: Any) -> Event | RetryRequest | Ignored:
        """What an EventBridge event asks of the reducer (no write).

        Returns:
            An engine event, a retry, or why the event is not for the reducer (not
            Bunsui's, malformed).

        Raises:
            Throttled: AWS asked to slow down (deliver the event again later).
            CorrelationFailed: a lookup the event needs was refused (the same).
        """
        if isinstance(raw, Mapping) and (raw.get("source"), detail_type(raw)) == (
            SOURCE,
            RETRY_REQUESTED,
        ):
            try:
                event = RetryRequestedEvent.model_validate(raw)
            except ValidationError as exc:
                return Ignored(f"malformed {RETRY_REQUESTED} event: {exc.error_count()} problems")
            detail = event.detail
            now = event.time.astimezone(UTC).isoformat()
            return RetryRequest(detail.session_id, now, detail.ended_at, detail.parameters)
        return self.correlator.read(raw)

    def apply(self, kind: str, found: Event | RetryRequest | Ignored) -> Handled:
        """Have the reducer apply what :meth:`read` found.

        Returns:
            What was done; an event about a session that does not exist (or a retry
            of a session that is no longer the failed one it was) is ignored.

        Raises:
            Throttled: AWS asked to slow down (deliver the event again later).
        """
        self.store.ended.clear()
        if isinstance(found, Ignored):
            return Handled(kind, ignored=found.reason)
        if isinstance(found, RetryRequest):
            return self._retry_requested(kind, found)
        key = getattr(found, "key", None)
        try:
            applied = self.reducer.handle(found)
        except SessionNotFound:
            return Handled(kind, found.session_id, key, ignored="no such session")
        if not applied:
            return Handled(kind, found.session_id, key, ignored="the session has ended")
        return Handled(kind, found.session_id, key, durations=self._durations())

    def _durations(self) -> tuple[tuple[str, float], ...]:
        """How long the runs the last event ended had run, by job type (from what the
        reducer wrote and read anyway: no request of its own)."""
        session = self.store.session
        if session is None:
            return ()
        pipeline = self._pinned(session.pipeline, session.version)
        found = []
        for run in self.store.ended:
            if run.started_at and run.ended_at:
                started = datetime.fromisoformat(run.started_at)
                seconds = (datetime.fromisoformat(run.ended_at) - started).total_seconds()
                found.append((str(pipeline.job(run.job_id).type), seconds))
        return tuple(found)

    def _retry_requested(self, kind: str, request: RetryRequest) -> Handled:
        try:
            session = self.store.get_session(request.session_id)
        except SessionNotFound:
            return Handled(kind, request.session_id, ignored="no such session")
        if session.ended_at != request.ended_at:
            return Handled(kind, session.id, ignored="retried already")
        try:
            self.reducer.retry(session.id, request.now, request.parameters)
        except Conflict as exc:
            return Handled(kind, session.id, ignored=str(exc))
        return Handled(kind, session.id)

    def take_conflicts(self) -> int:
        """Conditional writes lost since the last call (the reducer's conflicts metric)."""
        return self.store.take_lost()

    # ------------------------------------------------------------------ the sweeper

    def sweep(
        self,
        limit: int = SWEEP_LIMIT,
        grace_seconds: float = SWEEP_GRACE_SECONDS,
        time_left: Callable[[], bool] = lambda: True,
    ) -> list[Swept]:
        """Drive on live sessions a reducer left half-done, oldest first.

        Args:
            limit: Sessions looked at, at most.
            grace_seconds: See :meth:`engine.recovery.Recovery.sweep`.
            time_left: Whether there is time for one more session.

        Returns:
            The sessions swept, with what was done to each.
        """
        live = self.store.sessions(statuses=set(LIVE), limit=limit)
        swept: list[Swept] = []
        for session in sorted(live, key=lambda s: (s.created_at or "", s.id)):
            if not time_left():
                break
            self.store.ended.clear()
            try:
                actions = self.reducer.sweep(session.id, self.clock(), grace_seconds)
            except Exception as exc:  # one session's trouble must not keep the others waiting
                swept.append(Swept(session.id, error=f"{type(exc).__name__}: {exc}"))
                continue
            swept.append(Swept(session.id, actions))
        return swept


def put_detail(events: Any, bus: str, detail_type: str, detail: Mapping[str, Any]) -> None:
    """Put one of Bunsui's detail-types on its bus.

    Raises:
        Throttled: EventBridge asked to slow down.
        EventNotPut: EventBridge refused it.
    """
    entry = {
        "Source": SOURCE,
        "DetailType": detail_type,
        "Detail": json.dumps(detail, ensure_ascii=False),
        "EventBusName": bus,
    }
    try:
        answer = events.put_events(Entries=[entry])
    except ClientError as exc:
        if is_throttling(exc):
            raise Throttled(f"EventBridge PutEvents of {detail_type}: {error_line(exc)}") from exc
        raise EventNotPut(f"EventBridge PutEvents of {detail_type}: {error_line(exc)}") from exc
    if answer.get("FailedEntryCount", 0):
        failed = next((e for e in answer.get("Entries", []) if e.get("ErrorCode")), {})
        text = f"{failed.get('ErrorCode', 'unknown')}: {failed.get('ErrorMessage', '')}"
        raise EventNotPut(f"EventBridge refused {detail_type} ({text})")


def run_page(
    client: Any,
    table: str,
    session_id: str,
    job_id: str | None,
    statuses: set[JobStatus] | None,
    limit: int,
    after: str | None,
) -> RunPage:
    """A page of a session's runs: one Query (page after page of DynamoDB's 1 MB until
    ``limit`` runs are found), starting after the run ``after``."""
    request = keys.Expression()
    prefix = keys.RUN_PREFIX if job_id is None else keys.job_prefix(job_id)
    condition = request.equals("pk", keys.s(keys.session_pk(session_id)))
    condition += f" AND begins_with({request.name('sk')}, {request.value(keys.s(prefix))})"
    params: dict[str, Any] = {"KeyConditionExpression": condition, "ConsistentRead": True}
    if statuses is not None:
        params["FilterExpression"] = request.one_of("status", sorted(s.value for s in statuses))
    params.update(request.placeholders())
    if after is not None:
        params["ExclusiveStartKey"] = keys.key_of(keys.session_pk(session_id), keys.run_sk(after))
    found: list[JobRun] = []
    while len(found) < limit:
        page = client.query(TableName=table, Limit=max(limit - len(found), 1), **params)
        found += [whole_run(client, table, item) for item in page.get("Items", [])]
        start = page.get("LastEvaluatedKey")
        if not start:
            return RunPage(found[:limit], None)
        params["ExclusiveStartKey"] = start
    return RunPage(found[:limit], found[limit - 1].key)
