"""Printing results as tables for people, or as JSON / YAML for programs."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any

import yaml
from rich.console import Console


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def console() -> Console:
    """stdout; 120 columns when it is not a terminal, so piped tables stay readable."""
    out = Console(highlight=False, soft_wrap=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=120, no_color=True, soft_wrap=True)
    return out


def error_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def as_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def emit(data: Any, fmt: Format) -> None:
    """Print machine-readable output (JSON or YAML) to stdout, nothing else."""
    text = as_json(data) if fmt is Format.JSON else as_yaml(data).rstrip("\n")
    sys.stdout.write(text + "\n")
