"""A ``secret: true`` parameter on the local backend, through the CLI: the job gets the value,
and no surface Bunsui controls shows it.

One distinctive value is given to a session and searched for, byte for byte,
in each surface: what the CLI prints while the session runs and the engine's
log records (one test), the history and everything else the state database
holds (one test), and ``bunsui session status`` in every format (one test).
Each test first checks that the job itself received the value, so none of them
can pass because the value went nowhere. What a job prints or returns is the
job's own (docs/local-backend.md, Secrets), so the jobs here print nothing of it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bunsui.cli import main

pytestmark = pytest.mark.e2e

SECRET = "tok-Qv7x-SECRET-91ce"
"""The secret: distinctive, so that finding it anywhere is a leak and nothing else."""


@dataclass
class Ran:
    """A finished local session of the secret pipeline."""

    home: Path
    session_id: str
    printed: str
    records: list[logging.LogRecord]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in-process; its exit code and everything it printed (out and err)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def secret_pipeline(folder: Path) -> Path:
    """A job that reads the secret three ways (environment, a longer template, its
    condition) and writes what it got to a file; a second job runs after it."""
    seen = folder / "seen.txt"
    write = "import os; open(os.environ['SEEN'], 'w').write(os.environ['TOKEN'])"
    document = {
        "version": "1.1",
        "name": "Secret Local",
        "parameters": [
            {
                "name": "api_token",
                "type": "string",
                "secret": True,
                "required": True,
                "validation": {"pattern": "tok-.+"},
            },
            {"name": "region", "type": "string", "default": "eu"},
        ],
        "jobs": [
            {
                "id": "call",
                "type": "custom",
                "condition": "${api_token != 'nope'}",
                "parameters": {
                    "command": [sys.executable, "-c", write],
                    "environment": {
                        "TOKEN": "${api_token}",
                        "HEADER": "Bearer ${api_token} for ${region}",
                        "SEEN": str(seen),
                    },
                },
            },
            {
                "id": "after",
                "type": "custom",
                "depends_on": ["call"],
                "parameters": {"command": [sys.executable, "-c", "print('after')"]},
            },
        ],
    }
    path = folder / "secret.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def ran(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Ran]:
    """The session run to its end, with every log record of every level kept."""
    monkeypatch.setenv("BUNSUI_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    file = secret_pipeline(tmp_path)
    printed = []
    code, out = cli(capsys, "pipeline", "create", "--file", str(file))
    assert code == 0, out
    # A value that breaks the pattern is refused without being shown.
    code, out = cli(
        capsys, "session", "start", "--pipeline", "Secret Local", "-p", f"api_token=x{SECRET}"
    )
    assert code == 2 and "******" in out, out
    printed.append(out)
    code, out = cli(
        capsys,
        "session",
        "start",
        "--pipeline",
        "Secret Local",
        "-p",
        f"api_token={SECRET}",
        "--format",
        "json",
    )
    assert code == 0, out
    session_id = json.loads(out)["session_id"]
    printed.append(out)
    assert (tmp_path / "seen.txt").read_text() == SECRET  # the job got the value
    yield Ran(tmp_path, session_id, "\n".join(printed), list(caplog.records))


def test_what_a_local_run_prints_and_logs_never_holds_the_secret(ran: Ran):
    assert SECRET not in ran.printed
    # The engine logs (at any level) only what fails; whatever it logged is searched too.
    for record in ran.records:
        assert SECRET not in record.getMessage(), record
        assert SECRET not in repr(record.__dict__), record


def test_the_local_history_and_state_never_hold_the_secret(
    ran: Ran, capsys: pytest.CaptureFixture[str]
):
    code, out = cli(capsys, "logs", "tail", "--session-id", ran.session_id)
    assert code == 0 and "session succeeded" in out, out
    assert SECRET not in out
    target = ran.home / "entries.json"
    code, out = cli(capsys, "logs", "download", "-s", ran.session_id, "--output", str(target))
    assert code == 0, out
    entries = json.loads(target.read_text())
    assert {entry["event"] for entry in entries} >= {"session_started", "job_succeeded"}
    assert SECRET not in json.dumps(entries)
    # Everything Bunsui keeps of the session but the secrets file itself: the database
    # (and its write-ahead log) and the jobs' log files.
    state = ran.home / "state"
    secrets_folder = state / "secrets"
    kept = [p for p in state.rglob("*") if p.is_file() and secrets_folder not in p.parents]
    assert any(p.name.startswith("state.db") for p in kept), kept
    for path in kept:
        assert SECRET.encode() not in path.read_bytes(), path
    (secrets_file,) = secrets_folder.iterdir()
    assert json.loads(secrets_file.read_text()) == {"api_token": SECRET}
    assert secrets_file.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("output", ["table", "json", "yaml"])
def test_session_status_never_shows_the_secret(
    ran: Ran, capsys: pytest.CaptureFixture[str], output: str
):
    code, out = cli(capsys, "session", "status", "--session-id", ran.session_id, "--format", output)

    assert code == 0, out
    assert SECRET not in out
    if output != "table":  # the table lists jobs, not parameters
        assert "******" in out
    if output == "json":
        session = json.loads(out)
        assert session["parameters"]["api_token"] == "******"
        (call, _) = session["jobs"]
        assert call["inputs"]["environment"]["TOKEN"] == "${api_token}"
        assert call["inputs"]["environment"]["HEADER"] == "Bearer ${api_token} for eu"
