"""The store port on SQLite: sessions, job runs, history and pipeline versions.

One row per session and one per job run, as on DynamoDB. Every write the
reducer relies on is either one conditional statement or one ``BEGIN
IMMEDIATE`` transaction, so two threads of one process, or two processes on
one file, cannot both win a race (see :mod:`engine.ports`). WAL mode lets
readers (``bunsui logs``, the CLI's status) run beside the writer.

The schema is :data:`_SCHEMA` (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`):
a row per session (whose ``running`` column is the session's slot counter),
a row per run, a run's ``parents_done`` as rows of ``edges`` (so counting an
edge is an ``INSERT OR IGNORE`` on its primary key), fan-out slot counters,
history with an AUTOINCREMENT sequence number, and pipeline versions.

Outside a :meth:`SqliteStore.batch` each call commits on its own. Inside one,
every call of the thread joins a single ``BEGIN IMMEDIATE`` transaction (a
call of several statements in a SAVEPOINT of its own), so many events cost
one commit; the local driver uses it to make each batch of transitions
durable before anything they cause starts.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.errors import Conflict, OutputTooLarge, SessionNotFound
from engine.events import HistoryEntry
from engine.local.versions import PipelineVersions
from engine.state import TERMINAL_JOB, JobRun, JobStatus, Outcome, Session, SessionStatus

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema this module writes; a later one migrates from it."""

MAX_OUTPUT_BYTES = 256 * 1024
"""The largest output (its UTF-8 JSON) a run may keep inline."""

BUSY_TIMEOUT_MS = 5000
"""How long a writer waits for another one (thread or process) before giving up."""

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, version INTEGER NOT NULL,
        parameters TEXT NOT NULL, status TEXT NOT NULL,
        total INTEGER NOT NULL DEFAULT 0, finished INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0, running INTEGER NOT NULL DEFAULT 0,
        created_at TEXT, ended_at TEXT, reason TEXT)""",
    """CREATE TABLE IF NOT EXISTS runs (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        key TEXT NOT NULL, job_id TEXT NOT NULL, idx INTEGER, status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0, base_attempt INTEGER NOT NULL DEFAULT 0,
        expected INTEGER NOT NULL DEFAULT 0,
        done INTEGER NOT NULL DEFAULT 0,
        item TEXT, inputs TEXT, output TEXT, error TEXT, handle TEXT,
        started_at TEXT, ended_at TEXT, updated_at TEXT, reason TEXT,
        PRIMARY KEY (session_id, key)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (session_id, status, key)",
    "CREATE INDEX IF NOT EXISTS runs_by_job ON runs (session_id, job_id, key)",
    """CREATE TABLE IF NOT EXISTS edges (
        session_id TEXT NOT NULL, key TEXT NOT NULL, edge TEXT NOT NULL, outcome TEXT NOT NULL,
        PRIMARY KEY (session_id, key, edge),
        FOREIGN KEY (session_id, key) REFERENCES runs (session_id, key) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS slots (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        scope TEXT NOT NULL, held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
        PRIMARY KEY (session_id, scope)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS history (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        at TEXT NOT NULL, kind TEXT NOT NULL, key TEXT, attempt INTEGER, detail TEXT)""",
    "CREATE INDEX IF NOT EXISTS history_by_session ON history (session_id, seq)",
    """CREATE TABLE IF NOT EXISTS pipelines (
        name TEXT PRIMARY KEY, deleted INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS pipeline_versions (
        name TEXT NOT NULL REFERENCES pipelines (name), version INTEGER NOT NULL,
        document TEXT NOT NULL, checksum TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (name, version))""",
]


def _same(value: Any) -> Any:
    return value


_encode = json.JSONEncoder(ensure_ascii=False).encode
"""``json.dumps(value, ensure_ascii=False)`` without building an encoder for each call."""

_decode = json.JSONDecoder().raw_decode
"""``json.loads`` for the text this module wrote (no whitespace around it), at a third of the
cost for the small documents most columns hold."""


def _dumps(value: Any) -> str | None:
    """A JSON column's text; None stays SQL NULL."""
    return None if value is None else _encode(value)


