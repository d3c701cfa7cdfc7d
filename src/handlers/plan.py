"""Lambda entry point: validate a pipeline document and plan it for given parameters.

Event: ``{"document": "<pipeline YAML>", "parameters": {...}, "source": "name.yaml"}``.
Reply: ``{"valid": true, "plan": {...}}`` (the JSON of ``bunsui pipeline plan``),
or ``{"valid": false, "error": {...}}`` with the same messages as the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import ParameterInvalid, PipelineInvalid
from engine.plan import plan_document
from engine.source import MAX_DOCUMENT_BYTES

logger = Logger(service="bunsui")


class PlanRequest(BaseModel):
    """The event this function accepts."""

    model_config = ConfigDict(extra="forbid")

    document: Annotated[str, Field(min_length=1, max_length=MAX_DOCUMENT_BYTES)]
    parameters: dict[str, Any] = Field(default_factory=dict)
    source: Annotated[str, Field(max_length=256)] = "<request>"


def _request_error(exc: ValidationError) -> dict[str, Any]:
    problems = [
        {"path": ".".join(str(p) for p in item["loc"]), "message": item["msg"]}
        for item in exc.errors(include_url=False)
    ]
    return {
        "valid": False,
        "error": {
            "type": "RequestInvalid",
            "message": "the event is not a plan request",
            "problems": problems,
        },
    }


@logger.inject_lambda_context(log_event=False)  # parameters may hold secrets
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = PlanRequest.model_validate(event)
    except ValidationError as exc:
        logger.info("rejected request", extra={"errors": exc.error_count()})
        return _request_error(exc)
    try:
        plan = plan_document(request.document, request.parameters, request.source)
    except PipelineInvalid as exc:
        logger.info("pipeline invalid", extra={"problems": len(exc.problems)})
        return {
            "valid": False,
            "error": {
                "type": "PipelineInvalid",
                "message": str(exc),
                "problems": [p.to_dict() for p in exc.problems],
            },
        }
    except ParameterInvalid as exc:
        logger.info("parameter invalid", extra={"parameter": exc.name})
        return {
            "valid": True,
            "error": {"type": "ParameterInvalid", "parameter": exc.name, "message": str(exc)},
        }
    logger.info("planned", extra={"pipeline": plan.pipeline, "jobs": len(plan.jobs)})
    return {"valid": True, "plan": plan.to_dict()}
