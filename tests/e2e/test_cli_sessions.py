"""Sessions through the CLI, end to end on the local backend.

Pipelines of ``custom`` jobs (small Python commands) stand in for AWS: a job
writes its output as JSON to ``$BUNSUI_OUTPUT``, fails with exit code 1, or
waits for a file the test creates, so nothing here depends on timing. Every
job appends a line to its own counter file, which tells how often it ran.

Background drivers (``--detach``), ``kill -9`` and ``logs tail --follow`` run
the installed ``bunsui`` in subprocesses; the rest calls ``main()`` in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bunsui.cli import main

pytestmark = pytest.mark.e2e
BUNSUI = shutil.which("bunsui", path=str(Path(sys.executable).parent))
HANG_GUARD = 30.0
"""Seconds after which a wait is a hang, not slowness: the test fails instead of blocking."""

JOB_KEYS = {
    "id",
    "name",
    "type",
    "level",
    "status",
    "attempts",
    "started_at",
    "ended_at",
    "duration",
    "inputs",
    "output",
    "error",
    "reason",
    "items",
}
SESSION_KEYS = {
    "session_id",
    "pipeline",
    "pipeline_version",
    "status",
    "reason",
    "parameters",
    "created_at",
    "ended_at",
    "duration",
    "jobs_total",
    "jobs_finished",
    "jobs_failed",
    "driver_pid",
    "jobs",
}
LOG_KEYS = {"at", "job", "attempt", "level", "source", "event", "message"}


# ---------------------------------------------------------------------- helpers


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh BUNSUI_HOME, and the test's folder as the working folder."""
    monkeypatch.setenv("BUNSUI_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def bunsui(*args: str, timeout: float = HANG_GUARD) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it (BUNSUI_HOME from the environment)."""
    assert BUNSUI, "the bunsui command is not installed in this environment"
    return subprocess.run(
        [BUNSUI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def wait_until(check: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def python_job(code: str, **extra: Any) -> dict[str, Any]:
    """A custom job running Python code (without a shell: no quoting to get wrong)."""
    return {"type": "custom", "parameters": {"command": [sys.executable, "-c", code]}, **extra}


def counted(folder: Path, name: str, code: str) -> str:
    """Code that first appends a line to ``<name>.count``."""
    return f"open({str(folder / (name + '.count'))!r}, 'a').write('ran\\n'); {code}"


def write_pipeline(path: Path, name: str, jobs: list[dict[str, Any]], **top: Any) -> Path:
    document = {"version": "1.0", "name": name, **top, "jobs": jobs}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def two_step(folder: Path, file: str = "two.yaml", description: str = "two steps") -> Path:
    """``produce`` writes {"word", "n"}; ``consume`` reads ${word}, fails when ${fail}."""
    produce = counted(
        folder,
        "produce",
        "import json, os, sys; print('producing ${greeting}'); "
        "print('ERROR: a loud line', file=sys.stderr); "
        "json.dump({'word': '${greeting}', 'n': 2}, open(os.environ['BUNSUI_OUTPUT'], 'w'))",
    )
    consume = counted(
        folder,
        "consume",
        "import json, os, sys; print('got ${word}'); "
        "json.dump({'echo': '${word}'}, open(os.environ['BUNSUI_OUTPUT'], 'w')); "
        "sys.exit(1 if '${fail}' == 'true' else 0)",
    )
    return write_pipeline(
        folder / file,
        "Two Step",
        [
            {"id": "produce", **python_job(produce)},
            {"id": "consume", "depends_on": ["produce"], **python_job(consume)},
        ],
        description=description,
        parameters=[
            {"name": "greeting", "type": "string", "default": "hi"},
            {"name": "fail", "type": "boolean", "default": False},
        ],
    )


def waiting_job(
    folder: Path, name: str, then: str = "print('released')", once: bool = False
) -> str:
    """Code that writes its pid to ``<name>.pid``, then waits for ``<name>.go``.

    With ``once``, only the first run waits: later ones print and end at once.
    """
    pid, go, runs = (str(folder / f"{name}.{ext}") for ext in ("pid", "go", "count"))
    lines = ["import os, sys, time", f"open({runs!r}, 'a').write('ran\\n')"]
    if once:
        lines.append(f"if len(open({runs!r}).readlines()) > 1: print('again'); sys.exit(0)")
    lines += [
        f"open({pid!r}, 'w').write(str(os.getpid()))",
        "deadline = time.time() + 60",
        f"while not os.path.exists({go!r}) and time.time() < deadline: time.sleep(0.05)",
        then,
    ]
    return "\n".join(lines)


def read_pid(path: Path) -> int:
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), f"{path.name}"))


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def detach(*args: str) -> dict[str, Any]:
    result = bunsui(*args, "--detach", "--format", "json")
    assert result.returncode == 0, result.stderr
    return as_json(result)


def status(session_id: str) -> dict[str, Any]:
    result = bunsui("session", "status", "--session-id", session_id, "--format", "json")
    assert result.returncode == 0, result.stderr
    return as_json(result)


def job(session: dict[str, Any], job_id: str) -> dict[str, Any]:
    return next(entry for entry in session["jobs"] if entry["id"] == job_id)


# ---------------------------------------------------------------------- pipelines


def test_pipeline_create_list_show_update_delete_keeps_versions(home, capsys):
    file = two_step(home)
    code, out, err = cli(capsys, "pipeline", "create", "--file", str(file))
    assert code == 0, err
    assert "'Two Step' created as version 1" in out

    code, _, err = cli(capsys, "pipeline", "create", "--file", str(file))
    assert code == 2
    assert err.count("\n") == 1 and "already exists" in err and "pipeline update" in err

    code, out, _ = cli(capsys, "pipeline", "update", "--file", str(file))
    assert code == 0 and "unchanged" in out and "1." in out

    two_step(home, description="changed")
    code, out, _ = cli(capsys, "pipeline", "update", "--file", str(file))
    assert code == 0 and "new version 2" in out

    code, out, _ = cli(capsys, "pipeline", "list", "--format", "json")
    assert code == 0
    [listed] = json.loads(out)
    assert (listed["name"], listed["version"]) == ("Two Step", 2)
    assert listed["created_at"]
    code, out, _ = cli(capsys, "pipeline", "list")
    assert "Two Step" in out and "2" in out

    code, out, _ = cli(capsys, "pipeline", "show", "Two Step")
    assert code == 0
    assert "version 2" in out and "changed" in out and "id: produce" in out
    code, out, _ = cli(capsys, "pipeline", "show", "Two Step", "--version", "1", "--format", "json")
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["latest_version"] == 2
    assert shown["jobs"] == ["produce", "consume"]
    assert shown["levels"] == [["produce"], ["consume"]]
    assert yaml.safe_load(shown["document"])["description"] == "two steps"

    code, out, _ = cli(capsys, "pipeline", "delete", "Two Step")
    assert code == 0 and "deleted" in out
    code, out, _ = cli(capsys, "pipeline", "list", "--format", "json")
    assert json.loads(out) == []
    code, _, err = cli(capsys, "pipeline", "show", "Two Step")
    assert (
        code == 2
        and err
        == "error: pipeline 'Two Step' not found. "
        "Create it with: bunsui pipeline create --file FILE\n"
    )


def test_unknown_pipeline_suggests_close_names(home, capsys):
    cli(capsys, "pipeline", "create", "--file", str(two_step(home)))
    code, out, err = cli(capsys, "session", "start", "--pipeline", "Two Stp")
    assert code == 2 and out == ""
    assert (
        err
        == "error: pipeline 'Two Stp' not found. Did you mean 'Two Step'? (bunsui pipeline list)\n"
    )
    code, _, err = cli(
        capsys,
        "pipeline",
        "update",
        "--file",
        str(write_pipeline(home / "other.yaml", "Two Steps", [python_job("pass") | {"id": "a"}])),
    )
    assert code == 2 and "Did you mean 'Two Step'?" in err and err.count("\n") == 1


# ---------------------------------------------------------------------- foreground


def test_session_start_as_the_product_writes_it_succeeds_with_json(home):
    """The installed command, exactly the product's shape: start --pipeline --parameters k=v..."""
    two_step(home)
    assert bunsui("pipeline", "create", "--file", "two.yaml").returncode == 0
    result = bunsui(
        "session",
        "start",
        "--pipeline",
        "Two Step",
        "--parameters",
        "greeting=hello",
        "fail=false",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    session = as_json(result)
    assert set(session) == SESSION_KEYS
    assert session["status"] == "succeeded"
    assert session["pipeline"] == "Two Step" and session["pipeline_version"] == 1
    assert session["parameters"] == {"greeting": "hello", "fail": False}
    assert (session["jobs_total"], session["jobs_finished"], session["jobs_failed"]) == (2, 2, 0)
    assert session["created_at"] and session["ended_at"] and session["duration"] >= 0
    assert session["driver_pid"] is None
    produce, consume = session["jobs"]
    for entry in (produce, consume):
        assert set(entry) == JOB_KEYS
        assert entry["status"] == "succeeded"
        assert entry["attempts"] == 1
        assert entry["started_at"] <= entry["ended_at"]
        assert entry["error"] is None and entry["items"] is None and entry["type"] == "custom"
    assert (produce["id"], produce["level"], consume["id"], consume["level"]) == (
        "produce",
        0,
        "consume",
        1,
    )
    assert produce["output"] == {"word": "hello", "n": 2}
    assert "print('producing hello')" in produce["inputs"]["command"][2]
    # consume's ${word} was resolved from produce's output
    assert "print('got hello')" in consume["inputs"]["command"][2]
    assert consume["output"] == {"echo": "hello"}
    assert (count(home / "produce.count"), count(home / "consume.count")) == (1, 1)


def test_failed_job_exits_1_then_retry_with_a_fixed_parameter_keeps_what_succeeded(home, capsys):
    cli(capsys, "pipeline", "create", "--file", str(two_step(home)))
    code, out, err = cli(
        capsys, "session", "start", "--pipeline", "Two Step", "-p", "fail=true", "--format", "json"
    )
    assert code == 1, err
    failed = json.loads(out)
    assert failed["status"] == "failed" and failed["jobs_failed"] == 1
    assert job(failed, "produce")["status"] == "succeeded"
    assert job(failed, "consume")["status"] == "failed"
    assert job(failed, "consume")["error"] == "exit code 1"
    session_id = failed["session_id"]

    code, out, err = cli(capsys, "session", "status", "--session-id", session_id)
    assert code == 0
    assert (
        "failed" in out
        and "exit code 1" in out
        and f"session retry --session-id {session_id}" in out
    )

    code, out, err = cli(
        capsys,
        "session",
        "retry",
        "-s",
        session_id,
        "--parameters",
        "fail=false",
        "--format",
        "json",
    )
    assert code == 0, err
    retried = json.loads(out)
    assert retried["status"] == "succeeded" and retried["session_id"] == session_id
    assert retried["parameters"]["fail"] is False
    assert job(retried, "produce")["output"] == {"word": "hi", "n": 2}
    assert job(retried, "produce")["started_at"] == job(failed, "produce")["started_at"]
    assert job(retried, "consume")["output"] == {"echo": "hi"}
    assert count(home / "produce.count") == 1  # not run again
    assert count(home / "consume.count") == 2

    code, _, err = cli(capsys, "session", "retry", "-s", session_id)
    assert code == 2
    assert err == (
        f"error: session '{session_id}' is succeeded; only a failed or cancelled session "
        "can be retried.\n"
    )


def test_run_file_stores_a_version_and_starts_a_session(home, capsys):
    file = two_step(home)
    code, out, err = cli(capsys, "run", str(file), "--parameters", "greeting=yo")
    assert code == 0, err
    assert "pipeline 'Two Step' version 1" in out
    assert "succeeded" in out and "session id: " in out and "bunsui logs tail --session-id" in out
    two_step(home, description="edited")
    code, out, _ = cli(capsys, "run", str(file), "-p", "fail=true", "--format", "json")
    assert code == 1
    session = json.loads(out)
    assert session["pipeline_version"] == 2 and session["status"] == "failed"
    code, out, _ = cli(capsys, "session", "list", "--format", "json")
    assert [s["pipeline_version"] for s in json.loads(out)] == [2, 1]
    code, out, _ = cli(capsys, "session", "list", "--status", "failed", "--format", "json")
    assert [s["session_id"] for s in json.loads(out)] == [session["session_id"]]
    code, out, _ = cli(capsys, "session", "list", "--limit", "1", "--pipeline", "Two Step")
    assert code == 0 and session["session_id"] in out and out.count("Two Step") == 1


def test_fan_out_items_in_json_and_graph_formats(home, capsys):
    each = counted(
        home,
        "each",
        "import json, os; json.dump({'square': ${item} * ${item}}, "
        "open(os.environ['BUNSUI_OUTPUT'], 'w'))",
    )
    write_pipeline(
        home / "fan.yaml",
        "Fan",
        [
            {
                "id": "each",
                "for_each": {"items": [1, 2, 3], "max_concurrency": 2},
                **python_job(each),
            },
        ],
    )
    code, out, err = cli(capsys, "run", "fan.yaml", "--format", "json")
    assert code == 0, err
    session = json.loads(out)
    [fan] = session["jobs"]
    assert fan["status"] == "succeeded" and fan["output"] is None
    assert [(i["index"], i["item"], i["status"], i["output"]) for i in fan["items"]] == [
        (0, 1, "succeeded", {"square": 1}),
        (1, 2, "succeeded", {"square": 4}),
        (2, 3, "succeeded", {"square": 9}),
    ]
    session_id = session["session_id"]
    code, out, _ = cli(capsys, "session", "graph", "-s", session_id)
    assert code == 0 and "each" in out and "succeeded" in out and "3/3 items" in out
    code, out, _ = cli(capsys, "session", "graph", "-s", session_id, "--format", "mermaid")
    assert out.startswith("flowchart TD") and "classDef succeeded" in out
    assert "class each succeeded" in out
    code, out, _ = cli(capsys, "session", "graph", "-s", session_id, "--format", "dot")
    assert out.startswith('digraph "Fan"') and 'fillcolor="#c8e6c9"' in out
    assert out.rstrip().endswith("}")


def test_graph_colours_a_failed_session(home, capsys):
    cli(capsys, "pipeline", "create", "--file", str(two_step(home)))
    _, out, _ = cli(
        capsys, "session", "start", "--pipeline", "Two Step", "-p", "fail=true", "--format", "json"
    )
    session_id = json.loads(out)["session_id"]
    _, out, _ = cli(capsys, "session", "graph", "-s", session_id, "--format", "mermaid")
    assert "class produce succeeded" in out and "class consume failed" in out
    assert "classDef failed" in out
    _, out, _ = cli(capsys, "session", "graph", "-s", session_id, "--format", "dot")
    assert '"consume" [style="rounded,filled", fillcolor="#ef9a9a"' in out
    _, out, _ = cli(capsys, "session", "graph", "-s", session_id)
    assert "✗ consume" in out and "after produce" in out


# ---------------------------------------------------------------------- logs


def test_logs_tail_filter_and_download(home, capsys):
    cli(capsys, "pipeline", "create", "--file", str(two_step(home)))
    code, out, _ = cli(
        capsys, "session", "start", "--pipeline", "Two Step", "-p", "fail=true", "--format", "json"
    )
    session_id = json.loads(out)["session_id"]

    code, out, err = cli(capsys, "logs", "tail", "--session-id", session_id)
    assert code == 0, err
    lines = out.splitlines()
    assert "session started" in lines[0] and "session failed" in lines[-1]
    produced = next(i for i, line in enumerate(lines) if "producing hi" in line)
    got = next(i for i, line in enumerate(lines) if "got hi" in line)
    assert produced < got  # time order across jobs
    assert (
        "produce#1" in lines[produced] and "INFO" in lines[produced] and "stdout" in lines[produced]
    )

    code, out, _ = cli(capsys, "logs", "filter", "--session-id", session_id, "--job-id", "produce")
    assert "producing hi" in out and "got hi" not in out and "session started" not in out

    code, out, _ = cli(capsys, "logs", "filter", "-s", session_id, "--level", "ERROR")
    assert "a loud line" in out  # stderr with "ERROR:" is an error
    assert "failed: exit code 1" in out and "session failed" in out
    assert "producing" not in out and "attempt 1 started" not in out

    code, out, _ = cli(capsys, "logs", "filter", "-s", session_id, "--from", "2999-01-01T00:00:00")
    assert code == 0 and out == ""
    code, out, _ = cli(
        capsys,
        "logs",
        "filter",
        "-s",
        session_id,
        "--from",
        "1h",
        "--to",
        "2999-01-01T00:00:00+00:00",
        "--job-id",
        "consume",
    )
    assert "got hi" in out
    code, out, err = cli(capsys, "logs", "filter", "-s", session_id, "--from", "yesterday")
    assert code == 2 and out == "" and err.startswith("error: --from 'yesterday' is not a time")

    target = home / "logs.json"
    code, out, err = cli(capsys, "logs", "download", "-s", session_id, "--output", str(target))
    assert code == 0, err
    entries = json.loads(target.read_text())
    assert all(set(entry) == LOG_KEYS for entry in entries)
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    loud = next(e for e in entries if e["message"] == "ERROR: a loud line")
    assert (loud["job"], loud["attempt"], loud["level"], loud["source"], loud["event"]) == (
        "produce",
        1,
        "ERROR",
        "stderr",
        None,
    )
    failed = next(e for e in entries if e["event"] == "job_failed")
    assert (failed["job"], failed["level"], failed["source"]) == ("consume", "ERROR", "event")
    assert entries[0]["event"] == "session_started" and entries[0]["job"] is None


# ---------------------------------------------------------------------- background


def test_detach_then_status_pause_resume_and_follow_until_done(home):
    write_pipeline(
        home / "wait.yaml",
        "Waiting",
        [
            {"id": "hold", **python_job(waiting_job(home, "hold"))},
            {"id": "after", "depends_on": ["hold"], **python_job(counted(home, "after", "pass"))},
        ],
    )
    assert bunsui("pipeline", "create", "-f", "wait.yaml").returncode == 0
    started = detach("session", "start", "--pipeline", "Waiting")
    session_id = started["session_id"]
    assert started["status"] == "running"
    hold_pid = read_pid(home / "hold.pid")
    try:
        seen = status(session_id)  # a second process reads what the driver writes
        assert seen["status"] == "running" and seen["driver_pid"]
        assert job(seen, "hold")["status"] == "running"
        assert job(seen, "after")["status"] == "pending"
        table = bunsui("session", "status", "--session-id", session_id)
        assert "driven by process" in table.stdout and "running" in table.stdout

        paused = bunsui("session", "pause", "-s", session_id)
        assert paused.returncode == 0 and "is paused" in paused.stdout
        assert status(session_id)["status"] == "paused"
        resumed = bunsui("session", "resume", "-s", session_id)
        assert resumed.returncode == 0 and "is running" in resumed.stdout

        follow = subprocess.Popen(
            [BUNSUI, "logs", "tail", "--session-id", session_id, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        (home / "hold.go").touch()
        out, err = follow.communicate(timeout=HANG_GUARD)
    finally:
        (home / "hold.go").touch()
        kill_group(hold_pid)
    assert follow.returncode == 0, err
    assert "session started" in out and "released" in out
    assert out.rstrip().splitlines()[-1].endswith("session succeeded")
    done = status(session_id)
    assert done["status"] == "succeeded" and done["driver_pid"] is None
    assert count(home / "after.count") == 1


def test_cancel_a_detached_session_kills_its_running_job(home):
    write_pipeline(
        home / "long.yaml",
        "Long",
        [
            {"id": "sleepy", **python_job(waiting_job(home, "sleepy"))},
            {"id": "never", "depends_on": ["sleepy"], **python_job(counted(home, "never", "pass"))},
        ],
    )
    session_id = detach("run", "long.yaml")["session_id"]
    pid = read_pid(home / "sleepy.pid")
    try:
        result = bunsui("session", "cancel", "--session-id", session_id)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"session {session_id} is cancelled.\n"
        wait_until(lambda: not alive(pid), "the cancelled job's process to end")
    finally:
        kill_group(pid)
    session = status(session_id)
    assert session["status"] == "cancelled" and session["reason"] == "cancelled by user"
    assert job(session, "sleepy")["status"] == "cancelled"
    assert count(home / "never.count") == 0
    again = bunsui("session", "cancel", "--session-id", session_id)
    assert again.returncode == 2
    assert again.stderr == f"error: session '{session_id}' has ended (cancelled).\n"

    # retry in the background: the cancelled job runs again, then what it skipped
    (home / "sleepy.pid").unlink()
    retried = detach("session", "retry", "--session-id", session_id)
    assert retried["status"] == "running"
    pid = read_pid(home / "sleepy.pid")
    try:
        (home / "sleepy.go").touch()
        done = wait_until(
            lambda: (found := status(session_id))["status"] == "succeeded" and found,
            "the retried session to succeed",
        )
    finally:
        kill_group(pid)
    assert job(done, "sleepy")["output"] is None and job(done, "never")["status"] == "succeeded"
    assert (count(home / "sleepy.count"), count(home / "never.count")) == (2, 1)


def test_kill_9_of_the_driver_then_resume_finishes_without_rerunning(home):
    # The first attempt waits (and loses its driver); the second ends at once.
    flaky = waiting_job(home, "flaky", once=True)
    write_pipeline(
        home / "crash.yaml",
        "Crash",
        [
            {"id": "first", **python_job(counted(home, "first", "print('first')"))},
            {
                "id": "flaky",
                "depends_on": ["first"],
                "retries": 1,
                "retry_delay": 0,
                **python_job(flaky),
            },
            {"id": "last", "depends_on": ["flaky"], **python_job(counted(home, "last", "pass"))},
        ],
    )
    session_id = detach("run", "crash.yaml")["session_id"]
    orphan = read_pid(home / "flaky.pid")
    try:
        driver = status(session_id)["driver_pid"]
        assert driver
        os.kill(driver, signal.SIGKILL)
        wait_until(lambda: status(session_id)["driver_pid"] is None, "the driver to be gone")
        assert status(session_id)["status"] == "running"
        listed = bunsui("session", "list")
        assert "(no driver)" in listed.stdout

        result = bunsui("session", "resume", "--session-id", session_id, "--format", "json")
    finally:
        kill_group(orphan)
    assert result.returncode == 0, result.stderr
    session = as_json(result)
    assert session["status"] == "succeeded"
    assert job(session, "flaky")["attempts"] == 2  # the interrupted attempt counted as failed
    runs = [count(home / f"{name}.count") for name in ("first", "flaky", "last")]
    assert runs == [1, 2, 1]  # nothing that succeeded ran again
    logs = bunsui("logs", "filter", "-s", session_id, "--job-id", "flaky", "--level", "WARNING")
    assert "attempt 1 failed: the local driver stopped while this attempt ran" in logs.stdout


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "command",
    [
        ["session", "status", "--session-id", "nope"],
        ["session", "status", "--session-id", "nope", "--format", "json"],
        ["session", "cancel", "--session-id", "nope"],
        ["session", "pause", "--session-id", "nope"],
        ["session", "resume", "--session-id", "nope"],
        ["session", "retry", "--session-id", "nope"],
        ["session", "graph", "--session-id", "nope", "--format", "dot"],
        ["logs", "tail", "--session-id", "nope"],
        ["logs", "tail", "--session-id", "nope", "--follow"],
        ["logs", "filter", "--session-id", "nope", "--job-id", "x"],
        ["logs", "download", "--session-id", "nope", "--output", "x.json"],
    ],
)
def test_unknown_session_is_one_line_and_exit_2(home, capsys, command):
    code, out, err = cli(capsys, *command)
    assert (code, out, err) == (2, "", "error: session 'nope' not found.\n")


def test_bad_input_to_session_start_is_exit_2(home, capsys):
    cli(capsys, "pipeline", "create", "--file", str(two_step(home)))
    code, out, err = cli(capsys, "session", "start", "--pipeline", "Two Step", "-p", "fail=maybe")
    assert code == 2 and out == "" and err.startswith("error: parameter 'fail':")
    assert err.count("\n") == 1
    code, _, err = cli(capsys, "session", "start", "--pipeline", "Two Step", "-p", "nosuch=1")
    assert code == 2 and "parameter 'nosuch'" in err
    code, _, err = cli(
        capsys, "session", "start", "--pipeline", "Two Step", "--local-map", "x.yaml"
    )
    assert code == 2 and err == "error: --local-map x.yaml: file not found.\n"
    code, out, _ = cli(capsys, "session", "list", "--format", "json")
    assert json.loads(out) == []  # nothing was started
