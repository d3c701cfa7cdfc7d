"""``bunsui logs tail|filter|download``: a session's history and its jobs' output, merged.

Two sources, in time order: the session's history (what the engine did:
dispatched, succeeded, failed, retrying, ...) and every line each attempt
wrote to stdout or stderr (the backend's LogBook). Each entry has a level:

- history: INFO; a retry, a skip for a failed parent or a cancellation
  WARNING; a failure ERROR;
- job output: the level the line itself names (``ERROR: ...``,
  ``2024-05-01 12:00:00,001 WARNING ...``, or JSON with a ``level``,
  ``levelname`` or ``severity`` key); otherwise INFO for stdout and WARNING
  for stderr.

On AWS the jobs' output is read from CloudWatch Logs (see bunsui.aws_logs),
once each attempt has ended.
"""

from __future__ import annotations

import json
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from bunsui.backends import is_remote, open_backend
from bunsui.output import as_json, console
from bunsui.progress import parse_time
from engine.errors import BunsuiError
from engine.events import HistoryEntry
from engine.local.runners import LogLine

if TYPE_CHECKING:
    from bunsui.backends import Backend

logs_app = typer.Typer(help="Read a session's history and its jobs' output.", no_args_is_help=True)

FOLLOW_SECONDS = 0.5
"""How often ``tail --follow`` looks for new entries."""
REMOTE_FOLLOW_SECONDS = 2.0
"""How often it looks on AWS (each look is two API requests)."""


class Level(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


_RANK = {level: rank for rank, level in enumerate(Level)}
_ALIASES = {
    "WARN": Level.WARNING,
    "FATAL": Level.CRITICAL,
    "ERR": Level.ERROR,
    "TRACE": Level.DEBUG,
}
_STYLE = {
    Level.DEBUG: "dim",
    Level.INFO: "",
    Level.WARNING: "yellow",
    Level.ERROR: "bold red",
    Level.CRITICAL: "bold red",
}

_LEVEL_WORD = r"(?P<level>DEBUG|TRACE|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|FATAL)"
# "ERROR: ...", "[WARNING] ...", "ERROR:root:...", optionally after a time stamp
# ("2024-05-01 12:00:00,001 ERROR ...", "12:00:00 [INFO] ...").
_LOGGING_LINE = re.compile(
    r"^\s*(?:[\d][\d\-/:T.,+Z ]{6,40}\s+)?[\[(]?" + _LEVEL_WORD + r"[\])]?(?=[:\s\]|-]|$)",
    re.IGNORECASE,
)

_HISTORY_LEVEL = {
    "job_failed": Level.ERROR,
    "session_failed": Level.ERROR,
    "job_retrying": Level.WARNING,
    "job_upstream_failed": Level.WARNING,
    "job_cancelled": Level.WARNING,
    "session_cancelled": Level.WARNING,
}

SessionIdOption = Annotated[
    str, typer.Option("--session-id", "-s", help="The session's id.", show_default=False)
]
JobOption = Annotated[
    str | None,
    typer.Option(
        "--job-id", "-j", help="Only this job (a fan-out: all its items; or one item: 'id[2]')."
    ),
]
LevelOption = Annotated[
    Level | None,
    typer.Option("--level", case_sensitive=False, help="Only entries of this level or above."),
]
FromOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Only entries at or after this time: ISO-8601 (local time unless it has an offset), "
        "or a duration ago such as 10m, 2h, 30s.",
    ),
]
ToOption = Annotated[
    str | None, typer.Option("--to", help="Only entries at or before this time (as --from).")
]


class TimeInvalid(BunsuiError):
    """A --from/--to value is not a time."""


