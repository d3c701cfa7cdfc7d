"""The error tree of Bunsui.

One root, :class:`BunsuiError`, and narrow subclasses that carry data. The
CLI turns any of them into exit code 2 and one readable line per problem;
the API turns them into 4xx answers with the same text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def plain(text: str) -> str:
    """``text`` with what would break it out of one plain line escaped: control characters
    (line breaks, terminal escapes), line and paragraph separators, and bidirectional
    controls (which reorder what a terminal shows). Messages quote what users sent, and
    a terminal or a log line prints them as they are."""
    if text.isprintable():
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS
        else char
        for char in text
    )


class BunsuiError(Exception):
    """Root of every error Bunsui raises on purpose; its message is one plain line."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(plain(a) if isinstance(a, str) else a for a in args))


@dataclass(frozen=True)
class Problem:
    """One located problem in a pipeline file.

    Attributes:
        path: YAML path of the offending node, e.g. ``jobs[3].depends_on[0]``
            (empty for the document itself).
        message: What is wrong.
        hint: How to fix it (may be empty when the message says it all).
        line: 1-based line, when known.
        column: 1-based column, when known.
    """

    path: str
    message: str
    hint: str = ""
    line: int | None = None
    column: int | None = None

    def __post_init__(self) -> None:
        # Paths and messages quote keys and values from the document.
        for name in ("path", "message", "hint"):
            object.__setattr__(self, name, plain(getattr(self, name)))

    def render(self, source: str | None = None) -> str:
        """One line: ``file:line:col: path: message. Fix: hint``."""
        where = source or "<pipeline>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: "
        if self.path:
            text += f"{self.path}: "
        text += self.message
        if self.hint:
            text += f" Fix: {self.hint}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
        }


class PipelineInvalid(BunsuiError):
    """A pipeline document has one or more problems; all are reported at once."""

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        # One line per problem: each rendered line is plain, the line breaks are ours.
        Exception.__init__(self, "\n".join(p.render(source) for p in self.problems))

    def lines(self) -> list[str]:
        return [p.render(self.source) for p in self.problems]


class ParameterInvalid(BunsuiError):
    """A session parameter is missing, unknown, of the wrong type or breaks its rule."""

    def __init__(self, name: str, message: str, hint: str = "") -> None:
        self.name = name
        self.message = message = plain(message)
        self.hint = hint = plain(hint)
        text = f"parameter '{name}': {message}"
        if hint:
            text += f" Fix: {hint}"
        super().__init__(text)


class ExpressionError(BunsuiError):
    """An expression could not be parsed or evaluated.

    Attributes:
        message: What is wrong, without the position.
        expression: The expression text (without the surrounding ``${}``).
        position: 0-based offset into ``expression`` where the problem is, if known.
    """

    def __init__(self, message: str, expression: str = "", position: int | None = None) -> None:
        self.message = message = plain(message)
        self.expression = expression
        self.position = position
        text = message
        if position is not None and expression:
            text += f" (at character {position + 1} of '{_clip(expression)}')"
        super().__init__(text)


class ExpressionSyntaxError(ExpressionError):
    """The text is not a valid expression or template."""


class UnknownName(ExpressionError):
    """A name used by an expression has no value in the scope."""

    def __init__(self, name: str, message: str | None = None) -> None:
        self.name = name
        super().__init__(message or f"unknown name '{name}'")


class InputTooLarge(BunsuiError):
    """An input exceeds one of Bunsui's hard limits (file size, nesting, expansion)."""


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SessionNotFound(BunsuiError):
    """No session has this id."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session '{session_id}' not found.")


class Conflict(BunsuiError):
    """A write lost to another: the record already exists or changed meanwhile."""


class DispatchFailed(BunsuiError):
    """Work could not be started; the attempt counts as failed with this message."""


class PipelineNotFound(BunsuiError):
    """No pipeline has this name (or it was deleted), or it has no such version."""

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        if version is None:
            super().__init__(f"pipeline '{name}' not found.")
        else:
            super().__init__(f"pipeline '{name}' has no version {version}.")


class OutputTooLarge(BunsuiError):
    """A job's output is larger than a store keeps inline; the attempt fails with this."""
