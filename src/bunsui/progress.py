"""How a session looks: the live view while it runs, the summary when it ends, its JSON.

Everything here reads a :class:`Snapshot` (the session, its pinned pipeline
and its runs as read at one moment), so the same code draws a session that
this process drives and one that another process drives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from engine.parameters import redacted
from engine.pipeline import JobBase, Pipeline
from engine.ports import Store
from engine.state import JobRun, JobStatus, Session, SessionStatus

PENDING = "pending"
"""The status shown for a job that has no run yet (its parents have not finished)."""

STYLE = {
    PENDING: "dim",
    JobStatus.WAITING.value: "dim",
    JobStatus.QUEUED.value: "cyan",
    JobStatus.RUNNING.value: "bold blue",
    JobStatus.RETRYING.value: "yellow",
    JobStatus.SUCCEEDED.value: "green",
    JobStatus.FAILED.value: "bold red",
    JobStatus.SKIPPED.value: "dim",
    JobStatus.UPSTREAM_FAILED.value: "red",
    JobStatus.CANCELLED.value: "yellow",
    SessionStatus.PAUSED.value: "yellow",
    SessionStatus.CANCELLING.value: "yellow",
}
"""The rich style of every job and session status."""

SYMBOL = {
    PENDING: "·",
    JobStatus.WAITING.value: "·",
    JobStatus.QUEUED.value: "…",
    JobStatus.RUNNING.value: "▶",
    JobStatus.RETRYING.value: "↻",
    JobStatus.SUCCEEDED.value: "✓",
    JobStatus.FAILED.value: "✗",
    JobStatus.SKIPPED.value: "-",
    JobStatus.UPSTREAM_FAILED.value: "✗",
    JobStatus.CANCELLED.value: "■",
    SessionStatus.PAUSED.value: "‖",
    SessionStatus.CANCELLING.value: "■",
}


# ---------------------------------------------------------------------- times


def parse_time(at: str | None) -> datetime | None:
    if not at:
        return None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds_between(
    start: str | None, end: str | None, now: datetime | None = None
) -> float | None:
    """Seconds from ``start`` to ``end`` (or to ``now`` while it has not ended)."""
    begin = parse_time(start)
    finish = parse_time(end) or now
    if begin is None or finish is None:
        return None
    return max((finish - begin).total_seconds(), 0.0)


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def local_time(at: str | None, with_date: bool = False) -> str:
    """An ISO time in this machine's time zone: ``19:37:01`` (or with the date)."""
    moment = parse_time(at)
    if moment is None:
        return ""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


# ---------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class JobView:
    """One job of a session as shown: its run (None before it has one) and its items."""

    job: JobBase
    level: int
    run: JobRun | None
    items: list[JobRun] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.run.status.value if self.run else PENDING

    @property
    def attempts(self) -> int:
        if self.items:
            return max((item.attempt for item in self.items), default=0)
        return self.run.attempt if self.run else 0

    def duration(self, now: datetime | None) -> float | None:
        if self.run is None:
            return None
        live = None if self.run.status.terminal else now
        return seconds_between(self.run.started_at, self.run.ended_at, live)

    @property
    def items_done(self) -> int:
        return sum(item.status.terminal for item in self.items)

    @property
    def items_failed(self) -> int:
        return sum(item.status is JobStatus.FAILED for item in self.items)

    @property
    def items_total(self) -> int:
        # A claimed fan-out expects its parents' edges and then one per item.
        if self.run is not None and self.run.expected and self.job.fan_out is not None:
            return max(self.run.expected - len(self.job.depends_on), len(self.items))
        return len(self.items)

    @property
    def error(self) -> str | None:
        return self.run.error if self.run else None

    @property
    def note(self) -> str:
        """What the status alone does not say: an error, a skip reason, a retry."""
        if self.run is None:
            return ""
        run = self.run
        if run.status is JobStatus.RETRYING and run.error:
            return f"attempt {run.attempt} failed: {run.error}"
        return run.error or run.reason or ""