def line_level(text: str, stream: str) -> Level:
    """The level of one line a job wrote (see the module's docstring)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("level", "levelname", "severity", "log.level"):
                value = data.get(key)
                if isinstance(value, str) and _known(value):
                    return _known(value)  # type: ignore[return-value]
    match = _LOGGING_LINE.match(text)
    if match and _known(match["level"]):
        return _known(match["level"])  # type: ignore[return-value]
    return Level.INFO if stream == "stdout" else Level.WARNING


def _known(word: str) -> Level | None:
    upper = word.upper()
    if upper == "NOTICE":
        return Level.INFO
    if upper in _ALIASES:
        return _ALIASES[upper]
    return Level(upper) if upper in Level.__members__ else None


def _history_message(entry: HistoryEntry) -> str:
    detail = entry.detail if isinstance(entry.detail, dict) else {}
    kind = entry.kind
    error, reason = detail.get("error"), detail.get("reason")
    if kind == "session_started":
        return f"session started (pipeline version {detail.get('version', '?')})"
    if kind == "job_dispatched":
        return f"attempt {entry.attempt} started"
    if kind == "job_retrying":
        delay = detail.get("delay")
        wait = f"; next attempt in {delay:g}s" if isinstance(delay, (int, float)) else ""
        return f"attempt {entry.attempt} failed: {error}{wait}"
    if kind == "fan_out_started":
        return f"fan-out started: {detail.get('items')} items"
    if kind == "session_retried":
        return f"session retried: re-running {', '.join(detail.get('jobs', [])) or 'nothing'}"
    text = kind.replace("_", " ")
    if kind.startswith("job_"):
        text = text.removeprefix("job ")
    extra = error or reason
    return f"{text}: {extra}" if extra else text


def history_entry(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "job": entry.key,
        "attempt": entry.attempt or None,  # a fan-out as a whole has no attempts (0)
        "level": _HISTORY_LEVEL.get(entry.kind, Level.INFO).value,
        "source": "event",
        "event": entry.kind,
        "message": _history_message(entry),
    }


def log_entry(line: LogLine) -> dict[str, Any]:
    return {
        "at": line.at,
        "job": line.key,
        "attempt": line.attempt,
        "level": line_level(line.message, line.stream).value,
        "source": line.stream,
        "event": None,
        "message": line.message,
    }


def _moment(entry: dict[str, Any]) -> datetime:
    return parse_time(entry["at"]) or datetime.min.replace(tzinfo=UTC)


def merged(
    events: Iterable[dict[str, Any]], lines: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Both sources in time order; at the same instant the engine's entry comes first."""
    both = [(_moment(e), 0, i, e) for i, e in enumerate(events)]
    both += [(_moment(e), 1, i, e) for i, e in enumerate(lines)]
    return [entry for *_, entry in sorted(both, key=lambda item: item[:3])]