def _loads(text: str | None) -> Any:
    return None if text is None else _decode(text)[0]


def _output(value: Any) -> str | None:
    """The output column's text, refusing what is too large to keep inline."""
    text = _dumps(value)
    if text is not None:
        size = len(text.encode("utf-8"))
        if size > MAX_OUTPUT_BYTES:
            raise OutputTooLarge(
                f"output is {size} bytes of JSON; the limit is {MAX_OUTPUT_BYTES} bytes: "
                "write large results to storage (S3) and return their location."
            )
    return text


def _job_status(value: Any) -> str:
    # A dict lookup first: a member and its text hash alike, and this runs for every write.
    try:
        return _JOB_STATUS_TEXTS[value]
    except (KeyError, TypeError):
        return JobStatus(value).value  # the text of a member, or ValueError


def _session_status(value: Any) -> str:
    return SessionStatus(value).value


_JOB_STATUS_TEXTS: dict[Any, str] = {status: status.value for status in JobStatus}


def _mapping(value: Mapping[str, Any]) -> str | None:
    return _dumps(dict(value))


_Column = tuple[str, Callable[[Any], Any], Callable[[Any], Any]]
"""A record field's column, its encoder (field -> column) and decoder (column -> field)."""


def _plain(column: str) -> _Column:
    return (column, _same, _same)


# Record field -> column. Column names in SQL come only from these tables, never
# from a caller.
_RUN_COLUMNS: dict[str, _Column] = {
    "session_id": _plain("session_id"),
    "key": _plain("key"),
    "job_id": _plain("job_id"),
    "index": _plain("idx"),
    "status": ("status", _job_status, JobStatus),
    "attempt": ("attempt", int, _same),
    "base_attempt": ("base_attempt", int, _same),
    "expected": ("expected", int, _same),
    "done": ("done", int, _same),
    "item": ("item", _dumps, _loads),
    "inputs": ("inputs", _dumps, _loads),
    "output": ("output", _output, _loads),
    **{name: _plain(name) for name in ("error", "handle", "started_at", "ended_at")},
    **{name: _plain(name) for name in ("updated_at", "reason")},
}

_SESSION_COLUMNS: dict[str, _Column] = {
    "id": _plain("id"),
    "pipeline": _plain("pipeline"),
    "version": ("version", int, _same),
    "parameters": ("parameters", _mapping, _loads),
    "status": ("status", _session_status, SessionStatus),
    **{name: (name, int, _same) for name in ("total", "finished", "failed", "running")},
    **{name: _plain(name) for name in ("created_at", "ended_at", "reason")},
}


def _marks(count: int) -> str:
    return ", ".join("?" * count)


_HISTORY = ("session_id", "at", "kind", "key", "attempt")
"""The plain columns of ``history``, in :class:`HistoryEntry` field order (``detail`` is JSON)."""


def _insert(table: str, columns: Mapping[str, _Column], verb: str = "INSERT") -> str:
    names = ", ".join(column for column, _, _ in columns.values())
    return f"{verb} INTO {table} ({names}) VALUES ({_marks(len(columns))})"


def _values(record: Any, columns: Mapping[str, _Column]) -> list[Any]:
    return [encode(getattr(record, name)) for name, (_, encode, _) in columns.items()]


_RUN_SELECT = ", ".join(column for column, _, _ in _RUN_COLUMNS.values())
"""The columns of a run, in :data:`_RUN_COLUMNS` order (what :func:`_run` unpacks)."""

_SESSION_SELECT = ", ".join(column for column, _, _ in _SESSION_COLUMNS.values())
"""The columns of a session, in :data:`_SESSION_COLUMNS` order (what :func:`_session` unpacks)."""

_EDGES = (
    "(SELECT json_group_object(edge, outcome) FROM edges"
    " WHERE edges.session_id = runs.session_id AND edges.key = runs.key)"
)
"""A run's counted edges as one JSON object, read in the statement that reads the run: one
statement is one snapshot, so the run and its edges agree without a read transaction."""

_RUN_WITH_EDGES = f"{_RUN_SELECT}, CASE WHEN done > 0 THEN {_EDGES} END"
"""A run and its edges (most runs, roots and items, have none to read)."""

