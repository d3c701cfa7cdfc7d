"""Immutable pipeline versions in the local SQLite database.

A mixin of :class:`engine.local.store.SqliteStore`: the same connections and
transactions, its own tables (``pipelines``, ``pipeline_versions``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from sqlite3 import Connection

from engine.errors import PipelineNotFound


class PipelineVersions:
    """Pipeline documents stored as versions 1, 2, ...; a session pins one.

    Its methods run in the host store's ``_write()`` and ``_read()`` transactions.
    """

    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def put_pipeline_version(self, name: str, document: str, checksum: str, created_at: str) -> int:
        """Store a pipeline document as its next immutable version (1, 2, ...).

        Putting a deleted pipeline's name again brings it back, its old versions
        included.

        Returns:
            The new version, or the latest one when its checksum is ``checksum``
            (the same document deployed again adds no version).
        """
        with self._write() as conn:
            # IMMEDIATE: two deploys at once cannot both read version N and write N + 1.
            conn.execute(
                "INSERT INTO pipelines (name, deleted) VALUES (?, 0)"
                " ON CONFLICT (name) DO UPDATE SET deleted = 0",
                (name,),
            )
            latest = conn.execute(
                "SELECT version, checksum FROM pipeline_versions WHERE name = ?"
                " ORDER BY version DESC LIMIT 1",
                (name,),
            ).fetchone()
            if latest is not None and latest["checksum"] == checksum:
                return int(latest["version"])
            version = 1 if latest is None else latest["version"] + 1
            conn.execute(
                "INSERT INTO pipeline_versions (name, version, document, checksum, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, version, document, checksum, created_at),
            )
            return int(version)

    def get_pipeline_version(self, name: str, version: int | None = None) -> tuple[int, str]:
        """A pipeline's document: the latest version, or the one asked for.

        An explicit version stays readable after :meth:`delete_pipeline`, so the
        sessions that pinned it keep running.

        Returns:
            ``(version, document)``.

        Raises:
            PipelineNotFound: no such pipeline (or it was deleted and no version was
                given), or it has no version ``version``.
        """
        with self._read() as conn:
            pipeline = conn.execute(
                "SELECT deleted FROM pipelines WHERE name = ?", (name,)
            ).fetchone()
            if pipeline is None or (version is None and pipeline["deleted"]):
                raise PipelineNotFound(name)
            row = conn.execute(
                "SELECT version, document FROM pipeline_versions"
                " WHERE name = ? AND (? IS NULL OR version = ?) ORDER BY version DESC LIMIT 1",
                (name, version, version),
            ).fetchone()
            if row is None:
                raise PipelineNotFound(name, version)
            return int(row["version"]), row["document"]

    def list_pipelines(self) -> list[tuple[str, int, str]]:
        """``(name, latest version, its created_at)`` of every pipeline not deleted, by name."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT v.name, v.version, v.created_at FROM pipeline_versions v"
                " JOIN pipelines p ON p.name = v.name AND p.deleted = 0"
                " WHERE v.version = (SELECT MAX(version) FROM pipeline_versions"
                " WHERE name = v.name) ORDER BY v.name"
            ).fetchall()
        return [(row["name"], int(row["version"]), row["created_at"]) for row in rows]

    def delete_pipeline(self, name: str) -> None:
        """Mark a pipeline deleted: it leaves :meth:`list_pipelines` and a get without a
        version fails, but its versions stay readable by number for the sessions that
        pinned them.

        Raises:
            PipelineNotFound: no such pipeline, or it is already deleted.
        """
        with self._connection() as conn:
            cursor = conn.execute(
                "UPDATE pipelines SET deleted = 1 WHERE name = ? AND deleted = 0", (name,)
            )
            if cursor.rowcount == 0:
                raise PipelineNotFound(name)
