"""The Dispatcher port on this machine: every attempt runs in its own subprocess.

What runs comes from :class:`~engine.local.resolve.LocalResolver`:

- ``lambda`` (and a ``step_function`` mapped to a handler): the handler is
  called by :mod:`engine.local.lambda_host` in a fresh Python process, with
  the payload (the execution ``input``) and a Lambda-like context. A
  ``lambda`` payload that is an object without a ``bunsui`` key receives
  ``"bunsui": {"dispatch_id", "session_id", "job_id", "attempt"}``: Lambda's
  asynchronous invoke takes no idempotency token, so a handler de-duplicates
  re-sent attempts by ``dispatch_id`` (DESIGN: Dispatch). The function's
  timeout is enforced as Lambda does (``Task timed out after 3.00 seconds``).
- ``custom``, ``ecs`` and mapped ``glue``/``batch``/``emr``: the command runs
  with ``os.environ`` + the mapping's environment + the job's environment +
  ``BUNSUI_OUTPUT`` (a file the job may write JSON to: that JSON becomes the
  job's output) and ``BUNSUI_DISPATCH_ID``, ``BUNSUI_SESSION_ID``,
  ``BUNSUI_JOB_ID``, ``BUNSUI_ATTEMPT``. Exit code 0 is success.
- ``step_function`` mapped to a pipeline: the ``child_sessions`` callback runs
  it as a child session; what it returns is the job's output.

Each process leads its own process group, so :meth:`LocalDispatcher.stop`
stops everything the job started (SIGTERM, then SIGKILL after
:data:`STOP_GRACE` seconds). Every line a process writes is kept in the
:class:`LogBook`. POSIX only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

from engine.errors import DispatchFailed
from engine.events import AttemptFinished
from engine.local import lambda_host
from engine.local.resolve import CommandTarget, HandlerTarget, LocalResolver, PipelineTarget
from engine.ports import Dispatch
from engine.state import JobRun

STOP_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when a job is stopped."""
DRAIN_GRACE = 2.0
"""Seconds to wait for a job's pipes after its main process ended (a leftover child may
hold them); then the rest of its process group is killed, as ECS ends a task's container."""
CONTEXT_DEADLINE = 900.0
"""Seconds the context reports for a handler with no timeout (Lambda's maximum)."""
MAX_LINE = 64 * 1024
"""A longer output line is kept as several lines."""

_log = logging.getLogger(__name__)


def _utc_now() -> str:
    # Microseconds always, so lines of several files sort by their text.
    return datetime.now(UTC).isoformat(timespec="microseconds")


# ---------------------------------------------------------------- logs


@dataclass(frozen=True)
class LogLine:
    """One line a job wrote."""

    at: str
    stream: str
    """``stdout`` or ``stderr``."""
    message: str
    key: str
    attempt: int


