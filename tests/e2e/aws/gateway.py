"""A stand-in for API Gateway (HTTP API, IAM auth) on 127.0.0.1, for tests.

``ApiGateway(handler)`` serves HTTP on a free port of 127.0.0.1. Like an HTTP
API whose routes use IAM authorization, it refuses a request that is not
signed with SigV4 for the ``execute-api`` service (403, before the handler
runs); with ``secret_key`` it also checks the signature itself. Every other
request becomes an API Gateway payload version 2.0 event, the handler is
called in this process (``handler(event, context)``, as Lambda would) and its
answer is written back.

Example::

    with ApiGateway(handlers.api.handler) as api:
        requests_to(api.url)
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

Handler = Callable[[dict[str, Any], Any], Any]

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<headers>[^,\s]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
ACCOUNT = "123456789012"


@dataclass
class LambdaContext:
    """What a Lambda handler reads from its context object."""

    function_name: str = "bunsui-api"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:bunsui-api"
    log_group_name: str = "/aws/lambda/bunsui-api"
    log_stream_name: str = "2024/01/01/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@dataclass(frozen=True)
class Call:
    """One request the gateway answered (what tests assert on)."""

    method: str
    path: str
    query: str
    status: int


class ApiGateway:
    """An HTTP API with IAM auth in front of one Lambda handler, on 127.0.0.1.

    Args:
        handler: The API function's handler, called with a payload 2.0 event.
        secret_key: When given, the SigV4 signature must be the one this secret
            key makes (any access key id); otherwise a well-formed Authorization
            header for ``execute-api`` is enough.
        routes: Route keys such as ``"GET /sessions/{id}"``: a request that matches
            one gets it as ``routeKey`` and its ``pathParameters``; otherwise the
            route key is ``$default``.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        secret_key: str | None = None,
        routes: list[str] | None = None,
    ) -> None:
        self.handler = handler
        self.secret_key = secret_key
        self.routes = [_route(key) for key in routes or []]
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _request_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, like an HTTP API's default endpoint (no stage in the path)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ApiGateway:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="api-gateway", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ApiGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ one request

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one request (the server thread calls this)."""
        parts = urlsplit(target)
        refusal = self._refusal(method, target, headers, body)
        if refusal is not None:
            status, reply = 403, {"message": refusal}
            self._record(Call(method, parts.path, parts.query, status))
            return status, {"content-type": "application/json"}, json.dumps(reply).encode()
        event = self.event(method, parts.path, parts.query, headers, body)
        try:
            result = self.handler(event, LambdaContext())
        except Exception:  # a failed invocation: API Gateway answers 500 and hides why
            self._record(Call(method, parts.path, parts.query, 500))
            return 500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}'
        status, out_headers, out_body = _response(result)
        self._record(Call(method, parts.path, parts.query, status))
        return status, out_headers, out_body

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _refusal(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> str | None:
        """Why IAM authorization refuses the request, or None when it passes."""
        found = _AUTHORIZATION.match(headers.get("authorization", ""))
        if found is None or "x-amz-date" not in headers:
            return "Forbidden"
        if found["service"] != "execute-api":
            return f"Credential should be scoped to correct service: 'execute-api'. ({found[0]})"
        signed = found["headers"].split(";")
        if "host" not in signed or any(name not in headers for name in signed):
            return "Forbidden"
        if self.secret_key is None:
            return None
        request = AWSRequest(
            method=method,
            url=f"http://{headers['host']}{target}",
            data=body,
            headers={name: headers[name] for name in signed},
        )
        request.context["timestamp"] = headers["x-amz-date"]
        credentials = Credentials(
            found["key"], self.secret_key, headers.get("x-amz-security-token")
        )
        signer = SigV4Auth(credentials, "execute-api", found["region"])
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, found["signature"]):
            return "The request signature we calculated does not match the signature you provided."
        return None

    def event(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        """The API Gateway payload 2.0 event of a request (as an HTTP API builds it:
        the path percent-decoded, repeated query parameters joined with commas)."""
        decoded = unquote(path)
        route_key, parameters = "$default", None
        for key, pattern in self.routes:
            matched = pattern.fullmatch(f"{method} {decoded}")
            if matched:
                route_key, parameters = key, matched.groupdict()
                break
        text, encoded = _body(body, headers.get("content-type", ""))
        now = time.time()
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": decoded,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "accountId": ACCOUNT,
                "apiId": "bunsuiapi",
                "authorizer": {
                    "iam": {"accessKey": "AKIDEXAMPLE", "accountId": ACCOUNT, "userId": "AIDA"}
                },
                "domainName": headers.get("host", "127.0.0.1"),
                "domainPrefix": "bunsuiapi",
                "http": {
                    "method": method,
                    "path": decoded,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": headers.get("user-agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": route_key,
                "stage": "$default",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "isBase64Encoded": encoded,
        }
        if query:
            joined: dict[str, list[str]] = {}
            for name, value in parse_qsl(query, keep_blank_values=True):
                joined.setdefault(name, []).append(value)
            event["queryStringParameters"] = {k: ",".join(v) for k, v in joined.items()}
        if parameters:
            event["pathParameters"] = parameters
        if text is not None:
            event["body"] = text
        return event


def _route(key: str) -> tuple[str, re.Pattern[str]]:
    method, _, path = key.partition(" ")
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
    return key, re.compile(f"{re.escape(method)} {pattern}")


def _body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    """The event's body: text as it came, or base64 for bytes that are not text."""
    if not body:
        return None, False
    textual = content_type.startswith(("text/", "application/json")) or not content_type
    if textual:
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _response(result: Any) -> tuple[int, dict[str, str], bytes]:
    """A handler's answer as API Gateway (payload 2.0) turns it into HTTP."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # Payload 2.0 lets a function return just the body: 200, JSON.
        return 200, {"content-type": "application/json"}, json.dumps(result).encode()
    headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[str(name).lower()] = ",".join(str(v) for v in values)
    body = result.get("body") or ""
    data = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    return int(result["statusCode"]), headers, data


def _request_handler(gateway: ApiGateway) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                lower = name.lower()
                headers[lower] = f"{headers[lower]},{value}" if lower in headers else value
            status, out_headers, out_body = gateway.answer(self.command, self.path, headers, body)
            self.send_response(status)
            for name, value in out_headers.items():
                if name not in ("content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(out_body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out_body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet, as tests want
            pass

    return _Handler