@dataclass(frozen=True)
class Snapshot:
    """A session, its pinned pipeline and its runs, read at one moment."""

    session: Session
    pipeline: Pipeline
    jobs: list[JobView]
    read_at: datetime

    @property
    def duration(self) -> float | None:
        live = None if self.session.status.terminal else self.read_at
        return seconds_between(self.session.created_at, self.session.ended_at, live)


def take_snapshot(store: Store, pipeline: Pipeline, session_id: str) -> Snapshot:
    """Read the session and every run of it."""
    session = store.get_session(session_id)
    runs: dict[str, JobRun] = {}
    items: dict[str, list[JobRun]] = {}
    for run in store.runs(session_id):
        if run.index is None:
            runs[run.job_id] = run
        else:
            items.setdefault(run.job_id, []).append(run)
    jobs = [
        JobView(pipeline.job(job_id), depth, runs.get(job_id), items.get(job_id, []))
        for depth, level in enumerate(pipeline.graph.levels())
        for job_id in level
    ]
    return Snapshot(session, pipeline, jobs, datetime.now(UTC))


# ---------------------------------------------------------------------- JSON


def _run_json(run: JobRun | None, now: datetime | None) -> dict[str, Any]:
    if run is None:
        return {
            "status": PENDING,
            "attempts": 0,
            "started_at": None,
            "ended_at": None,
            "duration": None,
            "inputs": None,
            "output": None,
            "error": None,
            "reason": None,
        }
    live = None if run.status.terminal else now
    duration = seconds_between(run.started_at, run.ended_at, live)
    return {
        "status": run.status.value,
        "attempts": run.attempt,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "duration": None if duration is None else round(duration, 3),
        "inputs": run.inputs,
        "output": run.output,
        "error": run.error,
        "reason": run.reason,
    }


def session_json(snap: Snapshot, driver_pid: int | None = None) -> dict[str, Any]:
    """The session as the stable JSON of ``--format json`` (see docs/cli-reference.md).

    Args:
        driver_pid: The process driving it, if one does.
    """
    session, pipeline = snap.session, snap.pipeline
    duration = snap.duration
    jobs = []
    for view in snap.jobs:
        entry: dict[str, Any] = {
            "id": view.job.id,
            "name": view.job.display_name,
            "type": str(view.job.type),
            "level": view.level,
            **_run_json(view.run, snap.read_at),
            "items": None,
        }
        if view.job.fan_out is not None:
            entry["items"] = [
                {"index": item.index, "item": item.item, **_run_json(item, snap.read_at)}
                for item in sorted(view.items, key=lambda i: i.index or 0)
            ]
        jobs.append(entry)
    return {
        "session_id": session.id,
        "pipeline": session.pipeline,
        "pipeline_version": session.version,
        "status": session.status.value,
        "reason": session.reason,
        "parameters": redacted(pipeline.parameters, session.parameters),
        "created_at": session.created_at,
        "ended_at": session.ended_at,
        "duration": None if duration is None else round(duration, 3),
        "jobs_total": session.total,
        "jobs_finished": session.finished,
        "jobs_failed": session.failed,
        "driver_pid": driver_pid,
        "jobs": jobs,
    }


# ---------------------------------------------------------------------- tables


def styled(status: str) -> Text:
    return Text(f"{SYMBOL.get(status, ' ')} {status}", style=STYLE.get(status, ""))


def _attempts(view: JobView) -> str:
    if view.attempts == 0:
        return ""
    if view.job.retries and not view.items and view.run is not None:
        # After a session retry the budget starts again: show this try's count of it.
        this_try = view.attempts - view.run.base_attempt
        return f"{this_try}/{view.job.retries + 1}" + (
            f" ({view.attempts} in all)" if view.run.base_attempt else ""
        )
    return str(view.attempts)


