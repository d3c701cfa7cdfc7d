"""Lambda replies in the API Gateway style the product's functions use.

A handler parses its event with a pydantic model, does its work, and returns a
``{"statusCode": 200, "body": "<json>"}``; Bunsui reads the body as the job's
output, and fails the job on a status of 400 or more. Errors become replies by
their type: a bad event is 400, a missing object 404, a :class:`Refused` its
own status (422 for unusable data).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlcommon import storage

logger = logging.getLogger(__name__)
Event = TypeVar("Event", bound=BaseModel)


class Refused(Exception):
    """The request cannot be served: ``status`` and a body that says why."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, **details}


def reply(status: int, body: Any) -> dict[str, Any]:
    return {"statusCode": status, "body": json.dumps(body, default=str)}


def endpoint(
    model: type[Event],
) -> Callable[[Callable[[Event], Any]], Callable[[dict[str, Any], Any], dict[str, Any]]]:
    """Make ``work(parsed_event) -> body`` a Lambda handler ``(event, context) -> reply``."""

    def wrap(work: Callable[[Event], Any]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        @functools.wraps(work)
        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            try:
                request = model.model_validate(event)
            except ValidationError as exc:
                problems = [
                    f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}"
                    for e in exc.errors()
                ]
                return reply(400, {"message": "invalid event: " + "; ".join(problems)})
            try:
                return reply(200, work(request))
            except Refused as exc:
                logger.warning("refused (%s): %s", exc.status, exc)
                return reply(exc.status, exc.body)
            except storage.NotFound as exc:
                return reply(404, {"message": f"{exc} does not exist"})

        return handler

    return wrap
