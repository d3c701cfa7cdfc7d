"""How many inputs the fuzz tests of this folder try, and the checks they share.

Every fuzz test takes its number of examples from :func:`examples`, so that
``make test`` stays quick while a long run raises them all at once::

    BUNSUI_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/security --hypothesis-show-statistics

The statistics print, per test, how many inputs hypothesis tried and how
they ended.
"""

from __future__ import annotations

import os
import unicodedata

from hypothesis import HealthCheck, settings

from engine.errors import BunsuiError, PipelineInvalid

FUZZ_EXAMPLES_VARIABLE = "BUNSUI_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    """``default``, or the number the environment asks for (a long run)."""
    wanted = os.environ.get(FUZZ_EXAMPLES_VARIABLE, "").strip()
    return int(wanted) if wanted else default


def fuzz(default: int) -> settings:
    """Hypothesis settings for a fuzz test: no deadline (the machine is shared; pytest-timeout
    is the guard against a hang), ``default`` examples unless the environment says more."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


INTERNALS = (
    "Traceback",
    'File "',
    "<unicode string>",
    "<built-in",
    " object at 0x",
    "errors.pydantic.dev",
    "[type=",
)
"""Text that only Python's or a library's internals would print."""


BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Characters that reorder what a terminal shows (the "Trojan Source" trick)."""


def unclear_characters(text: str) -> list[str]:
    """Control characters (line breaks, escapes, tabs), line and paragraph separators and
    bidirectional controls: what keeps text from reading as one plain line."""
    return [
        char
        for char in text
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS
    ]


def assert_line_clear(text: str, what: str = "message") -> None:
    """One line of plain text (no line break, control character or bidirectional control)
    naming no Python internals."""
    assert not unclear_characters(text), f"{what} is not one plain line: {text!r}"
    for internal in INTERNALS:
        assert internal not in text, f"{what} shows {internal!r}: {text!r}"


def assert_clear(error: BunsuiError) -> None:
    """A Bunsui error other than PipelineInvalid: one clear line."""
    assert str(error).strip(), f"{type(error).__name__} without a message"
    assert_line_clear(str(error))


def assert_problems_clear(error: PipelineInvalid, text: str | None = None) -> None:
    """Every problem of a refused pipeline: a message and a hint that are clear lines, a
    readable YAML path, and a line and column inside ``text`` when it is given."""
    assert error.problems, "a PipelineInvalid without problems"
    # YAML breaks lines at NEL, LS and PS too; CR LF counts twice here, an upper bound.
    lines = sum(text.count(c) for c in "\n\r\x85\u2028\u2029") + 2 if text is not None else None
    for problem in error.problems:
        assert problem.message.strip(), problem
        assert_line_clear(problem.message)
        assert_line_clear(problem.hint, "hint")
        assert_line_clear(problem.path, "path")
        if problem.line is not None and lines is not None:
            assert 1 <= problem.line <= lines, (problem, lines)
        if problem.column is not None:
            assert problem.column >= 1, problem
    assert len(str(error).splitlines()) == len(error.problems), str(error)
