"""Command-line arguments that need more than typer gives: ``--parameters k=v k=v ...``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import BunsuiError, ParameterInvalid, PipelineInvalid
from engine.source import read_document

PARAMETER_FLAGS = ("--parameters", "-p")


def expand_parameters(argv: Sequence[str]) -> list[str]:
    """Let one ``--parameters`` take several ``name=value`` pairs, as the product documents.

    ``--parameters a=1 b=2`` becomes ``--parameters a=1 --parameters b=2``;
    the pairs end at the first argument that starts with ``-`` or has no ``=``.
    """
    out: list[str] = []
    collecting = False
    for arg in argv:
        if arg == "--":
            collecting = False
            out.append(arg)
        elif arg in PARAMETER_FLAGS:
            collecting = True
            out.append(arg)
            continue
        elif collecting and not arg.startswith("-") and "=" in arg:
            if out and out[-1] not in PARAMETER_FLAGS:
                out.append("--parameters")
            out.append(arg)
            continue
        else:
            collecting = False
            out.append(arg)
    return out


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``name=value`` texts into a mapping (the last value of a repeated name wins).

    Raises:
        ParameterInvalid: a text is not ``name=value``.
    """
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ParameterInvalid(
                pair,
                "is not name=value.",
                "write each parameter as name=value, e.g. model_version=v1.1.",
            )
        found[name.strip()] = value
    return found


class ParametersFileInvalid(BunsuiError):
    """A --parameters-file cannot be used."""


def read_parameters_file(path: Path | None) -> dict[str, Any]:
    """A YAML or JSON mapping of parameter values.

    Raises:
        ParametersFileInvalid: unreadable, not YAML/JSON, or not a mapping.
    """
    if path is None:
        return {}
    try:
        document = read_document(path)
    except PipelineInvalid as exc:
        raise ParametersFileInvalid("\n".join(exc.lines())) from None
    if not isinstance(document.data, dict):
        raise ParametersFileInvalid(
            f"{path}: a parameters file is a mapping of name: value, not a list or a scalar."
        )
    return document.data
