"""Runs one Lambda handler invocation in this process, as Lambda's Python runtime would.

Run as ``python -m engine.local.lambda_host SPEC RESULT`` by the local
runners, one process per invocation (so a handler's globals, ``sys.path``
and environment never leak into the engine or into the next invocation).
SPEC is a JSON file::

    {"code_dir": "...", "handler": "app.lambda_handler", "event": {...},
     "function_name": "...", "memory": 128, "deadline": 1767225600.0,
     "request_id": "...", "environment": {"NAME": "value"}}

RESULT receives ``{"result": <the handler's return value>}`` or
``{"error": {"type": ..., "message": ..., "trace": [...]}}`` (Lambda's
``errorType``, ``errorMessage`` and ``stackTrace``). The handler's stdout,
stderr and logging go to this process's stdout and stderr.

Only the standard library is imported here: the interpreter may be the
user's own virtualenv, where Bunsui's dependencies are not installed.
"""

from __future__ import annotations

import decimal
import json
import logging
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

DEFAULT_REGION = "us-east-1"


class LambdaContext:
    """The ``context`` argument, with the attributes and method Lambda's Python runtime offers."""

    function_version = "$LATEST"
    identity = None
    client_context = None

    def __init__(self, function_name: str, memory: int, request_id: str, deadline: float) -> None:
        self.function_name = function_name
        self.memory_limit_in_mb = memory
        self.aws_request_id = request_id
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        self.log_stream_name = f"{day}/[$LATEST]{request_id.replace('-', '')}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation is stopped."""
        return max(0, int((self._deadline - time.time()) * 1000))


class _RequestId(logging.Filter):
    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


def _setup_logging(request_id: str) -> None:
    # Lambda's runtime puts one handler on the root logger, in this format, and leaves
    # the root level at WARNING: logging.info shows only if the handler lowers it.
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_RequestId(request_id))
    logging.getLogger().addHandler(handler)


def _error(kind: str, message: str, trace: list[str] | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "trace": trace or []}}


def _exception(exc: BaseException) -> dict[str, Any]:
    trace = traceback.format_tb(exc.__traceback__)[1:]  # drop this module's own frame
    # Lambda prints the failure to the function's log too, so the log tells the whole story.
    print(f"[ERROR] {type(exc).__name__}: {exc}", file=sys.stderr)
    print("Traceback (most recent call last):\n" + "".join(trace), end="", file=sys.stderr)
    return _error(type(exc).__name__, str(exc), trace)


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):  # as Lambda's own serializer does (DynamoDB numbers)
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _load(handler: str) -> Any:
    module_name, _, function_name = handler.rpartition(".")
    if not module_name or not function_name:
        raise LookupError(
            "Runtime.MalformedHandlerName",
            f"Bad handler '{handler}': not enough values to unpack (expected 2, got 1)",
        )
    try:
        module = import_module(module_name.replace("/", "."))
    except Exception as exc:
        traceback.print_exception(exc, file=sys.stderr)
        raise LookupError(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}"
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        message = f"Handler '{function_name}' missing on module '{module_name}'"
        raise LookupError("Runtime.HandlerNotFound", message)
    return function


def invoke(spec: dict[str, Any]) -> dict[str, Any]:
    """Set up the environment, import the handler, call it; the result or error document."""
    name = spec["function_name"]
    code_dir = str(Path(spec["code_dir"]).resolve())
    os.environ.update({str(k): str(v) for k, v in (spec.get("environment") or {}).items()})
    os.environ.update(
        AWS_LAMBDA_FUNCTION_NAME=name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(spec["memory"]),
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        LAMBDA_TASK_ROOT=code_dir,
    )
    os.environ.setdefault("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", DEFAULT_REGION))
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ["AWS_REGION"])
    sys.path.insert(0, code_dir)
    _setup_logging(spec["request_id"])
    context = LambdaContext(name, int(spec["memory"]), spec["request_id"], float(spec["deadline"]))
    try:
        function = _load(spec["handler"])
    except LookupError as exc:
        kind, message = exc.args
        print(f"[ERROR] {kind}: {message}", file=sys.stderr)
        return _error(kind, message)
    try:
        result = function(spec["event"], context)
    except SystemExit as exc:  # Lambda reports a handler's exit as a runtime error
        return _error("Runtime.ExitError", f"handler exited with status {exc.code}")
    except Exception as exc:
        return _exception(exc)
    try:
        json.dumps(result, default=_json_default)
    except (TypeError, ValueError) as exc:
        message = f"Unable to marshal response: {exc}"
        print(f"[ERROR] Runtime.MarshalError: {message}", file=sys.stderr)
        return _error("Runtime.MarshalError", message)
    return {"result": result}


def main(argv: list[str]) -> int:
    """``lambda_host SPEC RESULT``: invoke and write the result document."""
    if len(argv) != 2:
        print("usage: python -m engine.local.lambda_host SPEC RESULT", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    outcome = invoke(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    text = json.dumps(outcome, default=_json_default)
    result_path = Path(argv[1])
    # Written whole then renamed: the runner never reads half a result.
    partial = result_path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(result_path)
    return 0


if __name__ == "__main__":
    # Run by path (another interpreter), this file's folder is sys.path[0]; it must not
    # shadow the handler's own modules.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    sys.exit(main(sys.argv[1:]))
