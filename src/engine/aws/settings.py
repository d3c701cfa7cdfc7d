"""What a Bunsui function needs to know about its stack, read from its environment.

template.yaml sets these variables on every function; tests set them to the
resources they create on a moto server (botocore itself honours
``AWS_ENDPOINT_URL``, so the same code talks to either).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import botocore.session
from botocore.config import Config

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20
)


@dataclass(frozen=True)
class Settings:
    """The stack's resources.

    Attributes:
        table: The DynamoDB table (``BUNSUI_TABLE``).
        bus: The event bus name (``BUNSUI_BUS``).
        bus_arn: Its ARN, the Scheduler's target (``BUNSUI_BUS_ARN``).
        scheduler_role_arn: The role Scheduler assumes to put events
            (``BUNSUI_SCHEDULER_ROLE_ARN``).
        schedule_group: The Scheduler group of timers and scheduled sessions
            (``BUNSUI_SCHEDULE_GROUP``).
        output_bucket: Where container jobs write their JSON output (``BUNSUI_OUTPUT_BUCKET``).
        kms_key: The key that encrypts secret parameter values (``BUNSUI_KMS_KEY``).
        start_function_arn: The function a scheduled session starts through
            (``BUNSUI_START_FUNCTION_ARN``).
        history_days: How long history items live (``BUNSUI_HISTORY_DAYS``, TTL).
    """

    table: str
    bus: str = "default"
    bus_arn: str = ""
    scheduler_role_arn: str = ""
    schedule_group: str = "default"
    output_bucket: str = ""
    kms_key: str = ""
    start_function_arn: str = ""
    history_days: int = 90

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            table=env["BUNSUI_TABLE"],
            bus=env.get("BUNSUI_BUS", "default"),
            bus_arn=env.get("BUNSUI_BUS_ARN", ""),
            scheduler_role_arn=env.get("BUNSUI_SCHEDULER_ROLE_ARN", ""),
            schedule_group=env.get("BUNSUI_SCHEDULE_GROUP", "default"),
            output_bucket=env.get("BUNSUI_OUTPUT_BUCKET", ""),
            kms_key=env.get("BUNSUI_KMS_KEY", ""),
            start_function_arn=env.get("BUNSUI_START_FUNCTION_ARN", ""),
            history_days=int(env.get("BUNSUI_HISTORY_DAYS", "90")),
        )


class Session(botocore.session.Session):
    """botocore's session, asked for a client the way a boto3 session is."""

    def client(self, service_name: str, **kwargs: Any) -> Any:
        return self.create_client(service_name, **kwargs)


@dataclass
class Clients:
    """AWS clients, made on first use and kept for the life of the function.

    One session for all of them; standard retry mode (throttling is retried
    with backoff by botocore before any error reaches the engine). By default a
    botocore session (:class:`Session`): boto3 adds nothing these clients use (its
    additions are resources and S3's transfer methods), and importing it, with
    s3transfer and multiprocessing, is some 7% of a function's import. A
    boto3 session passed in serves as well.
    """

    session: Any = field(default_factory=Session)

    def _client(self, name: str) -> Any:
        return self.session.client(name, config=_CONFIG)

    @cached_property
    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    @cached_property
    def events(self) -> Any:
        return self._client("events")

    @cached_property
    def scheduler(self) -> Any:
        return self._client("scheduler")

    @cached_property
    def lambda_(self) -> Any:
        return self._client("lambda")

    @cached_property
    def ecs(self) -> Any:
        return self._client("ecs")

    @cached_property
    def stepfunctions(self) -> Any:
        return self._client("stepfunctions")

    @cached_property
    def glue(self) -> Any:
        return self._client("glue")

    @cached_property
    def batch(self) -> Any:
        return self._client("batch")

    @cached_property
    def emr(self) -> Any:
        return self._client("emr")

    @cached_property
    def s3(self) -> Any:
        return self._client("s3")

    @cached_property
    def kms(self) -> Any:
        return self._client("kms")

    @cached_property
    def logs(self) -> Any:
        return self._client("logs")
