"""``bunsui config set|get|show|unset``: which backend the commands use, and where on AWS.

The settings live in one JSON file, ``$BUNSUI_CONFIG`` (default
``$XDG_CONFIG_HOME/bunsui/config.json``, else ``~/.config/bunsui/config.json``)::

    {"backend": "aws", "aws": {"stack_name": "bunsui", "region": "eu-west-1"}}

An environment variable overrides each key for one command: ``BUNSUI_BACKEND``,
``BUNSUI_AWS_STACK_NAME``, ``BUNSUI_AWS_REGION``, ``BUNSUI_AWS_PROFILE``,
``BUNSUI_AWS_ENDPOINT``. The AWS backend keeps what it read of the stack
(its API endpoint) beside the file, in ``stacks.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.markup import escape
from rich.table import Table

from bunsui.output import Format, console, emit
from engine.errors import BunsuiError

config_app = typer.Typer(
    help="Choose the backend (local or aws) and the AWS stack the commands use.",
    no_args_is_help=True,
)


class ConfigInvalid(BunsuiError):
    """A configuration key or value Bunsui cannot use, or an unreadable file."""


def _choice(*allowed: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in allowed else f"is one of {', '.join(allowed)}"

    return check


def _stack_name(value: str) -> str | None:
    if value.startswith("arn:") or re.fullmatch(r"[A-Za-z][-A-Za-z0-9]{0,127}", value):
        return None
    return "is a CloudFormation stack name (a letter, then letters, digits and '-') or ARN"


def _region(value: str) -> str | None:
    if re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", value):
        return None
    return "is an AWS region such as us-east-1"


def _profile(value: str) -> str | None:
    return None if value.strip() == value and value else "is the name of an AWS profile"


def _endpoint(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc and not parts.query:
        return None
    return "is the API's URL, such as https://abc123.execute-api.us-east-1.amazonaws.com"


@dataclass(frozen=True)
class Key:
    """One setting: its name, what it means and what values it takes."""

    name: str
    help: str
    check: Callable[[str], str | None]
    default: str | None = None

    @property
    def env(self) -> str:
        return "BUNSUI_" + self.name.replace(".", "_").upper()


KEYS = {
    key.name: key
    for key in (
        Key("backend", "where pipelines and sessions live: local or aws", _choice("local", "aws"),
            "local"),
        Key("aws.stack_name", "the deployed Bunsui stack (CloudFormation)", _stack_name),
        Key("aws.region", "its region (default: the profile's or AWS_REGION)", _region),
        Key("aws.profile", "the AWS profile to sign with (default: AWS_PROFILE or default)",
            _profile),
        Key("aws.endpoint", "the API's URL, instead of the stack's ApiEndpoint output", _endpoint),
    )
}  # fmt: skip


def config_file() -> Path:
    """Where the settings are kept."""
    explicit = os.environ.get("BUNSUI_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "bunsui" / "config.json"


def _key(name: str) -> Key:
    if name not in KEYS:
        raise ConfigInvalid(f"unknown key '{name}'; the keys are: {', '.join(KEYS)}.")
    return KEYS[name]


def read_file(path: Path | None = None) -> dict[str, str]:
    """The stored settings, flat (``aws.region``); empty when there is no file.

    Raises:
        ConfigInvalid: the file is not JSON of the shape this module writes.
    """
    path = path or config_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigInvalid(
            f"config file {path} cannot be read ({exc}); fix it or remove it."
        ) from None
    if not isinstance(data, dict):
        raise ConfigInvalid(f"config file {path} is not a JSON object; fix it or remove it.")
    flat: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}": v for k, v in value.items() if isinstance(v, str)})
        elif isinstance(value, str):
            flat[name] = value
    return {name: value for name, value in flat.items() if name in KEYS}


def write_file(values: dict[str, str], path: Path | None = None) -> None:
    """Store the settings (nested by their prefix), replacing the file at once."""
    path = path or config_file()
    nested: dict[str, Any] = {}
    for name in KEYS:
        if name in values:
            head, _, tail = name.partition(".")
            if tail:
                nested.setdefault(head, {})[tail] = values[name]
            else:
                nested[head] = values[name]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps(nested, indent=2) + "\n", encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        raise ConfigInvalid(f"config file {path} cannot be written: {exc.strerror}.") from None


def resolved() -> dict[str, tuple[str | None, str]]:
    """Every key's value and where it comes from: ``env NAME``, ``file`` or ``default``."""
    stored = read_file()
    found: dict[str, tuple[str | None, str]] = {}
    for name, key in KEYS.items():
        if os.environ.get(key.env):
            found[name] = (os.environ[key.env], f"env {key.env}")
        elif name in stored:
            found[name] = (stored[name], "file")
        else:
            found[name] = (key.default, "default")
    return found


