"""Reaching AWS from the CLI: the profile's session, the stack's outputs, errors as one line.

Everything the CLI asks of AWS directly (CloudFormation for the stack's
outputs, CloudWatch Logs, Lambda and ECS for job logs) goes through
:func:`AwsAccess.call`, which turns what AWS or botocore raise into an
:class:`AwsError` whose text is one line a user can act on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSOError,
    TokenRetrievalError,
)

from bunsui.config import AwsSettings
from engine.errors import BunsuiError

T = TypeVar("T")

_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30
)
_ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}
_THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
}
_BAD_CREDENTIALS = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "AuthFailure",
}
OUTPUT_API = "ApiEndpoint"
OUTPUT_TABLE = "TableName"


class AwsError(BunsuiError):
    """AWS refused a request, or could not be reached: one line, never a traceback."""


class AwsAccess:
    """The configured profile's boto3 session and region, created when first needed."""

    def __init__(self, settings: AwsSettings) -> None:
        self.settings = settings

    @property
    def profile(self) -> str:
        """The profile's name as messages show it."""
        return self.settings.profile or self.session.profile_name or "default"

    @cached_property
    def session(self) -> boto3.Session:
        try:
            return boto3.Session(
                profile_name=self.settings.profile, region_name=self.settings.region
            )
        except ProfileNotFound:
            raise AwsError(
                f"AWS profile '{self.settings.profile}' not found in ~/.aws/config or "
                "~/.aws/credentials; run aws configure --profile "
                f"{self.settings.profile}, or bunsui config set aws.profile NAME."
            ) from None

    @cached_property
    def region(self) -> str:
        region = self.session.region_name
        if not region:
            raise AwsError(
                f"no AWS region for profile {self.profile}; run bunsui config set aws.region "
                "REGION (or set AWS_REGION)."
            )
        return region

    def credentials(self) -> ReadOnlyCredentials:
        """The current credentials (refreshed when they expire).

        Raises:
            AwsError: none found, or they cannot be loaded (an SSO login that expired...).
        """
        try:
            found = self.session.get_credentials()
            frozen = found.get_frozen_credentials() if found is not None else None
        except (
            CredentialRetrievalError,
            TokenRetrievalError,
            SSOError,
            PartialCredentialsError,
        ) as exc:
            raise AwsError(
                f"the AWS credentials of profile {self.profile} cannot be loaded: "
                f"{_one_line(str(exc))}"
            ) from None
        if frozen is None or not frozen.access_key:
            raise self.no_credentials()
        return frozen

    def no_credentials(self) -> AwsError:
        return AwsError(
            f"no AWS credentials found for profile {self.profile}; run aws configure or set "
            "AWS_PROFILE."
        )

    def client(self, service: str, region: str | None = None) -> Any:
        return self.session.client(
            service, region_name=region or self.region, config=_CLIENT_CONFIG
        )

    def call(
        self, action: str, request: Callable[[], T], missing: Collection[str] = ()
    ) -> T | None:
        """Run one AWS request; what can go wrong becomes an :class:`AwsError`.

        Args:
            action: What is asked, for messages: ``cloudformation:DescribeStacks``.
            missing: Error codes that mean "no such thing": the answer is then None.
        """
        try:
            return request()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), _one_line(str(error.get("Message", "")))
            if code in _ACCESS_DENIED:
                raise AwsError(
                    f"access denied: profile {self.profile} may not call {action}: {message}"
                ) from None
            if code in _THROTTLED:
                raise AwsError(
                    f"AWS is throttling {action} (tried 5 times); try again in a moment."
                ) from None
            if code in _BAD_CREDENTIALS:
                raise AwsError(
                    f"AWS refused the credentials of profile {self.profile}: {message}"
                ) from None
            if code in missing:
                return None
            raise AwsError(f"{action} failed: {code}: {message}") from None
        except NoCredentialsError:
            raise self.no_credentials() from None
        except NoRegionError:
            raise AwsError(
                f"no AWS region for profile {self.profile}; run bunsui config set aws.region "
                "REGION (or set AWS_REGION)."
            ) from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise AwsError(f"cannot reach AWS for {action}: {_one_line(str(exc))}") from None
        except ConnectionClosedError as exc:
            raise AwsError(f"cannot reach AWS for {action}: {_one_line(str(exc))}") from None
        except (CredentialRetrievalError, TokenRetrievalError, SSOError) as exc:
            raise AwsError(
                f"the AWS credentials of profile {self.profile} cannot be loaded: "
                f"{_one_line(str(exc))}"
            ) from None
        except BotoCoreError as exc:
            raise AwsError(f"{action} failed: {_one_line(str(exc))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class Stack:
    """What the CLI needs of a deployed Bunsui stack: its outputs."""

    name: str
    region: str
    api_endpoint: str
    table_name: str | None
    last_updated: str


def describe_stack(access: AwsAccess, name: str) -> Stack:
    """Read the stack's outputs (one CloudFormation DescribeStacks).

    Raises:
        AwsError: no such stack, it has no ``ApiEndpoint`` output, or AWS refused.
    """
    region = access.region
    cloudformation = access.client("cloudformation")
    found = access.call(
        "cloudformation:DescribeStacks",
        lambda: cloudformation.describe_stacks(StackName=name)["Stacks"],
        missing={"ValidationError"},  # "Stack with id NAME does not exist"
    )
    if not found:
        raise AwsError(
            f"stack '{name}' not found in {region} (profile {access.profile}); deploy it "
            "with sam deploy --guided, or bunsui config set aws.stack_name NAME."
        )
    stack = found[0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    if OUTPUT_API not in outputs:
        raise AwsError(
            f"stack '{name}' ({stack.get('StackStatus', 'unknown status')}) has no "
            f"{OUTPUT_API} output: is it a Bunsui stack, and fully deployed?"
        )
    when = stack.get("LastUpdatedTime") or stack.get("CreationTime")
    return Stack(
        name=name,
        region=region,
        api_endpoint=outputs[OUTPUT_API].rstrip("/"),
        table_name=outputs.get(OUTPUT_TABLE),
        last_updated=when.isoformat() if isinstance(when, datetime) else str(when),
    )


class StackCache:
    """The stacks' outputs as last read, in ``stacks.json`` beside the config file.

    A command then signs its API requests without asking CloudFormation first;
    the backend reads the stack again when the API cannot be reached or refuses
    in a way a changed stack explains, and keeps the new outputs if the stack's
    LastUpdatedTime moved.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "stacks.json"

    @staticmethod
    def key(profile: str, region: str, name: str) -> str:
        return f"{profile}|{region}|{name}"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Stack | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            return Stack(**{k: v for k, v in entry.items() if k != "read_at"})
        except TypeError:
            return None  # written by another version of Bunsui: read the stack again

    def put(self, key: str, stack: Stack) -> None:
        """Remember the outputs; a cache that cannot be written only costs a request."""
        data = self._read()
        data[key] = {**asdict(stack), "read_at": datetime.now(UTC).isoformat()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".tmp")
            partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            partial.replace(self.path)
        except OSError:
            pass