class LogWriter:
    """Appends the lines of one attempt to its file; safe to share between threads."""

    def __init__(self, path: Path, clock: Callable[[], str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._clock = clock
        self._lock = threading.Lock()

    def write(self, stream: str, message: str) -> None:
        line = {"at": self._clock(), "stream": stream, "message": message}
        with self._lock:
            if not self._file.closed:
                # One write and a flush per line: a follower never sees half of one.
                self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class LogBook:
    """The output of every attempt, one JSON line per line written.

    Files are ``root/<session_id>/<key>/<attempt>.jsonl``; each line is
    ``{"at": ISO time, "stream": "stdout"|"stderr", "message": text}``.

    Args:
        root: The folder that holds the sessions' logs.
        clock: The time stamped on each line (default: UTC now, ISO-8601).
    """

    def __init__(self, root: Path, clock: Callable[[], str] | None = None) -> None:
        self.root = Path(root)
        self._clock = clock or _utc_now

    def path(self, session_id: str, key: str, attempt: int) -> Path:
        """The file of one attempt."""
        return self.root / _safe(session_id) / _safe(key) / f"{attempt}.jsonl"

    def writer(self, session_id: str, key: str, attempt: int) -> LogWriter:
        """A writer that appends to the file of one attempt."""
        return LogWriter(self.path(session_id, key, attempt), self._clock)

    def lines(self, session_id: str, job: str | None = None) -> list[LogLine]:
        """All lines of a session (or of one job: its key, or its job id with all its
        fan-out items), in time order."""
        return list(_sorted(self._read(session_id, job, {})))

    def follow(
        self,
        session_id: str,
        job: str | None = None,
        until: Callable[[], bool] | None = None,
        interval: float = 0.2,
    ) -> Iterator[LogLine]:
        """The lines there are, then new ones as they are written, in time order per poll.

        Args:
            until: Ends the iteration (after reading what was written before it
                said so) when it returns True; None follows for ever.
            interval: Seconds between polls.
        """
        offsets: dict[Path, int] = {}
        while True:
            done = until is not None and until()
            yield from _sorted(self._read(session_id, job, offsets))
            if done:
                return
            time.sleep(interval)

    def _read(self, session_id: str, job: str | None, offsets: dict[Path, int]) -> list[LogLine]:
        """Complete lines past ``offsets`` (updated) of the session's files."""
        folder = self.root / _safe(session_id)
        found: list[LogLine] = []
        for key_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
            key = unquote(key_dir.name)
            if job is not None and key != job and not key.startswith(f"{job}["):
                continue
            for path in key_dir.glob("*.jsonl"):
                with path.open("rb") as file:
                    file.seek(offsets.get(path, 0))
                    data = file.read()
                end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
                offsets[path] = offsets.get(path, 0) + end
                for raw in data[:end].splitlines():
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        item = json.loads(raw)
                        found.append(
                            LogLine(
                                item["at"], item["stream"], item["message"], key, int(path.stem)
                            )
                        )
        return found


def _sorted(lines: list[LogLine]) -> list[LogLine]:
    return sorted(lines, key=lambda line: line.at)  # stable: a file's own order is kept


def _safe(name: str) -> str:
    """A file name for a session id or key that cannot leave its folder."""
    text = quote(name, safe="[]-_.")
    return "%2E" + text[1:] if text.startswith(".") else text


# ---------------------------------------------------------------- runs


@dataclass(eq=False)
class _Run:
    """One attempt in flight."""

    order: Dispatch
    handle: str
    workdir: Path | None = None
    log: LogWriter | None = None
    proc: subprocess.Popen[bytes] | None = None
    timeout: float | None = None
    handler: bool = False
    stopped: bool = False
    finished: bool = False
    last_stderr: str = ""
    thread: threading.Thread | None = None


class LocalDispatcher:
    """Runs jobs on this machine and reports each attempt's end exactly once.

    Args:
        report: Called (from a worker thread) with the AttemptFinished of each attempt.
        resolver: Finds what runs each job.
        logs: Keeps every line the jobs write.
        clock: The time of each report, ISO-8601.
        python: The interpreter that runs Lambda handlers (a project's own
            virtualenv, for its dependencies).
        child_sessions: Runs a pipeline file with an input as a child session
            and returns its output (raises when it fails); without it, a
            ``step_function`` mapped to a pipeline cannot be dispatched.
    """

    def __init__(
        self,
        report: Callable[[AttemptFinished], None],
        resolver: LocalResolver,
        logs: LogBook,
        clock: Callable[[], str],
        python: str = sys.executable,
        child_sessions: Callable[[Path, Any], Any] | None = None,
    ) -> None:
        self.report = report
        self.resolver = resolver
        self.logs = logs
        self.clock = clock
        self.python = python
        self.child_sessions = child_sessions
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def dispatch(self, order: Dispatch) -> str | None:
        """Start the attempt; its handle, ``local:<pid>`` (``local:child:<dispatch id>``
        for a child session).

        Raises:
            DispatchFailed: Nothing local runs the job, or it could not be started.
        """
        target = self.resolver.resolve(order)
        if isinstance(target, PipelineTarget):
            return self._start_child(order, target)
        run = _Run(order, "")
        try:
            run.workdir = Path(tempfile.mkdtemp(prefix="bunsui-"))
            if isinstance(target, HandlerTarget):
                argv, env, cwd = self._handler_process(run, target)
            else:
                argv, env, cwd = self._command_process(run, target)
            run.log = self.logs.writer(order.session_id, order.key, order.attempt)
            run.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, so stop() reaches all of it
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument or variable
            self._cleanup(run)
            detail = str(exc)
            if isinstance(exc, OSError) and exc.strerror:
                detail = exc.strerror + (f": {exc.filename}" if exc.filename else "")
            raise DispatchFailed(
                f"job '{order.key}': cannot start it ({target.origin}): {detail}; "
                "check the command and that it is installed."
            ) from exc
        except BaseException:
            self._cleanup(run)
            raise
        run.handle = f"local:{run.proc.pid}"
        self._track(run, self._watch)
        return run.handle

    def stop(self, run: JobRun, job_type: str) -> None:
        """The port: stop the run's attempt (see :meth:`stop_attempt`)."""
        self.stop_attempt(run.session_id, run.key, run.handle)

    def started(self, run: JobRun, job_type: str) -> bool | None:
        """The port: a local attempt is found by its handle alone (its process id), and a
        driver that died took its attempts' bookkeeping with it: None, cannot tell. The
        local backend's repair fails such attempts instead (they may have run)."""
        return None

    def stop_attempt(self, session_id: str, key: str, handle: str | None) -> None:
        """Stop the attempt with this handle (any attempt of the run, if None): SIGTERM to its
        process group, SIGKILL after :data:`STOP_GRACE` seconds. Its report says it was stopped.

        A handle this dispatcher did not start (another Bunsui process's) is stopped too,
        where ``/proc`` shows the process is still that job's.
        """
        with self._lock:
            runs = [
                run
                for run in self._runs.values()
                if run.order.session_id == session_id
                and run.order.key == key
                and handle in (None, run.handle)
            ]
        if not runs and handle is not None:
            stop_handle(handle, session_id, key)
        for run in runs:
            run.stopped = True
            if run.proc is None:
                # A child session cannot be stopped from here; its result is ignored.
                self._finish(run, None, "stopped by Bunsui (the child session was not stopped)")
            else:
                _terminate(run.proc.pid)

    def close(self, timeout: float = STOP_GRACE + DRAIN_GRACE + 1) -> None:
        """Stop every attempt still running and wait (up to ``timeout``) for their reports."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            self.stop_attempt(run.order.session_id, run.order.key, run.handle)
        end = time.monotonic() + timeout
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, end - time.monotonic()))

    # ------------------------------------------------------------ starting

    def _environment(self, order: Dispatch, extra: Mapping[str, str]) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}  # lines reach the log as written
        env.update(
            BUNSUI_DISPATCH_ID=order.dispatch_id,
            BUNSUI_SESSION_ID=order.session_id,
            BUNSUI_JOB_ID=order.job_id,
            BUNSUI_ATTEMPT=str(order.attempt),
        )
        return env

    def _handler_process(
        self, run: _Run, target: HandlerTarget
    ) -> tuple[list[str], dict[str, str], Path]:
        order = run.order
        if order.job_type == "lambda":
            event = order.inputs.get("payload", {})
            if isinstance(event, Mapping) and "bunsui" not in event:
                event = {**event, "bunsui": _identity(order)}
        else:
            event = order.inputs.get("input", {})
        assert run.workdir is not None
        spec = {
            "code_dir": str(target.code_dir.resolve()),
            "handler": target.handler,
            "event": event,
            "function_name": target.name,
            "memory": target.memory,
            "deadline": time.time() + (target.timeout or CONTEXT_DEADLINE),
            "request_id": str(uuid.uuid4()),
            "environment": dict(target.environment),
        }
        try:
            text = json.dumps(spec)
        except (TypeError, ValueError) as exc:
            raise DispatchFailed(f"job '{order.key}': the event is not JSON ({exc}).") from exc
        (run.workdir / "spec.json").write_text(text, encoding="utf-8")
        run.timeout, run.handler = target.timeout, True
        files = [str(run.workdir / "spec.json"), str(run.workdir / "result.json")]
        if self.python == sys.executable:
            argv = [self.python, "-m", "engine.local.lambda_host", *files]
        else:  # another interpreter may not have Bunsui installed: run the file itself
            argv = [self.python, str(Path(lambda_host.__file__).resolve()), *files]
        return argv, self._environment(order, {}), target.code_dir

    def _command_process(
        self, run: _Run, target: CommandTarget
    ) -> tuple[list[str], dict[str, str], Path]:
        order = run.order
        if not target.cwd.is_dir():
            raise DispatchFailed(
                f"job '{order.key}': working folder {target.cwd} ({target.origin}) "
                "does not exist; fix the path."
            )
        assert run.workdir is not None
        output = str(run.workdir / "output.json")
        env = self._environment(order, {**target.environment, "BUNSUI_OUTPUT": output})
        command = target.command
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        return argv, env, target.cwd

    def _start_child(self, order: Dispatch, target: PipelineTarget) -> str:
        if self.child_sessions is None:
            raise DispatchFailed(
                f"job '{order.key}': {target.origin} maps to pipeline {target.pipeline}, but "
                "this runner cannot start child sessions; run it with the bunsui CLI."
            )
        run = _Run(order, f"local:child:{order.dispatch_id}")
        self._track(run, lambda r: self._child(r, target))
        return run.handle

    def _track(self, run: _Run, work: Callable[[_Run], None]) -> None:
        with self._lock:
            self._runs[run.handle] = run
        run.thread = threading.Thread(
            target=work, args=(run,), name=f"bunsui-{run.order.key}", daemon=True
        )
        run.thread.start()

    # ------------------------------------------------------------ watching

    def _watch(self, run: _Run) -> None:
        proc = run.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        pumps = [
            threading.Thread(target=self._pump, args=(run, pipe, name), daemon=True)
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for pump in pumps:
            pump.start()
        timed_out = not _ended_within(proc, run.timeout)
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # Lambda ends a timed-out invocation at once
            proc.wait()
        if not _joined(pumps, DRAIN_GRACE):
            # Someone in the group still holds the pipes, so the group id is still in use.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            # A process that left the group (setsid) may hold them for ever: report anyway;
            # a pump's later lines go nowhere (the writer is closed).
            _joined(pumps, DRAIN_GRACE)
        try:
            result, error = self._outcome(run, proc.returncode, timed_out)
        except Exception as exc:  # never leave an attempt unreported
            _log.exception("reading the result of %s failed", run.order.dispatch_id)
            result, error = None, f"cannot read the result: {exc}"
        self._finish(run, result, error)

    def _pump(self, run: _Run, pipe: IO[bytes], stream: str) -> None:
        assert run.log is not None
        with pipe:
            for raw in iter(lambda: pipe.readline(MAX_LINE), b""):
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                run.log.write(stream, text)
                if stream == "stderr" and text.strip():
                    run.last_stderr = text.strip()

    def _outcome(self, run: _Run, code: int, timed_out: bool) -> tuple[Any, str | None]:
        assert run.workdir is not None
        why = f": {run.last_stderr}" if run.last_stderr else ""
        if run.stopped:
            return None, f"stopped by Bunsui ({_ended(code)})"
        if timed_out:
            message = f"Task timed out after {run.timeout:.2f} seconds"
            assert run.log is not None
            run.log.write("stderr", message)
            return None, message
        if run.handler:
            path = run.workdir / "result.json"
            if not path.is_file():
                return None, f"the handler's process ended with {_ended(code)}{why}"
            document = json.loads(path.read_text(encoding="utf-8"))
            if "error" in document:
                failure = document["error"]
                return None, f"{failure['type']}: {failure['message']}"
            return document["result"], None
        if code != 0:
            return None, f"{_ended(code)}{why}"
        path = run.workdir / "output.json"
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if not text.strip():
            return None, None
        try:
            return json.loads(text), None
        except ValueError as exc:
            return None, f"BUNSUI_OUTPUT holds no valid JSON ({exc}); write one JSON document."

    def _child(self, run: _Run, target: PipelineTarget) -> None:
        assert self.child_sessions is not None
        try:
            output = self.child_sessions(target.pipeline, run.order.inputs.get("input", {}))
        except Exception as exc:  # the child's failure is this attempt's, not the engine's
            self._finish(run, None, f"child pipeline {target.pipeline.name} failed: {exc}")
        else:
            self._finish(run, output, None)

    def _finish(self, run: _Run, result: Any, error: str | None) -> None:
        with self._lock:
            if run.finished:
                return
            run.finished = True
            self._runs.pop(run.handle, None)
        self._cleanup(run)
        order = run.order
        event = AttemptFinished(
            order.session_id, order.key, order.attempt, self.clock(), result=result, error=error
        )
        try:
            self.report(event)
        except Exception:
            _log.exception("reporting the end of %s failed", order.dispatch_id)

    def _cleanup(self, run: _Run) -> None:
        if run.log is not None:
            run.log.close()
        if run.workdir is not None:
            shutil.rmtree(run.workdir, ignore_errors=True)


def _ended_within(proc: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Wait for the process to end, up to ``timeout`` seconds (None: for ever); whether it did.

    ``Popen.wait`` with a timeout polls, sleeping up to 50 ms between looks: that much
    would be added to every attempt with a timeout. On Linux a pidfd wakes this thread
    when the process ends; elsewhere (no pidfd) Popen's polling is what there is.
    """
    if timeout is None:
        proc.wait()
        return True
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux (or too old a kernel)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        # The process is a child this thread alone waits for: until then it stays a
        # zombie, so the pid (and the pidfd) cannot name another process.
        waiting = select.poll()
        waiting.register(pidfd, select.POLLIN)
        ended = bool(waiting.poll(max(timeout, 0.0) * 1000))
    finally:
        os.close(pidfd)
    if ended:
        proc.wait()
    return ended


def _joined(threads: list[threading.Thread], timeout: float) -> bool:
    """Whether all threads ended within ``timeout`` seconds (for all of them together)."""
    end = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def _identity(order: Dispatch) -> dict[str, Any]:
    return {
        "dispatch_id": order.dispatch_id,
        "session_id": order.session_id,
        "job_id": order.job_id,
        "attempt": order.attempt,
    }


def _ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"


def stop_handle(handle: str | None, session_id: str | None = None, key: str | None = None) -> None:
    """Stop the job behind a ``local:<pid>`` handle that another process started (best effort).

    It is stopped only if it still is a Bunsui job (of this session and key, when given):
    on Linux its environment in ``/proc`` says so; elsewhere, that it still leads its own
    process group, as every job does. So a recycled pid is left alone.
    """
    pid = (handle or "").removeprefix("local:")
    if not pid.isdigit():
        return  # a child session's handle, or none
    prefix = f"BUNSUI_DISPATCH_ID={session_id}/{key}/" if session_id and key else "BUNSUI_"
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ours = any(item.startswith(prefix.encode()) for item in environ)
    except FileNotFoundError:
        ours = not Path("/proc/self").exists() and _leads_group(int(pid))
    except OSError:
        ours = False
    if ours:
        _terminate(int(pid))


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _terminate(pgid: int) -> None:
    """SIGTERM to a process group, SIGKILL to what is left of it after STOP_GRACE."""

    def kill(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    kill(signal.SIGTERM)
    timer = threading.Timer(STOP_GRACE, kill, args=(signal.SIGKILL,))
    timer.daemon = True
    timer.start()
