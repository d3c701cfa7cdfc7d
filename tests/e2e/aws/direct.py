"""In-process requests answered by moto's backends directly, without the HTTP round trip.

The moto server serves the other processes (the CLI, the jobs' own
processes). A request made in the harness's own process would reach the same
backends through a socket, a server thread and Flask: about 6 ms of a 7 ms
request on this machine. :func:`attach` gives a client a ``before-send`` hook
that hands the signed request to moto's own dispatcher (what ``mock_aws``
uses) with the URL moto expects for the service, so the state is the
server's and the reply is the same bytes, parsed by botocore as before.
"""

from __future__ import annotations

from typing import Any

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from moto.core.botocore_stubber import BotocoreStubber, MockRawResponse

_stubber = BotocoreStubber()


def attach(client: Any, endpoint: str) -> None:
    """Answer this client's requests to ``endpoint`` in process (others go out as usual)."""
    model = client.meta.service_model
    region = client.meta.region_name or "us-east-1"
    aws = f"https://{model.endpoint_prefix}.{region}.amazonaws.com"
    prefix = endpoint.rstrip("/")

    def send(request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        if not request.url.startswith(prefix):
            return None
        url = aws + request.url[len(prefix) :]
        original = request.url
        request.url = url
        try:
            answer = _stubber.process_request(request)
        finally:
            request.url = original
        if answer is None:
            return None
        status, headers, body = answer
        return AWSResponse(original, status, headers, MockRawResponse(body))  # type: ignore[arg-type]

    client.meta.events.register("before-send.*.*", send)
