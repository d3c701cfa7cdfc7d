"""The parameters of each job type, one pydantic model per type.

Field names follow the service's API in snake_case, so a user who knows
``ecs.run_task`` or ``batch.submit_job`` recognises them. Every string may
hold ``${...}`` templates; of the numeric fields, ecs ``cpu`` and
``memory`` take a number or a template, the others a number.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator

from engine.templates import is_template


class JobType(StrEnum):
    """Where a job runs."""

    LAMBDA = "lambda"
    ECS = "ecs"
    STEP_FUNCTION = "step_function"
    GLUE = "glue"
    BATCH = "batch"
    EMR = "emr"
    CUSTOM = "custom"


Lax = Strict(False)
"""Marks enum fields: the model is strict, but an enum is given by its string value."""


class StrictModel(BaseModel):
    """Base of every model of the language: no coercion, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _template_only(text: str) -> str:
    if not is_template(text):
        raise ValueError("must be a number or a ${...} expression")
    return text


NonEmptyStr = Annotated[str, Field(min_length=1)]
TemplateStr = Annotated[str, AfterValidator(_template_only)]
"""A string standing for a value decided at run time (``"${cpu}"``)."""
TemplatedInt = Annotated[int, Field(ge=0)] | TemplateStr
Scalar = str | int | float | bool
Environment = dict[str, Scalar]
"""Environment variables: values are passed as strings; an object or list rendered into one
becomes its JSON text."""


class LambdaParameters(StrictModel):
    """``type: lambda`` — invoke an AWS Lambda function with a JSON payload."""

    function_name: NonEmptyStr = Field(
        description="Function name, alias (name:alias), partial or full ARN."
    )
    payload: Any = Field(default_factory=dict, description="The event the function receives.")
    qualifier: NonEmptyStr | None = Field(default=None, description="Version or alias to invoke.")


class LaunchType(StrEnum):
    FARGATE = "FARGATE"
    EC2 = "EC2"
    EXTERNAL = "EXTERNAL"


class CapacityProviderItem(StrictModel):
    capacity_provider: NonEmptyStr
    weight: Annotated[int, Field(ge=0, le=1000)] = 1
    base: Annotated[int, Field(ge=0, le=100000)] = 0