def parse_when(text: str | None, option: str) -> datetime | None:
    """An ISO-8601 time (local when it has no offset) or a duration ago (``10m``)."""
    if text is None:
        return None
    ago = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if ago:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[ago[2]]
        return datetime.now(UTC) - timedelta(**{unit: float(ago[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TimeInvalid(
            f"{option} {text!r} is not a time: write ISO-8601 (2024-05-01T12:00:00, "
            "12:00 is not enough) or a duration ago such as 10m."
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


class Selection:
    """Which entries to keep: a job, a minimum level, a time window."""

    def __init__(
        self,
        job: str | None = None,
        level: Level | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> None:
        self.job = job
        self.level = level
        self.since = since
        self.until = until

    def keeps(self, entry: dict[str, Any]) -> bool:
        key = entry["job"]
        if self.job is not None and (
            key is None or (key != self.job and not key.startswith(f"{self.job}["))
        ):
            return False
        if self.level is not None and _RANK[Level(entry["level"])] < _RANK[self.level]:
            return False
        if self.since is not None or self.until is not None:
            moment = _moment(entry)
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment > self.until:
                return False
        return True


def collect(backend: Backend, session_id: str, selection: Selection) -> list[dict[str, Any]]:
    """Every entry of the session that the selection keeps, in time order."""
    backend.store.get_session(session_id)  # SessionNotFound for an unknown id
    events = [history_entry(entry) for _, entry in backend.store.history(session_id)]
    lines = [log_entry(line) for line in backend.logs.lines(session_id, selection.job)]
    return [entry for entry in merged(events, lines) if selection.keeps(entry)]


def render(entry: dict[str, Any]) -> Text:
    """One entry as a line: time, job#attempt, level, source, message."""
    moment = parse_time(entry["at"])
    when = moment.astimezone().strftime("%H:%M:%S.%f")[:-3] if moment else entry["at"]
    who = entry["job"] or "-"
    if entry["attempt"] is not None and entry["job"] is not None:
        who += f"#{entry['attempt']}"
    level = Level(entry["level"])
    text = Text(f"{when}  ")
    text.append(f"{who:<20} ", style="bold")
    text.append(f"{level.value:<8}", style=_STYLE[level])
    text.append(f"{entry['source']:<7} ", style="dim")
    loud = _RANK[level] >= _RANK[Level.WARNING]
    text.append(entry["message"], style=_STYLE[level] if loud else "")
    return text


def _print(entries: Iterable[dict[str, Any]]) -> None:
    out = console()
    for entry in entries:
        out.print(render(entry), soft_wrap=True)


@logs_app.command("tail")
def tail(
    session_id: SessionIdOption,
    job: JobOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new entries until it ends.")
    ] = False,
    lines: Annotated[
        int | None, typer.Option("--lines", "-n", min=0, help="Start with the last N entries.")
    ] = None,
    level: LevelOption = None,
) -> None:
    """Print a session's history and its jobs' output; with --follow, until it ends."""
    backend = open_backend()
    selection = Selection(job, level)
    if not follow:
        entries = collect(backend, session_id, selection)
        _print(entries[-lines:] if lines else ([] if lines == 0 else entries))
        return
    try:
        _follow(backend, session_id, selection, lines)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _follow(backend: Backend, session_id: str, selection: Selection, lines: int | None) -> None:
    """Print what there is, then new entries every FOLLOW_SECONDS until the session ends."""
    backend.store.get_session(session_id)
    output: queue.Queue[LogLine] = queue.Queue()
    stop = threading.Event()
    failures: list[BunsuiError] = []
    pause = REMOTE_FOLLOW_SECONDS if is_remote(backend) else FOLLOW_SECONDS

    def pump() -> None:
        try:
            for line in backend.logs.follow(session_id, selection.job, stop.is_set, 0.2):
                output.put(line)
        except BunsuiError as exc:  # reading the jobs' logs failed: say so in the main thread
            failures.append(exc)

    reader = threading.Thread(target=pump, name="bunsui-logs", daemon=True)
    reader.start()
    seq = 0
    first = True
    while True:
        ended = backend.store.get_session(session_id).status.terminal
        if ended:
            stop.set()
            reader.join()  # it reads what was written before it stops
        if failures:
            stop.set()
            raise failures[0]
        found = backend.store.history(session_id, after=seq)
        if found:
            seq = found[-1][0]
        written: list[LogLine] = []
        while not output.empty():
            written.append(output.get_nowait())
        entries = merged(
            (history_entry(entry) for _, entry in found), (log_entry(line) for line in written)
        )
        entries = [entry for entry in entries if selection.keeps(entry)]
        if first and lines is not None:
            entries = entries[-lines:] if lines else []
        first = False
        _print(entries)
        sys.stdout.flush()
        if ended:
            return
        time.sleep(pause)


@logs_app.command("filter")
def filter_logs(
    session_id: SessionIdOption,
    job: JobOption = None,
    level: LevelOption = None,
    since: FromOption = None,
    until: ToOption = None,
) -> None:
    """Print the entries of a session that match: a job, a minimum level, a time window."""
    selection = Selection(job, level, parse_when(since, "--from"), parse_when(until, "--to"))
    _print(collect(open_backend(), session_id, selection))


@logs_app.command("download")
def download(
    session_id: SessionIdOption,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="The JSON file to write ('-' for stdout).", show_default=False
        ),
    ],
    job: JobOption = None,
    level: LevelOption = None,
    since: FromOption = None,
    until: ToOption = None,
) -> None:
    """Write a session's entries (history and output, merged) as a JSON array."""
    selection = Selection(job, level, parse_when(since, "--from"), parse_when(until, "--to"))
    entries = collect(open_backend(), session_id, selection)
    text = as_json(entries) + "\n"
    if str(output) == "-":
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BunsuiError(f"--output {output}: cannot write it: {exc.strerror}.") from None
    console().print(f"wrote {len(entries)} entries to {output}.")
