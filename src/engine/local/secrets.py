"""Secret parameter values of local sessions, kept out of the state database.

Each session's secrets are one JSON file that only the current user can read
(mode 0600, in a 0700 folder), like ``~/.aws/credentials``: the database,
the recorded inputs, the history and every command's output show
``******`` or ``${name}`` in their place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class FileSecrets:
    """Implements the Secrets port with one private file per session."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)

    def _path(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.json"

    def put(self, session_id: str, values: Mapping[str, Any]) -> None:
        merged = {**self.get(session_id), **values}
        path = self._path(session_id)
        # Created 0600 from the start: the values never sit in a readable file.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(merged, handle)

    def get(self, session_id: str) -> Mapping[str, Any]:
        try:
            return json.loads(self._path(session_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