_RUN_WITH_LAST_EDGES = f"{_RUN_SELECT}, CASE WHEN done >= expected THEN {_EDGES} END"
"""A run, with its edges only once the last is counted (an edge count stays O(1))."""

_INSERT_RUN = _insert("runs", _RUN_COLUMNS, "INSERT OR IGNORE")
_DONE = list(_RUN_COLUMNS).index("done")
_INSERT_SESSION = _insert("sessions", _SESSION_COLUMNS)
_INSERT_HISTORY = (
    f"INSERT INTO history ({', '.join(_HISTORY)}, detail) VALUES ({_marks(len(_HISTORY) + 1)})"
)
_GET_RUN = f"SELECT {_RUN_WITH_EDGES} FROM runs WHERE session_id = ? AND key = ?"
_GET_SESSION = f"SELECT {_SESSION_SELECT} FROM sessions WHERE id = ?"

_JOB_STATUSES = {status.value: status for status in JobStatus}
_SESSION_STATUSES = {status.value: status for status in SessionStatus}
_OUTCOMES = {outcome.value: outcome for outcome in Outcome}


_RUN_IDENTITY = {"session_id", "key"}


def _statuses(expect: set[JobStatus]) -> list[str]:
    """The statuses' texts in one order (so one statement text per set)."""
    return sorted(_job_status(s) for s in expect)


def _encoded(
    changes: Mapping[str, Any], columns: Mapping[str, _Column], fixed: set[str], what: str
) -> list[Any]:
    """The encoded values of ``changes``; ValueError on a field not to change."""
    values: list[Any] = []
    for name, value in changes.items():
        column = columns.get(name)
        if column is None or name in fixed:
            raise ValueError(f"a {what}'s '{name}' cannot be changed this way.")
        values.append(column[1](value))
    return values


def _assignments(
    changes: Mapping[str, Any], columns: Mapping[str, _Column], fixed: set[str], what: str
) -> tuple[list[str], list[Any]]:
    """``column = ?`` clauses and their encoded values; ValueError on a field not to change."""
    values = _encoded(changes, columns, fixed, what)
    return [f"{columns[name][0]} = ?" for name in changes], values


@contextmanager
def _known_session(session_id: str) -> Iterator[None]:
    """Turn the foreign key's refusal of a record of an unknown session into SessionNotFound."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "FOREIGN KEY" in str(exc):
            raise SessionNotFound(session_id) from exc
        raise


def _session(row: Sequence[Any]) -> Session:
    """A session from its :data:`_SESSION_SELECT` columns (decoded as
    :data:`_SESSION_COLUMNS` says, spelled out: this runs for every event)."""
    (id_, pipeline, version, parameters, status, total, finished, failed, running) = row[:9]
    created_at, ended_at, reason = row[9:12]
    return Session(
        id=id_,
        pipeline=pipeline,
        version=version,
        parameters=_loads(parameters),
        status=_SESSION_STATUSES[status],
        total=total,
        finished=finished,
        failed=failed,
        running=running,
        created_at=created_at,
        ended_at=ended_at,
        reason=reason,
    )


def _run(row: Sequence[Any]) -> JobRun:
    """A run from its :data:`_RUN_SELECT` columns and the JSON object of its edges after them
    (decoded as :data:`_RUN_COLUMNS` says, spelled out: a run is read several times per
    event)."""
    (session_id, key, job_id, index, status, attempt, base_attempt, expected, done) = row[:9]
    item, inputs, output, error, handle, started_at, ended_at, updated_at, reason = row[9:18]
    edges = {} if row[18] is None else _decode(row[18])[0]
    return JobRun(
        session_id=session_id,
        key=key,
        job_id=job_id,
        index=index,
        status=_JOB_STATUSES[status],
        attempt=attempt,
        base_attempt=base_attempt,
        parents_done={edge: _OUTCOMES[outcome] for edge, outcome in edges.items()},
        expected=expected,
        done=done,
        item=None if item is None else _decode(item)[0],
        inputs=None if inputs is None else _decode(inputs)[0],
        output=None if output is None else _decode(output)[0],
        error=error,
        handle=handle,
        started_at=started_at,
        ended_at=ended_at,
        updated_at=updated_at,
        reason=reason,
    )


@lru_cache(maxsize=256)
def _transition_sql(fields: tuple[str, ...], wanted: int, with_attempt: bool, edges: bool) -> str:
    """The conditional UPDATE of :meth:`SqliteStore.transition` for one shape of change
    (built once per shape: the reducer makes a handful)."""
    clauses = [f"{_RUN_COLUMNS[name][0]} = ?" for name in fields] or ["status = status"]
    sql = (
        f"UPDATE runs SET {', '.join(clauses)}"
        f" WHERE session_id = ? AND key = ? AND status IN ({_marks(wanted)})"
    )
    if with_attempt:
        sql += " AND attempt = ?"
    # New edges are written after the UPDATE, so the run is read again then.
    return sql if edges else f"{sql} RETURNING {_RUN_WITH_EDGES}"


class _Batch:
    """The open transaction of a :meth:`SqliteStore.batch` (one per thread)."""

    __slots__ = ("conn", "savepoints")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.savepoints = 0


class _Locked:
    """The one connection of a ``":memory:"`` store, held under its lock (reentrant)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        store._lock.acquire()
        if store._shared is None:
            store._shared = store._open()
        return store._shared

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._store._lock.release()


