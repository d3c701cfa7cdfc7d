"""The pipeline language as pydantic models.

These models are the one definition of the YAML: the loader validates files
against them, ``bunsui pipeline schema`` prints their JSON Schema, and the
engine, the API and the CLI read pipelines through them. They check what one
field can know; what needs the whole document (dependencies, cycles, names
used in expressions, rules of parameters) lives in :mod:`engine.checks`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag

from engine.graph import Graph
from engine.jobtypes import (
    BatchParameters,
    CustomParameters,
    EcsParameters,
    EmrParameters,
    GlueParameters,
    LambdaParameters,
    Lax,
    StepFunctionParameters,
    StrictModel,
)

LANGUAGE_VERSIONS = ("1.0", "1.1")
MAX_JOBS = 10_000
MAX_FAN_OUT = 10_000
MAX_SECONDS = 365 * 24 * 3600
RESERVED_NAMES = frozenset({"jobs", "item", "item_index", "session"})
"""Names the expression language gives a meaning of its own; parameters cannot take them."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null", "True", "False", "None"})
"""Words of the expression language; a name spelled like one could never be read."""


def _identifier(kind: str) -> Any:
    def check(text: str) -> str:
        if text in KEYWORDS:
            raise ValueError(
                f"{kind} '{text}' is a word of the expression language; choose another"
            )
        if not _IDENTIFIER.fullmatch(text):
            raise ValueError(
                f"{kind} '{text}' is not an identifier: use letters, digits and '_', "
                "not starting with a digit, at most 80 characters (it is used in ${...})"
            )
        return text

    return AfterValidator(check)


def _seconds(value: int | float | str) -> float:
    """Durations: seconds, or text such as ``90s``, ``15m``, ``2h``, ``1h30m``, ``1d``."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if not value.strip() or match is None:
            raise ValueError(
                f"'{value}' is not a duration: give seconds (7200) or text like 90s, 15m, 2h, 1h30m"
            )
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        value = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if value < 0:
        raise ValueError("a duration cannot be negative")
    if value > MAX_SECONDS:
        raise ValueError("a duration cannot exceed 365 days")
    return float(value)


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


Duration = Annotated[int | float | str, AfterValidator(_seconds)]
"""Seconds (a number) or a duration text (``2h``); held as float seconds."""
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Identifier = Annotated[str, _identifier("name")]
JobId = Annotated[str, _identifier("job id")]


class ParameterType(StrEnum):
    """The type of a pipeline parameter."""

    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"
    ARRAY = "array"
    OBJECT = "object"


class ParameterValidation(StrictModel):
    """Rules a parameter's value must follow."""

    pattern: str | None = Field(
        default=None,
        description="Regular expression the whole string must match (linear-time engine: no "
        "look-around or back-references).",
    )
    min: int | float | None = Field(
        default=None, description="Smallest value (numbers) or length (strings, arrays)."
    )
    max: int | float | None = Field(
        default=None, description="Largest value (numbers) or length (strings, arrays)."
    )
    enum: Annotated[list[Any], Field(min_length=1)] | None = Field(
        default=None, description="The allowed values."
    )


class Parameter(StrictModel):
    """A typed input of the pipeline, given when a session starts."""

    name: Identifier
    type: Annotated[ParameterType, Lax] = ParameterType.STRING
    required: bool = False
    default: Any = Field(default=None, description="Value when none is given; makes it optional.")
    description: str | None = None
    validation: ParameterValidation | None = None
    secret: bool = Field(default=False, description="Never printed, logged or stored in the clear.")

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set


class TriggerRule(StrEnum):
    """When a job runs, given how its parents ended (the names Airflow uses)."""

    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ALL_SKIPPED = "all_skipped"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ONE_DONE = "one_done"
    NONE_FAILED = "none_failed"
    NONE_SKIPPED = "none_skipped"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    ALWAYS = "always"


class RetryJitter(StrEnum):
    """How a retry delay is randomised (Step Functions' JitterStrategy)."""

    NONE = "none"
    FULL = "full"


class OutputSpec(StrictModel):
    """A declared output of a job: a top-level key of its result."""

    name: Identifier
    type: Annotated[ParameterType, Lax] | None = None
    description: str | None = None


class ForEach(StrictModel):
    """A fan-out: one job run per item of a list or per combination of a matrix."""

    items: list[Any] | str | None = Field(
        default=None, description="A list, or a ${...} that yields one (an upstream output)."
    )
    matrix: dict[Identifier, list[Any] | str] | None = Field(
        default=None,
        description="Lists to combine: every combination is one run, seen as ${item.<key>}.",
    )
    max_concurrency: Annotated[int, Field(ge=1, le=MAX_FAN_OUT)] | None = Field(
        default=None, description="Most runs of this fan-out at once."
    )