class AssignPublicIp(StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class NetworkConfiguration(StrictModel):
    """The ``awsvpc`` network of a task (required by Fargate)."""

    subnets: Annotated[list[NonEmptyStr], Field(min_length=1, max_length=16)]
    security_groups: Annotated[list[NonEmptyStr], Field(max_length=5)] = Field(default_factory=list)
    assign_public_ip: Annotated[AssignPublicIp, Lax] = AssignPublicIp.DISABLED


class EcsParameters(StrictModel):
    """``type: ecs`` — run one ECS task to completion; its exit code decides success."""

    task_definition: NonEmptyStr = Field(description="family, family:revision or ARN.")
    cluster: NonEmptyStr | None = Field(default=None, description="Cluster name or ARN.")
    container_name: NonEmptyStr | None = Field(
        default=None, description="Container the overrides apply to (default: the first)."
    )
    command: list[str] | None = Field(default=None, description="Overrides the container command.")
    environment: Environment = Field(default_factory=dict)
    launch_type: Annotated[LaunchType, Lax] | None = None
    capacity_provider_strategy: list[CapacityProviderItem] | None = None
    platform_version: NonEmptyStr | None = None
    network_configuration: NetworkConfiguration | None = None
    cpu: TemplatedInt | None = Field(default=None, description="Task CPU units override.")
    memory: TemplatedInt | None = Field(default=None, description="Task memory (MiB) override.")

    @model_validator(mode="after")
    def _one_placement(self) -> EcsParameters:
        if self.launch_type is not None and self.capacity_provider_strategy is not None:
            raise ValueError(
                "launch_type and capacity_provider_strategy exclude each other; keep one"
            )
        return self


_STATE_MACHINE_ARN = re.compile(
    r"arn:[^:\s]+:states:[^:\s]*:[^:\s]*:stateMachine:[^:\s]+(:[^:\s]+)?"
)


def _state_machine_arn(text: str) -> str:
    if is_template(text) or _STATE_MACHINE_ARN.fullmatch(text):
        return text
    raise ValueError(
        "must be a state machine ARN, arn:aws:states:<region>:<account>:stateMachine:<name>"
    )


class StepFunctionParameters(StrictModel):
    """``type: step_function`` — start a Step Functions execution and wait for its end."""

    state_machine_arn: Annotated[str, AfterValidator(_state_machine_arn)]
    input: Any = Field(default_factory=dict, description="The execution input (JSON).")


def _glue_arguments(arguments: dict[str, str]) -> dict[str, str]:
    for key in arguments:
        if not key.startswith("--"):
            raise ValueError(f"Glue argument names start with '--': write '--{key}'")
    return arguments


class GlueWorkerType(StrEnum):
    STANDARD = "Standard"
    G_1X = "G.1X"
    G_2X = "G.2X"
    G_4X = "G.4X"
    G_8X = "G.8X"
    G_025X = "G.025X"
    Z_2X = "Z.2X"


class GlueParameters(StrictModel):
    """``type: glue`` — start a Glue job run."""

    job_name: NonEmptyStr
    arguments: Annotated[dict[str, str], AfterValidator(_glue_arguments)] = Field(
        default_factory=dict
    )
    worker_type: Annotated[GlueWorkerType, Lax] | None = None
    number_of_workers: Annotated[int, Field(ge=1, le=10000)] | None = None


class ResourceRequirement(StrictModel):
    type: Literal["GPU", "VCPU", "MEMORY"]
    value: NonEmptyStr


class BatchContainerOverrides(StrictModel):
    command: list[str] | None = None
    environment: Environment = Field(default_factory=dict)
    resource_requirements: list[ResourceRequirement] | None = None
    instance_type: NonEmptyStr | None = None


class BatchParameters(StrictModel):
    """``type: batch`` — submit an AWS Batch job."""

    job_definition: NonEmptyStr
    job_queue: NonEmptyStr
    parameters: dict[str, str] = Field(
        default_factory=dict, description="Ref::name substitutions of the job definition."
    )
    container_overrides: BatchContainerOverrides | None = None
    array_size: Annotated[int, Field(ge=2, le=10000)] | None = None


class ActionOnFailure(StrEnum):
    CONTINUE = "CONTINUE"
    CANCEL_AND_WAIT = "CANCEL_AND_WAIT"
    TERMINATE_CLUSTER = "TERMINATE_CLUSTER"


class EmrStepConfig(StrictModel):
    name: NonEmptyStr | None = None
    jar: NonEmptyStr = "command-runner.jar"
    main_class: NonEmptyStr | None = None
    args: list[str] = Field(default_factory=list)
    properties: dict[str, str] = Field(default_factory=dict)
    action_on_failure: Annotated[ActionOnFailure, Lax] = ActionOnFailure.CONTINUE

    @model_validator(mode="after")
    def _command_runner_needs_args(self) -> EmrStepConfig:
        if self.jar == "command-runner.jar" and not self.args:
            raise ValueError(
                "command-runner.jar needs args, e.g. args: [spark-submit, s3://bucket/job.py]"
            )
        return self


_EMR_CLUSTER = re.compile(r"j-[A-Z0-9]{1,32}")


def _cluster_id(text: str) -> str:
    if is_template(text) or _EMR_CLUSTER.fullmatch(text):
        return text
    raise ValueError("must be an EMR cluster id such as j-2AXXXXXXGAPLF")


class EmrParameters(StrictModel):
    """``type: emr`` — add a step to a running EMR cluster."""

    cluster_id: Annotated[str, AfterValidator(_cluster_id)]
    step_config: EmrStepConfig


class CustomParameters(StrictModel):
    """``type: custom`` — run a command (locally: a subprocess)."""

    command: NonEmptyStr | Annotated[list[str], Field(min_length=1)] = Field(
        description="A shell command line, or an argument list run without a shell."
    )
    environment: Environment = Field(default_factory=dict)
    working_dir: NonEmptyStr | None = None


PARAMETER_MODELS: dict[JobType, type[StrictModel]] = {
    JobType.LAMBDA: LambdaParameters,
    JobType.ECS: EcsParameters,
    JobType.STEP_FUNCTION: StepFunctionParameters,
    JobType.GLUE: GlueParameters,
    JobType.BATCH: BatchParameters,
    JobType.EMR: EmrParameters,
    JobType.CUSTOM: CustomParameters,
}
"""The parameter model of each job type."""