@dataclass(frozen=True)
class AwsSettings:
    """Where the AWS backend finds the stack, and as whom it signs."""

    stack_name: str | None = None
    region: str | None = None
    profile: str | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class CliConfig:
    backend: str
    aws: AwsSettings
    folder: Path
    """Where the file is (the AWS backend keeps its cache of the stack there)."""


def load() -> CliConfig:
    """The settings in effect (file and environment), each value checked.

    Raises:
        ConfigInvalid: a value (from the file or the environment) is not usable.
    """
    values: dict[str, str | None] = {}
    for name, (value, source) in resolved().items():
        if value is not None:
            problem = KEYS[name].check(value)
            if problem:
                where = "in the config file" if source == "file" else f"({source})"
                raise ConfigInvalid(f"{name} {value!r} {where}: {name} {problem}.")
        values[name] = value
    return CliConfig(
        backend=values["backend"] or "local",
        aws=AwsSettings(
            values["aws.stack_name"],
            values["aws.region"],
            values["aws.profile"],
            values["aws.endpoint"],
        ),
        folder=config_file().parent,
    )


# ---------------------------------------------------------------------- commands

KeyArgument = Annotated[str, typer.Argument(help=f"One of: {', '.join(KEYS)}.", show_default=False)]


@config_app.command("set")
def set_value(
    key: KeyArgument,
    value: Annotated[str, typer.Argument(help="The value.", show_default=False)],
) -> None:
    """Store a setting in the config file."""
    setting = _key(key)
    problem = setting.check(value)
    if problem:
        raise ConfigInvalid(f"{key} {value!r}: {key} {problem}.")
    values = read_file()
    values[key] = value
    write_file(values)
    shadow = os.environ.get(setting.env)
    note = f" ({setting.env}={shadow} overrides it in this shell)" if shadow else ""
    console().print(f"{escape(key)} = {escape(value)}{escape(note)}")


@config_app.command("get")
def get_value(key: KeyArgument) -> None:
    """Print a setting's value in effect (exit code 1, and nothing printed, when unset)."""
    _key(key)
    value = resolved()[key][0]
    if value is None:
        raise typer.Exit(1)
    typer.echo(value)


@config_app.command("unset")
def unset_value(key: KeyArgument) -> None:
    """Remove a setting from the config file (it takes its default again)."""
    _key(key)
    values = read_file()
    if values.pop(key, None) is not None:
        write_file(values)
    default = KEYS[key].default
    console().print(f"{escape(key)} unset" + (f" (default: {default})" if default else "") + ".")


@config_app.command("show")
def show(
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.TABLE,
) -> None:
    """Print every setting, its value and where the value comes from."""
    found = resolved()
    if fmt is not Format.TABLE:
        emit(
            {
                "file": str(config_file()),
                "settings": {
                    name: {"value": value, "source": source}
                    for name, (value, source) in found.items()
                },
            },
            fmt,
        )
        return
    out = console()
    out.print(f"config file: {escape(str(config_file()))}", style="dim")
    table = Table(box=None, pad_edge=False)
    for column in ("KEY", "VALUE", "SOURCE"):
        table.add_column(column)
    for name, (value, source) in found.items():
        table.add_row(escape(name), escape(value or "-"), source)
    out.print(table)