class SqliteStore(PipelineVersions):
    """The :class:`engine.ports.Store` port (and pipeline versions) on one SQLite database.

    Safe for many threads: a file database gives each thread its own
    connection; ``":memory:"`` (tests) has a single connection behind a lock,
    since each connection to ``":memory:"`` would be a separate database.
    Several processes may share one file; SQLite's locks serialize their writes.

    Args:
        path: The database file (created with its schema if absent), or ``":memory:"``.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._memory = self._path == ":memory:"
        self._lock = threading.RLock()
        self._local = threading.local()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._shared: sqlite3.Connection | None = None
        # IMMEDIATE: two processes opening a new file at once create the schema once.
        with self._write() as conn:
            self._migrate(conn)

    # -- connections and transactions ------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            check_same_thread=False,  # so close() may close other threads' connections
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not self._memory and conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        """The calling thread's connection (inside a batch: in its open transaction)."""
        if self._memory:
            return _Locked(self)
        held: nullcontext[sqlite3.Connection] | None = getattr(self._local, "held", None)
        if held is None:
            conn = self._open()
            with self._lock:
                # Connections of threads that have ended are closed here, not leaked.
                for thread in [t for t in self._connections if not t.is_alive()]:
                    self._connections.pop(thread).close()
                self._connections[threading.current_thread()] = conn
            held = self._local.held = nullcontext(conn)
        return held

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[sqlite3.Connection]:
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is not None:
            if mode == "DEFERRED":
                yield batch.conn  # the batch's transaction is already one snapshot
            else:
                yield from self._savepoint(batch)
            return
        with self._connection() as conn:
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _savepoint(batch: _Batch) -> Iterator[sqlite3.Connection]:
        """A write of several statements inside a batch: if it fails, it alone is undone."""
        conn = batch.conn
        name = f"w{batch.savepoints}"
        batch.savepoints += 1
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        finally:
            batch.savepoints -= 1
        conn.execute(f"RELEASE {name}")

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction: IMMEDIATE takes the write lock at BEGIN, so the
        reads inside it cannot be invalidated by another writer before COMMIT."""
        return self._transaction("IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several SELECTs."""
        return self._transaction("DEFERRED")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make the calling thread's store calls one transaction: one commit for all.

        Opens ``BEGIN IMMEDIATE`` (the write lock, for the whole batch: keep it
        short, other writers wait up to :data:`BUSY_TIMEOUT_MS`); each call of the
        thread runs in it, a write of several statements in a SAVEPOINT, so a call
        that fails still changes nothing and its caller may go on. Commits when the
        block ends; if an exception leaves it, rolls everything back and re-raises:
        then no call of the batch happened. Other threads' calls are not part of it
        (on a file they wait for the lock; on ``":memory:"`` for the connection).
        A batch inside a batch is part of the outer one.
        """
        if getattr(self._local, "batch", None) is not None:
            yield
            return
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            self._local.batch = _Batch(conn)
            try:
                yield
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT may have ended it
                    conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                self._local.batch = None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION` (later versions add steps here)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self._path} has schema version {version}; this Bunsui knows up to "
                f"{SCHEMA_VERSION}. Upgrade Bunsui to open it."
            )
        if version < 1:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        try:  # the statements here use RETURNING (SQLite 3.35) and the JSON functions
            conn.execute("UPDATE sessions SET id = id WHERE 0 RETURNING json_object('a', 1)")
        except sqlite3.OperationalError as exc:
            raise RuntimeError(
                f"this Python's SQLite ({sqlite3.sqlite_version}) lacks RETURNING or the "
                "JSON functions; Bunsui needs SQLite 3.35 or later, with JSON."
            ) from exc

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._lock:
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()
            if self._shared is not None:
                self._shared.close()
                self._shared = None
        self._local = threading.local()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sessions -------------------------------------------------------------------

    def create_session(self, session: Session) -> None:
        """Write a new session.

        Raises:
            Conflict: a session with this id exists.
        """
        try:
            with self._connection() as conn:
                conn.execute(_INSERT_SESSION, _values(session, _SESSION_COLUMNS))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            raise Conflict(f"session '{session.id}' already exists.") from exc

    def get_session(self, session_id: str) -> Session:
        """The session.

        Raises:
            SessionNotFound: no session has this id.
        """
        with self._connection() as conn:
            return self._get_session(conn, session_id)

    def session_status(self, session_id: str) -> SessionStatus:
        """The session's status alone (what a driver asks after every batch).

        Raises:
            SessionNotFound: no session has this id.
        """
        with self._connection() as conn:
            row = conn.execute("SELECT status FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        return _SESSION_STATUSES[row[0]]

    @staticmethod
    def _get_session(conn: sqlite3.Connection, session_id: str) -> Session:
        row = conn.execute(_GET_SESSION, (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        return _session(row)

    def _updated_session(self, sql: str, params: Sequence[Any], session_id: str) -> Session:
        """Run one ``UPDATE sessions ... RETURNING`` (atomic by itself); the session it wrote.

        Raises:
            SessionNotFound: it matched no session.
        """
        with self._connection() as conn:
            row = conn.execute(f"{sql} RETURNING {_SESSION_SELECT}", params).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        return _session(row)

    def set_session_status(
        self,
        session_id: str,
        expect: set[SessionStatus],
        status: SessionStatus,
        changes: Mapping[str, Any] | None = None,
    ) -> Session | None:
        """Change the status (and ``changes``) if it is one of ``expect``.

        Returns:
            The updated session, or None when its status was not in ``expect``.

        Raises:
            SessionNotFound: no session has this id.
            ValueError: ``changes`` names a field that cannot be changed (``id``, ``status``).
        """
        clauses, values = _assignments(changes or {}, _SESSION_COLUMNS, {"id", "status"}, "session")
        wanted = sorted(_session_status(s) for s in expect)
        with self._connection() as conn:
            # The status condition guards two reducers closing (or cancel racing the
            # close of) one session: only the first sees a live status.
            row = conn.execute(
                f"UPDATE sessions SET {', '.join(['status = ?', *clauses])}"
                f" WHERE id = ? AND status IN ({_marks(len(wanted))})"
                f" RETURNING {_SESSION_SELECT}",
                (_session_status(status), *values, session_id, *wanted),
            ).fetchone()
            if row is not None:
                return _session(row)
            self._get_session(conn, session_id)  # raises SessionNotFound
            return None

    def count_finished(self, session_id: str, failed: bool) -> Session:
        """Atomically add one finished run (and one failed, if so).

        Returns:
            The session as updated by this call (its counters include this run).

        Raises:
            SessionNotFound: no session has this id.
        """
        # One UPDATE adds to the stored value: two reducers ending runs at once both
        # count, and the one whose update makes finished == total sees it.
        return self._updated_session(
            "UPDATE sessions SET finished = finished + 1, failed = failed + ? WHERE id = ?",
            (int(failed), session_id),
            session_id,
        )

    def recount(self, session_id: str) -> Session:
        """Set the counters from the runs themselves (repair after a crash).

        Raises:
            SessionNotFound: no session has this id.
        """
        terminal = [status.value for status in TERMINAL_JOB]
        marks = _marks(len(terminal))
        return self._updated_session(
            "UPDATE sessions SET"
            " finished = (SELECT COUNT(*) FROM runs WHERE session_id = sessions.id"
            f"  AND idx IS NULL AND status IN ({marks})),"
            " failed = (SELECT COUNT(*) FROM runs WHERE session_id = sessions.id"
            "  AND idx IS NULL AND status = ?)"
            " WHERE id = ?",
            (*terminal, JobStatus.FAILED.value, session_id),
            session_id,
        )

    def sessions(
        self,
        pipeline: str | None = None,
        statuses: set[SessionStatus] | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """Sessions, newest first, optionally of one pipeline and in some statuses."""
        where, args = ["1 = 1"], []
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        if statuses:
            where.append(f"status IN ({_marks(len(statuses))})")
            args.extend(status.value for status in statuses)
        sql = (
            f"SELECT {_SESSION_SELECT} FROM sessions WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        with self._read() as conn:
            return [_session(row) for row in conn.execute(sql, (*args, limit))]

    def acquire_slot(self, session_id: str, scope: str | None, limit: int) -> bool:
        """Take one of ``limit`` running slots of the session (scope None) or of a fan-out.

        The session's slots are its ``running`` counter; a fan-out's are a row of
        ``slots``, created on first use.

        Returns:
            Whether a slot was taken (False when ``limit`` are held).

        Raises:
            SessionNotFound: no session has this id.
        """
        with self._connection() as conn:
            # `held < limit` in the same statement as the increment: two reducers
            # cannot both take the last slot.
            if scope is None:
                cursor = conn.execute(
                    "UPDATE sessions SET running = running + 1 WHERE id = ? AND running < ?",
                    (session_id, limit),
                )
            else:
                with _known_session(session_id):
                    conn.execute(
                        "INSERT OR IGNORE INTO slots (session_id, scope, held) VALUES (?, ?, 0)",
                        (session_id, scope),
                    )
                cursor = conn.execute(
                    "UPDATE slots SET held = held + 1"
                    " WHERE session_id = ? AND scope = ? AND held < ?",
                    (session_id, scope, limit),
                )
            if cursor.rowcount == 1:
                return True
            self._get_session(conn, session_id)  # raises SessionNotFound
            return False

    def release_slot(self, session_id: str, scope: str | None) -> None:
        """Give back a slot taken by :meth:`acquire_slot` (never below zero)."""
        with self._connection() as conn:
            if scope is None:
                conn.execute(
                    "UPDATE sessions SET running = running - 1 WHERE id = ? AND running > 0",
                    (session_id,),
                )
            else:
                conn.execute(
                    "UPDATE slots SET held = held - 1"
                    " WHERE session_id = ? AND scope = ? AND held > 0",
                    (session_id, scope),
                )

    # -- job runs -------------------------------------------------------------------

    def put_run(self, run: JobRun) -> bool:
        """Write a run if no run has its key yet.

        Returns:
            Whether it was written (False: a run with this key exists, unchanged).

        Raises:
            SessionNotFound: no session has this id.
            OutputTooLarge: the output is larger than :data:`MAX_OUTPUT_BYTES`.
        """
        row = _values(run, _RUN_COLUMNS)
        row[_DONE] = len(run.parents_done)  # the count is of the edges written with it
        if not run.parents_done:
            # One statement (most runs: roots, items, a child before its first edge).
            with _known_session(run.session_id), self._connection() as conn:
                # OR IGNORE: of two reducers creating the same run, the second writes nothing.
                return conn.execute(_INSERT_RUN, row).rowcount == 1
        with _known_session(run.session_id), self._write() as conn:
            if conn.execute(_INSERT_RUN, row).rowcount:
                self._put_edges(conn, run.session_id, run.key, run.parents_done)
                return True
            return False

    def put_new_runs(self, runs: Sequence[JobRun]) -> None:
        """Write runs no one else writes yet (see the port) in one transaction."""
        if not runs:
            return
        with _known_session(runs[0].session_id), self._write() as conn:
            conn.executemany(_INSERT_RUN, [_values(run, _RUN_COLUMNS) for run in runs])

    @staticmethod
    def _put_edges(
        conn: sqlite3.Connection, session_id: str, key: str, edges: Mapping[str, Outcome]
    ) -> None:
        conn.executemany(
            "INSERT INTO edges (session_id, key, edge, outcome) VALUES (?, ?, ?, ?)",
            [(session_id, key, edge, Outcome(outcome).value) for edge, outcome in edges.items()],
        )
        conn.execute(
            "UPDATE runs SET done = ? WHERE session_id = ? AND key = ?",
            (len(edges), session_id, key),
        )

    def get_run(self, session_id: str, key: str) -> JobRun | None:
        """The run with this key, or None."""
        with self._connection() as conn:
            return self._get_run(conn, session_id, key)

    @staticmethod
    def _get_run(conn: sqlite3.Connection, session_id: str, key: str) -> JobRun | None:
        row = conn.execute(_GET_RUN, (session_id, key)).fetchone()
        return None if row is None else _run(row)

    def transition(
        self,
        session_id: str,
        key: str,
        expect: set[JobStatus],
        changes: Mapping[str, Any],
        attempt: int | None = None,
    ) -> JobRun | None:
        """Apply ``changes`` if the run's status is in ``expect`` (and its attempt is ``attempt``).

        ``changes`` maps :class:`JobRun` field names to new values; ``parents_done``
        replaces the run's counted edges.

        Returns:
            The updated run, or None when the condition failed (or there is no run);
            then nothing was written.

        Raises:
            ValueError: ``changes`` names a field that cannot be changed (``session_id``,
                ``key``), or the output is larger than :data:`MAX_OUTPUT_BYTES`. The
                reducer records the latter as a failed attempt; nothing was written.
        """
        edges = "parents_done" in changes
        fields = (
            {name: value for name, value in changes.items() if name != "parents_done"}
            if edges
            else changes
        )
        values = _encoded(fields, _RUN_COLUMNS, _RUN_IDENTITY, "job run")
        wanted = [_job_status(s) for s in expect] if len(expect) == 1 else _statuses(expect)
        sql = _transition_sql(tuple(fields), len(wanted), attempt is not None, edges)
        params = [*values, session_id, key, *wanted]
        if attempt is not None:
            # The attempt guards a late event of an earlier attempt (a retry already
            # started) against ending the current one.
            params.append(attempt)
        # The status condition guards two reducers claiming or ending one run: the
        # loser's UPDATE matches no row, since the winner changed the status.
        if not edges:
            with self._connection() as conn:  # one statement: atomic, and its own snapshot
                row = conn.execute(sql, params).fetchone()
            return None if row is None else _run(row)
        with self._write() as conn:
            if conn.execute(sql, params).rowcount == 0:
                return None
            conn.execute("DELETE FROM edges WHERE session_id = ? AND key = ?", (session_id, key))
            self._put_edges(conn, session_id, key, changes["parents_done"])
            return self._get_run(conn, session_id, key)

    def write_handles(self, handles: Sequence[tuple[str, str, int, str]]) -> None:
        """Record the handles of attempts started: ``(session_id, key, attempt, handle)`` each.

        The write :meth:`transition` makes for ``{"handle": handle}`` from RUNNING at
        that attempt (a run that has moved on keeps what it has), for many attempts
        in one statement, reading nothing back.
        """
        with self._connection() as conn:  # each UPDATE stands alone: no savepoint needed
            conn.executemany(
                "UPDATE runs SET handle = ? WHERE session_id = ? AND key = ?"
                " AND status = ? AND attempt = ?",
                [
                    (handle, session_id, key, JobStatus.RUNNING.value, attempt)
                    for session_id, key, attempt, handle in handles
                ],
            )

    def expect_items(self, session_id: str, key: str, count: int) -> None:
        """Nothing to prepare: each counted edge is a row of its own (``edges``)."""

    def count_edge(
        self,
        session_id: str,
        key: str,
        job_id: str,
        index: int | None,
        edge: str,
        outcome: Outcome,
        expected: int,
        position: int | None = None,
    ) -> JobRun | None:
        """Record that ``edge`` finished with ``outcome``, creating the run if absent
        (``position`` is not needed: each edge is a row of its own).

        Returns:
            The updated run, or None when this edge was counted before. Exactly one
            caller gets a run with ``done == expected``; only that one carries the
            outcomes in ``parents_done`` (others: ``done`` alone).

        Raises:
            SessionNotFound: no session has this id.
        """
        with _known_session(session_id), self._write() as conn:
            # Two parents ending at once may both create the child: OR IGNORE keeps one.
            conn.execute(
                "INSERT OR IGNORE INTO runs (session_id, key, job_id, idx, status,"
                " attempt, expected) VALUES (?, ?, ?, ?, ?, 0, ?)",
                (session_id, key, job_id, index, JobStatus.WAITING.value, expected),
            )
            # The edges primary key guards a redelivered event counting its edge
            # twice; the count below is in the same transaction, so each caller sees
            # the count its own edge made, and only one sees it reach `expected`.
            cursor = conn.execute(
                "INSERT OR IGNORE INTO edges (session_id, key, edge, outcome) VALUES (?, ?, ?, ?)",
                (session_id, key, edge, Outcome(outcome).value),
            )
            if cursor.rowcount == 0:
                return None
            # The outcomes are read only when the last edge is in: a fan-in of n parents
            # (or a fan-out of n items) then costs O(1) per edge, O(n) once.
            row = conn.execute(
                "UPDATE runs SET done = done + 1 WHERE session_id = ? AND key = ?"
                f" RETURNING {_RUN_WITH_LAST_EDGES}",
                (session_id, key),
            ).fetchone()
            return None if row is None else _run(row)

    def runs(
        self,
        session_id: str,
        statuses: set[JobStatus] | None = None,
        job_id: str | None = None,
        limit: int | None = None,
    ) -> list[JobRun]:
        """Runs of a session in key order (UTF-8 byte order, as DynamoDB sorts keys).

        Args:
            statuses: Only runs in one of these statuses (an empty set matches none).
            job_id: Only the runs of this job (a fan-out and its items).
            limit: At most this many runs.
        """
        where = ["session_id = ?"]
        params: list[Any] = [session_id]
        if statuses is not None:
            wanted = sorted(_job_status(s) for s in statuses)
            where.append(f"status IN ({_marks(len(wanted))})")
            params.extend(wanted)
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        # Items of a fan-out in index order (a queue drains [2] before [10]).
        sql = (
            f"SELECT {_RUN_WITH_EDGES} FROM runs WHERE {' AND '.join(where)}"
            " ORDER BY job_id, idx, key"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(limit, 0))
        with self._connection() as conn:  # one statement: the runs and edges of one snapshot
            rows = conn.execute(sql, params).fetchall()
        return [_run(row) for row in rows]

    def delete_runs(self, session_id: str, keys: Sequence[str]) -> None:
        """Forget runs and their counted edges (a session retry re-runs them)."""
        with self._write() as conn:
            conn.executemany(
                "DELETE FROM runs WHERE session_id = ? AND key = ?",
                [(session_id, key) for key in keys],
            )

    # -- history --------------------------------------------------------------------

    def append_history(self, entry: HistoryEntry) -> None:
        """Add an entry after every other of its session.

        Raises:
            SessionNotFound: no session has this id.
        """
        with _known_session(entry.session_id), self._connection() as conn:
            conn.execute(
                _INSERT_HISTORY,
                (
                    entry.session_id,
                    entry.at,
                    entry.kind,
                    entry.key,
                    entry.attempt,
                    _dumps(entry.detail),
                ),
            )

    def history(self, session_id: str, after: int = 0) -> list[tuple[int, HistoryEntry]]:
        """The session's entries with a sequence number above ``after``, in order.

        Sequence numbers increase in the order entries were appended; they are
        shared by all sessions of the database, so one session's are not contiguous.
        """
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT * FROM history WHERE session_id = ? AND seq > ? ORDER BY seq",
                (session_id, after),
            ).fetchall()
        return [
            (row["seq"], HistoryEntry(*(row[name] for name in _HISTORY), _loads(row["detail"])))
            for row in rows
        ]