class JobBase(StrictModel):
    """Fields every job has, whatever its type."""

    id: JobId
    name: str | None = Field(default=None, description="Display name (default: the id).")
    description: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    condition: str | bool | None = Field(
        default=None,
        description="Expression decided when the job becomes ready; false skips the job.",
    )
    trigger_rule: Annotated[TriggerRule, Lax] = TriggerRule.ALL_SUCCESS
    timeout: PositiveDuration | None = Field(
        default=None, description="Seconds one attempt may run; then it is stopped and fails."
    )
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    retry_delay: Duration = Field(default=10.0, description="Seconds before the first retry.")
    retry_backoff: Annotated[float, Field(ge=1.0, le=10.0)] = Field(
        default=1.0, description="Each further retry waits this many times longer."
    )
    retry_max_delay: PositiveDuration | None = Field(
        default=None, description="Cap on any one retry delay."
    )
    retry_jitter: Annotated[RetryJitter, Lax] = RetryJitter.NONE
    outputs: list[Identifier | OutputSpec] | None = Field(
        default=None, description="The top-level keys of the job's result, when declared."
    )
    for_each: list[Any] | str | ForEach | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def fan_out(self) -> ForEach | None:
        """The fan-out in its long form, whichever form the file used."""
        if self.for_each is None or isinstance(self.for_each, ForEach):
            return self.for_each
        return ForEach(items=self.for_each)

    @property
    def declared_outputs(self) -> list[str] | None:
        if self.outputs is None:
            return None
        return [o if isinstance(o, str) else o.name for o in self.outputs]


class LambdaJob(JobBase):
    type: Literal["lambda"]
    parameters: LambdaParameters


class EcsJob(JobBase):
    type: Literal["ecs"]
    parameters: EcsParameters


class StepFunctionJob(JobBase):
    type: Literal["step_function"]
    parameters: StepFunctionParameters


class GlueJob(JobBase):
    type: Literal["glue"]
    parameters: GlueParameters


class BatchJob(JobBase):
    type: Literal["batch"]
    parameters: BatchParameters


class EmrJob(JobBase):
    type: Literal["emr"]
    parameters: EmrParameters


class CustomJob(JobBase):
    type: Literal["custom"]
    parameters: CustomParameters


def _job_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return str(kind) if kind is not None else None


Job = Annotated[
    Annotated[LambdaJob, Tag("lambda")]
    | Annotated[EcsJob, Tag("ecs")]
    | Annotated[StepFunctionJob, Tag("step_function")]
    | Annotated[GlueJob, Tag("glue")]
    | Annotated[BatchJob, Tag("batch")]
    | Annotated[EmrJob, Tag("emr")]
    | Annotated[CustomJob, Tag("custom")],
    Discriminator(_job_type),
]
"""A job of any type, chosen by its ``type`` field."""


def _version(value: Any) -> Any:
    # `version: 1.0` unquoted is a float in YAML; it plainly means "1.0".
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.1f}"
    return value


def _pipeline_name(text: str) -> str:
    if text != text.strip() or not text or any(ord(c) < 32 for c in text):
        raise ValueError(
            "a pipeline name is 1 to 128 printable characters without leading or trailing spaces"
        )
    return text


class PipelineHead(StrictModel):
    """The top level of a pipeline, with parameters and jobs not yet looked into."""

    version: Annotated[Literal["1.0", "1.1"], BeforeValidator(_version)] = Field(
        description="Language version of the file."
    )
    name: Annotated[str, Field(max_length=128), AfterValidator(_pipeline_name)] = Field(
        description="Sessions refer to the pipeline by this name; spaces allowed."
    )
    description: str | None = None
    parameters: list[Any] = Field(default_factory=list)
    jobs: Annotated[list[Any], Field(min_length=1, max_length=MAX_JOBS)]
    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        default=None, description="Most jobs of a session running at once."
    )
    timeout: PositiveDuration | None = Field(
        default=None, description="Seconds a whole session may take before it is failed."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form.")


class Pipeline(PipelineHead):
    """A pipeline: typed parameters and a graph of jobs."""

    parameters: list[Parameter] = Field(default_factory=list)
    jobs: Annotated[list[Job], Field(min_length=1, max_length=MAX_JOBS)]

    @cached_property
    def graph(self) -> Graph:
        """The dependency graph (validated: acyclic, every parent exists)."""
        return Graph({job.id: list(job.depends_on) for job in self.jobs})

    @cached_property
    def _jobs_by_id(self) -> dict[str, Any]:
        return {job.id: job for job in self.jobs}

    def job(self, job_id: str) -> Any:
        """The job with this id (KeyError when there is none)."""
        return self._jobs_by_id[job_id]

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


def pipeline_schema() -> dict[str, Any]:
    """The JSON Schema of pipeline files, for editors and other tools."""
    schema = Pipeline.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Bunsui pipeline"
    return schema
