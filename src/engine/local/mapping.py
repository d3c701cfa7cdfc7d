"""The local mapping file (``bunsui.local.yaml``) and Dockerfile commands.

The mapping says what runs each job locally when a SAM template cannot:
``functions:`` (Lambda handlers), ``tasks:`` (ECS task definitions),
``state_machines:``, ``glue:``, ``batch:`` and ``emr:``. Its models reject
unknown keys, so a misspelt key is an error rather than ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

LAMBDA_MEMORY = 128
"""Lambda's default memory size (MB), what a mapped function reports without one."""

# ---------------------------------------------------------------- the mapping file

Env = dict[str, str | int | float | bool]
Command = str | list[str]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunctionEntry(_Entry):
    """``functions: <name>:`` — a Lambda function's local code."""

    handler: str = Field(min_length=1)
    code: str = "."
    environment: Env = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    memory: int = Field(default=LAMBDA_MEMORY, ge=128, le=10240)


class CommandEntry(_Entry):
    """``tasks:``, ``glue:``, ``batch:``, ``emr:`` entries — a local command.

    As with ``docker run``: ``dockerfile`` gives the image's ENTRYPOINT and
    CMD, ``entrypoint`` and ``command`` replace them.
    """

    command: Command | None = None
    entrypoint: Command | None = None
    dockerfile: str | None = None
    cwd: str | None = None
    environment: Env = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_run(self) -> CommandEntry:
        if self.command is None and self.entrypoint is None and self.dockerfile is None:
            raise ValueError("give command, entrypoint (+ command) or dockerfile")
        return self


class StateMachineEntry(_Entry):
    """``state_machines: <name>:`` — a child pipeline, or a handler called with the input."""

    pipeline: str | None = None
    handler: str | None = Field(default=None, min_length=1)
    code: str = "."
    environment: Env = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    memory: int = Field(default=LAMBDA_MEMORY, ge=128, le=10240)

    @model_validator(mode="after")
    def _one_kind(self) -> StateMachineEntry:
        if (self.pipeline is None) == (self.handler is None):
            raise ValueError("give either pipeline: <file> or handler: (with code:)")
        return self


class MappingFile(_Entry):
    """The whole ``bunsui.local.yaml``."""

    functions: dict[str, FunctionEntry] = Field(default_factory=dict)
    tasks: dict[str, CommandEntry] = Field(default_factory=dict)
    state_machines: dict[str, StateMachineEntry] = Field(default_factory=dict)
    glue: dict[str, CommandEntry] = Field(default_factory=dict)
    batch: dict[str, CommandEntry] = Field(default_factory=dict)
    emr: dict[str, CommandEntry] = Field(default_factory=dict)


# ---------------------------------------------------------------- Dockerfiles


def dockerfile_command(path: Path) -> tuple[Command | None, Command | None]:
    """The last ENTRYPOINT and CMD of a Dockerfile: a list (exec form) or a string (shell form)."""
    entrypoint: Command | None = None
    cmd: Command | None = None
    logical = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        word, rest = [*logical.split(None, 1), ""][:2]
        logical = ""
        if word.upper() not in ("CMD", "ENTRYPOINT"):
            continue
        value: Command = rest.strip()
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None  # Docker too runs an invalid JSON array as shell form
            if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
                value = parsed
        if word.upper() == "CMD":
            cmd = value
        else:
            entrypoint = value
    return entrypoint, cmd


def compose_command(
    entrypoint: str | Sequence[str] | None, cmd: str | Sequence[str] | None
) -> str | tuple[str, ...]:
    """What ``docker run`` executes for this ENTRYPOINT and CMD."""
    if isinstance(entrypoint, str):
        return entrypoint  # a shell-form ENTRYPOINT ignores CMD
    if entrypoint:
        tail = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd or [])
        return (*entrypoint, *tail)
    return cmd if isinstance(cmd, str) else tuple(cmd or ())
