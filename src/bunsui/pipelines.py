"""``bunsui pipeline create|list|show|update|delete``: stored pipelines and their versions.

A pipeline is stored as immutable versions (1, 2, ...); storing the same text
again adds no version. A session pins the version it started with, so
``update`` and ``delete`` never change a session that has started.

This module also holds the option types the command modules share.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bunsui.backends import open_backend
from bunsui.output import Format, console, emit
from engine.errors import BunsuiError, Conflict, PipelineNotFound
from engine.loader import read_pipeline
from engine.pipeline import Pipeline

if TYPE_CHECKING:
    from bunsui.backends import Backend

FileOption = Annotated[
    Path, typer.Option("--file", "-f", help="The pipeline YAML file.", show_default=False)
]
FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]
ParametersOption = Annotated[
    list[str] | None,
    typer.Option(
        "--parameters",
        "-p",
        help="name=value pairs; several may follow one --parameters.",
        show_default=False,
    ),
]
ParametersFileOption = Annotated[
    Path | None,
    typer.Option("--parameters-file", help="YAML or JSON mapping of parameter values."),
]
NameArgument = Annotated[str, typer.Argument(help="The pipeline's name.", show_default=False)]


class UnknownPipeline(PipelineNotFound):
    """A pipeline name that is not stored, with the stored names that come close."""

    def __init__(self, name: str, version: int | None, close: list[str]) -> None:
        super().__init__(name, version)
        self.close = close
        if close and version is None:
            choices = " or ".join(f"'{c}'" for c in close)
            self.args = (f"{self.args[0]} Did you mean {choices}? (bunsui pipeline list)",)
        elif version is None:
            self.args = (f"{self.args[0]} Create it with: bunsui pipeline create --file FILE",)


def stored_pipeline(
    backend: Backend, name: str, version: int | None = None
) -> tuple[Pipeline, int]:
    """A stored pipeline version, or an error that suggests the names that come close.

    Raises:
        UnknownPipeline: no such pipeline (or version).
    """
    try:
        return backend.pipeline(name, version)
    except PipelineNotFound as exc:
        names = [row[0] for row in backend.store.list_pipelines()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if not close:
            folded = {n.casefold(): n for n in names}
            close = [folded[name.casefold()]] if name.casefold() in folded else []
        raise UnknownPipeline(name, exc.version, close) from None


def _exists(backend: Backend, name: str) -> bool:
    try:
        backend.store.get_pipeline_version(name)
    except PipelineNotFound:
        return False
    return True


def _latest_version(backend: Backend, name: str) -> int | None:
    try:
        return backend.store.get_pipeline_version(name)[0]
    except PipelineNotFound:
        return None


def _saved(fmt: Format, pipeline: Pipeline, version: int, file: Path, verb: str) -> None:
    if fmt is not Format.TABLE:
        emit(
            {"pipeline": pipeline.name, "version": version, "file": str(file), "result": verb},
            fmt,
        )
        return
    text = {
        "created": "created as version",
        "updated": "updated: new version",
        "unchanged": "unchanged: the file is the stored version",
    }[verb]
    console().print(f"✓ pipeline '{escape(pipeline.name)}' {text} {version}.")


def register(pipeline_app: typer.Typer) -> None:
    """Add the stored-pipeline commands to ``bunsui pipeline``."""
    pipeline_app.command("create")(create)
    pipeline_app.command("update")(update)
    pipeline_app.command("list")(list_pipelines)
    pipeline_app.command("show")(show)
    pipeline_app.command("delete")(delete)


def create(file: FileOption, fmt: FormatOption = Format.TABLE) -> None:
    """Validate a pipeline file and store it as version 1 of a new pipeline."""
    backend = open_backend()
    pipeline = read_pipeline(file)
    if _exists(backend, pipeline.name):
        raise Conflict(
            f"pipeline '{pipeline.name}' already exists; store a new version with: "
            f"bunsui pipeline update --file {file}"
        )
    pipeline, version = backend.save_pipeline(file)
    _saved(fmt, pipeline, version, file, "created")


def update(file: FileOption, fmt: FormatOption = Format.TABLE) -> None:
    """Store a pipeline file as the next version of an existing pipeline."""
    backend = open_backend()
    pipeline = read_pipeline(file)
    before = _latest_version(backend, pipeline.name)
    if before is None:
        stored_pipeline(backend, pipeline.name)  # raises, with close names
    pipeline, version = backend.save_pipeline(file)
    _saved(fmt, pipeline, version, file, "unchanged" if version == before else "updated")


def list_pipelines(fmt: FormatOption = Format.TABLE) -> None:
    """List the stored pipelines: name, latest version and when it was stored."""
    rows = open_backend().store.list_pipelines()
    if fmt is not Format.TABLE:
        emit(
            [{"name": name, "version": version, "created_at": at} for name, version, at in rows],
            fmt,
        )
        return
    out = console()
    if not rows:
        out.print("No pipelines. Store one with: bunsui pipeline create --file FILE")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("NAME")
    table.add_column("VERSION", justify="right")
    table.add_column("CREATED")
    for name, version, at in rows:
        table.add_row(escape(name), str(version), _when(at))
    out.print(table)


def _when(at: str | None) -> str:
    """An ISO time as people read it: local time, to the second."""
    from bunsui.progress import local_time

    return local_time(at, with_date=True)


def show(
    name: NameArgument,
    version: Annotated[
        int | None, typer.Option("--version", help="A stored version (default: the latest).")
    ] = None,
    fmt: FormatOption = Format.TABLE,
) -> None:
    """Print a stored pipeline: a summary, then its YAML as stored."""
    backend = open_backend()
    pipeline, number = stored_pipeline(backend, name, version)
    _, text = backend.store.get_pipeline_version(name, number)
    latest = _latest_version(backend, name)
    summary: dict[str, Any] = {
        "name": pipeline.name,
        "version": number,
        "latest_version": latest,
        "description": pipeline.description,
        "language_version": pipeline.version,
        "jobs": [job.id for job in pipeline.jobs],
        "levels": pipeline.graph.levels(),
        "parameters": [p.name for p in pipeline.parameters],
        "document": text,
    }
    if fmt is not Format.TABLE:
        emit(summary, fmt)
        return
    out = console()
    note = "" if latest in (None, number) else f" (latest is {latest})"
    out.print(f"[bold]{escape(pipeline.name)}[/bold] — version {number}{note}")
    if pipeline.description:
        out.print(escape(pipeline.description))
    out.print(
        f"{len(pipeline.jobs)} jobs in {len(summary['levels'])} levels; parameters: "
        f"{escape(', '.join(summary['parameters']) or 'none')}"
    )
    out.print("")
    out.print(escape(text.rstrip("\n")), soft_wrap=True)


def delete(name: NameArgument, fmt: FormatOption = Format.TABLE) -> None:
    """Delete a pipeline: it is no longer listed or started.

    Sessions keep the version they pinned: status, logs, retry and resume still work.
    """
    backend = open_backend()
    latest = stored_pipeline(backend, name)[1]
    try:
        backend.store.delete_pipeline(name)
    except PipelineNotFound as exc:  # deleted by another process meanwhile
        raise BunsuiError(str(exc)) from None
    if fmt is not Format.TABLE:
        emit({"pipeline": name, "deleted": True, "latest_version": latest}, fmt)
        return
    console().print(
        f"✓ pipeline '{escape(name)}' deleted; its sessions keep the versions they pinned "
        f"(1 to {latest})."
    )