def _progress_note(view: JobView) -> str:
    if view.job.fan_out is None or view.run is None or view.run.status is JobStatus.WAITING:
        return view.note
    total = view.items_total
    text = f"{view.items_done}/{total} items" if total else "no items"
    running = sum(i.status is JobStatus.RUNNING for i in view.items)
    if running:
        text += f", {running} running"
    if view.items_failed:
        text += f", {view.items_failed} failed"
    return text if not view.note else f"{text}; {view.note}"


def _clip(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def jobs_table(snap: Snapshot, *, started: bool = False) -> Table:
    """The jobs level by level: status, attempts, (start time,) duration and a note."""
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("LEVEL", style="dim")
    table.add_column("JOB")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("ATTEMPTS", justify="right")
    if started:
        table.add_column("STARTED")
    table.add_column("DURATION", justify="right")
    table.add_column("NOTE", overflow="fold")
    last_level = -1
    for view in snap.jobs:
        level = f"L{view.level}" if view.level != last_level else ""
        last_level = view.level
        cells: list[RenderableType] = [
            level,
            escape(view.job.id),
            styled(view.status),
            _attempts(view),
        ]
        if started:
            cells.append(local_time(view.run.started_at) if view.run else "")
        note = _progress_note(view)
        cells += [
            human_duration(view.duration(snap.read_at)),
            Text(_clip(note), style="red" if view.error else "dim"),
        ]
        table.add_row(*cells)
    return table


def headline(snap: Snapshot) -> Text:
    session = snap.session
    status = session.status.value
    done = sum(view.run is not None and view.run.status.terminal for view in snap.jobs)
    text = Text()
    text.append(session.pipeline, style="bold")
    text.append(f" (version {session.version}) · session {session.id} · ")
    text.append(status, style=STYLE.get(status, ""))
    text.append(f" · {human_duration(snap.duration)} · {done}/{len(snap.jobs)} jobs done")
    return text


class LiveView:
    """The renderable of ``rich.live.Live``: durations grow between snapshots."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def __rich__(self) -> RenderableType:
        now = datetime.now(UTC)
        snap = Snapshot(self.snap.session, self.snap.pipeline, self.snap.jobs, now)
        return Group(headline(snap), Text(""), jobs_table(snap))


class PlainProgress:
    """Progress for a log or a pipe: one line each time a job's status changes."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.seen: dict[str, str] = {}

    def update(self, snap: Snapshot) -> None:
        for view in snap.jobs:
            status = view.status
            if status == PENDING or self.seen.get(view.job.id) == status:
                continue
            self.seen[view.job.id] = status
            detail = []
            if view.attempts:
                detail.append(f"attempt {view.attempts}")
            note = _progress_note(view)
            if note:
                detail.append(_clip(note))
            when = local_time(view.run.updated_at if view.run else None)
            line = Text(f"{when}  {view.job.id}  ")
            line.append(status, style=STYLE.get(status, ""))
            if detail:
                line.append(f"  ({'; '.join(detail)})", style="dim")
            self.out.print(line)


# ---------------------------------------------------------------------- summary


def hints(session: Session) -> list[str]:
    """The commands that inspect (or go on with) a session."""
    sid = session.id
    lines = [
        f"bunsui session status --session-id {sid}",
        f"bunsui logs tail --session-id {sid}",
    ]
    if session.status in (SessionStatus.FAILED, SessionStatus.CANCELLED):
        lines.append(f"bunsui session retry --session-id {sid}")
    elif not session.status.terminal:
        lines.append(f"bunsui logs tail --session-id {sid} --follow")
        lines.append(f"bunsui session cancel --session-id {sid}")
    return lines


def failures(snap: Snapshot) -> Iterator[tuple[str, str]]:
    """(run key, error) of every failed run, fan-out items included."""
    for view in snap.jobs:
        for run in [view.run, *view.items]:
            if run is not None and run.status is JobStatus.FAILED and run.error:
                yield run.key, run.error


def print_summary(out: Console, snap: Snapshot, *, started: bool = False) -> None:
    """The session's status and duration, its jobs, the errors of failed jobs and what to
    run next."""
    out.print(headline(snap))
    if snap.session.reason:
        out.print(f"reason: {escape(snap.session.reason)}")
    out.print("")
    out.print(jobs_table(snap, started=started))
    errors = list(failures(snap))
    if errors:
        out.print("")
        out.print("[bold red]Errors[/bold red]")
        for key, error in errors:
            out.print(f"  [bold]{escape(key)}[/bold]: {escape(error)}")
    out.print("")
    out.print(f"session id: {snap.session.id}")
    for line in hints(snap.session):
        out.print(f"  {escape(line)}", style="dim")


# ---------------------------------------------------------------------- graphs


_MERMAID_FILL = {
    PENDING: "fill:#f4f4f4,stroke:#bbb,color:#777",
    "waiting": "fill:#f4f4f4,stroke:#bbb,color:#777",
    "queued": "fill:#e0f7fa,stroke:#00838f",
    "running": "fill:#e3f2fd,stroke:#1565c0",
    "retrying": "fill:#fff8e1,stroke:#f9a825",
    "succeeded": "fill:#e8f5e9,stroke:#2e7d32",
    "failed": "fill:#ffebee,stroke:#c62828",
    "skipped": "fill:#f4f4f4,stroke:#999,stroke-dasharray:4",
    "upstream_failed": "fill:#fce4ec,stroke:#ad1457",
    "cancelled": "fill:#fff3e0,stroke:#ef6c00",
}

_DOT_FILL = {
    PENDING: "#f4f4f4",
    "waiting": "#f4f4f4",
    "queued": "#e0f7fa",
    "running": "#bbdefb",
    "retrying": "#fff59d",
    "succeeded": "#c8e6c9",
    "failed": "#ef9a9a",
    "skipped": "#eeeeee",
    "upstream_failed": "#f8bbd0",
    "cancelled": "#ffcc80",
}


def state_mermaid(base: str, snap: Snapshot) -> str:
    """A pipeline's Mermaid drawing with a ``classDef`` per status and each job in its class."""
    lines = [base]
    used = sorted({view.status for view in snap.jobs})
    for status in used:
        lines.append(f"    classDef {status} {_MERMAID_FILL[status]}")
    for view in snap.jobs:
        lines.append(f"    class {view.job.id} {view.status}")
    return "\n".join(lines)


def state_dot(base: str, snap: Snapshot) -> str:
    """A pipeline's DOT drawing with each job filled with the colour of its status."""
    body = base.rstrip().removesuffix("}").rstrip()
    lines = [body]
    for view in snap.jobs:
        tip = f"{view.status}"
        if view.attempts:
            tip += f", attempt {view.attempts}"
        lines.append(
            f'    {json.dumps(view.job.id)} [style="rounded,filled", '
            f"fillcolor={json.dumps(_DOT_FILL[view.status])}, "
            f"xlabel={json.dumps(tip, ensure_ascii=False)}];"
        )
    lines.append("}")
    return "\n".join(lines)


def state_text(snap: Snapshot) -> Group:
    """The jobs level by level, each with its parents and its status in colour."""
    rows: list[RenderableType] = [headline(snap), Text("")]
    width = max(len(view.job.id) for view in snap.jobs)
    last = -1
    for view in snap.jobs:
        head = f"L{view.level}" if view.level != last else ""
        if view.level != last and last >= 0:
            rows.append(Text("    │", style="dim"))
        last = view.level
        line = Text(f"{head:<4}")
        status = view.status
        line.append(f"{SYMBOL.get(status, ' ')} {view.job.id:<{width}}  ", style=STYLE.get(status))
        line.append(f"{status:<16}", style=STYLE.get(status))
        extra = []
        if view.job.depends_on:
            extra.append(f"after {', '.join(view.job.depends_on)}")
        progress = _progress_note(view) if view.job.fan_out is not None else ""
        if progress:
            extra.append(progress)
        duration = human_duration(view.duration(snap.read_at))
        if duration:
            extra.append(duration)
        line.append("  ".join(extra), style="dim")
        rows.append(line)
    return Group(*rows)
