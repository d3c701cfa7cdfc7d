"""The expression sandbox: a corpus of escape attempts, every one refused.

Expressions come from pipeline documents, which the API accepts from anyone
allowed to call it, and they run in the reducer with the stack's rights. So
each attempt below is tried as an expression, as a template segment and as a
condition, and each must end in an ExpressionError with one clear line, within
the expression language's limits: nothing reaches Python's eval, exec,
compile, __import__ or open, no file appears, and no attempt allocates more
than a few megabytes (pytest-timeout bounds the time).
"""

from __future__ import annotations

import builtins
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ExpressionError
from engine.expressions import MAX_DEPTH, MAX_EXPRESSION_LENGTH, MappingScope, parse_expression
from engine.templates import parse_condition, parse_template
from engine.values import MAX_STRING_LENGTH
from tests.security.fuzzing import assert_clear

SENTINEL = "bunsui-sandbox-sentinel"
SCOPE = MappingScope(
    {
        "s": "text",
        "n": 7,
        "xs": [1, 2, 3],
        "o": {"k": "v", "n": {"m": [0, 1]}},
        "half": "x" * (MAX_STRING_LENGTH // 2 + 1),
        "jobs": {"train": {"output": {"acc": 0.9}}},
    }
)
MEMORY_LIMIT = 64 * 1024 * 1024
"""Bytes an attempt may allocate at its peak: far above what a refusal needs, far below
what building a gigabyte string or list would."""

CORPUS: dict[str, list[str]] = {
    "dunder and attribute access": [
        "().__class__.__bases__[0].__subclasses__()",
        "''.__class__.__mro__[1]",
        "s.__class__",
        "o.__dict__",
        "o.__class__.__init__.__globals__",
        "xs.__getitem__",
        "jobs.__init__",
        "len.__self__",
        "str.__doc__",
        "s.upper",
        "o.keys",
        "o.get",
        "xs.pop",
        "__builtins__",
        "__import__",
        "__name__",
        "globals",
        "self",
        "o['__class__']",
        "o.n.__class__",
        "from_json('{}').__class__",
    ],
    "calls": [
        "eval('1')",
        "exec('x = 1')",
        "compile('1', 'f', 'eval')",
        f"open('{SENTINEL}', 'w')",
        "getattr(o, 'k')",
        "setattr(o, 'k', 1)",
        "vars()",
        "dir()",
        "type(o)",
        "print(s)",
        "input()",
        "breakpoint()",
        "o.get('k')",
        "xs.pop()",
        "s.format(o)",
        "(len)(s)",
        "len.__call__(s)",
        "len(s)(1)",
        "xs[0](1)",
        "default(eval('1'), 1)",
        "str(eval)",
        "range(10)",
        "os.system('id')",
    ],
    "imports": [
        "import os",
        "from os import system",
        f"__import__('os').system('touch {SENTINEL}')",
        "importlib.import_module('os')",
        "sys.modules['os']",
    ],
    "lambda": ["lambda: 1", "lambda x: x", "(lambda: 0)()", "default(lambda: 1, 2)"],
    "comprehensions and generators": [
        "[x for x in xs]",
        "{x: 1 for x in xs}",
        "(x for x in xs)",
        "any(x for x in xs)",
        "[x for x in range(10 ** 9)]",
        "{*xs}",
        "[*xs]",
        "{**o}",
        "xs if s else o",
        "(n := 5)",
    ],
    "format-string tricks": [
        "f'{o}'",
        "f'{s.__class__}'",
        "'{0.__class__}'.format(s)",
        "'%s' % s",
        "'%(k)s' % o",
        "s.format_map(o)",
        "str(o).format(1)",
        "json(o).__mod__(1)",
        "`id`",
        "$(id)",
        "${s.__class__}",
        "{{ s.__class__ }}",
    ],
    "huge numbers": [
        "2 ** 10000",
        "9 ** 9 ** 9",
        "pow(2, 100000000)",
        "2 << 100000",
        "1e999",
        "-1e999",
        "1e308 * 10",
        "9223372036854775807 + 1",
        "-9223372036854775807 - 2",
        "99999999999999999999",
        "3037000500 * 3037000500",
        "float('inf')",
        "float('1e999')",
        "int('99999999999999999999')",
        "round(1e300)",
        "abs(-9223372036854775807 - 1)",
        "sum([9223372036854775807, 1])",
        "1 / 0",
        "n // 0",
        "n % 0",
    ],
    "huge strings and lists": [
        "'a' * 1000000000",
        "s * 1000000000",
        "[0] * 1000000000",
        "xs * 99999",
        "half + half",
        "half + half + half",
        "str([half, half])",
        "json([half, half, half])",
        "upper(half) + lower(half)",
        "[half, half] + 1",
        "from_json(json([half, half]))",
    ],
    "deep nesting": [
        "(" * (MAX_DEPTH + 8) + "1" + ")" * (MAX_DEPTH + 8),
        "[" * (MAX_DEPTH + 8) + "]" * (MAX_DEPTH + 8),
        "-" * (MAX_DEPTH + 8) + "1",
        "not " * (MAX_DEPTH + 8) + "true",
        "abs(" * (MAX_DEPTH + 8) + "1" + ")" * (MAX_DEPTH + 8),
        "{'a': " * (MAX_DEPTH + 8) + "1" + "}" * (MAX_DEPTH + 8),
        "from_json('" + "[" * 5000 + "]" * 5000 + "')",
        "from_json('" + '{"a":' * 1000 + "1" + "}" * 1000 + "')",
        "xs" + "[0]" * 1000,
        "o" + ".k" * 1500,
    ],
    "very long input": [
        "1 + " * (MAX_EXPRESSION_LENGTH // 4) + "1",
        "n" * (MAX_EXPRESSION_LENGTH + 1),
        "'" + "x" * (MAX_EXPRESSION_LENGTH + 1) + "'",
        "len(" + ", ".join(["n"] * 2000) + ")",
        "[" + ", ".join(["half"] * 1000) + "] + 1",
    ],
    "unicode tricks": [
        "ｅｖａｌ('1')",
        "__ｃｌａｓｓ__",
        "s.__ｃｌａｓｓ__",
        "оpen('x')",
        "o\u200b.__class__",
        "\u202es.__class__",
        "n\u00a0+ 1",
        "１ + １",
        "n\u2028+ 1",
        "𝐞𝐯𝐚𝐥('1')",
        "e\u0301val('1')",
        "ℯval('1')",
        "s\uff0e__class__",
        "s\u2024__class__",
        "\ufeffeval('1')",
    ],
}
ATTEMPTS = [(kind, text) for kind, texts in CORPUS.items() for text in texts]
IDS = [f"{kind.split()[0]}-{i}" for i, (kind, _) in enumerate(ATTEMPTS)]


@contextmanager
def nothing_reaches_python() -> Iterator[list[str]]:
    """While it lasts, eval, exec, compile, __import__ and open record any call and refuse."""
    called: list[str] = []
    saved = {name: getattr(builtins, name) for name in ("eval", "exec", "compile", "open")}
    real_import = builtins.__import__

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            called.append(name)
            raise AssertionError(f"the expression language called {name}")

        return refused

    def watched_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("os", "subprocess", "importlib", "sys", "shutil", "socket"):
            called.append(f"__import__({name})")
        return real_import(name, *args, **kwargs)

    for name in saved:
        setattr(builtins, name, refuse(name))
    builtins.__import__ = watched_import
    try:
        yield called
    finally:
        for name, original in saved.items():
            setattr(builtins, name, original)
        builtins.__import__ = real_import


def refused(action: Callable[[], Any]) -> tuple[ExpressionError, int]:
    """The ExpressionError ``action`` ends in, and the peak bytes it allocated."""
    tracemalloc.start()
    try:
        with nothing_reaches_python() as called, pytest.raises(ExpressionError) as caught:
            action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not called, called
    return caught.value, peak


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("kind", "text"), ATTEMPTS, ids=IDS)
@pytest.mark.parametrize("form", ["expression", "template", "condition"])
def test_every_escape_attempt_is_refused_clearly(
    kind: str, text: str, form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    action = {
        "expression": lambda: parse_expression(text).evaluate(SCOPE),
        "template": lambda: parse_template("run ${" + text + "} now").render(SCOPE),
        "condition": lambda: parse_condition(text).evaluate(SCOPE),
    }[form]

    error, peak = refused(action)

    assert_clear(error)
    assert peak < MEMORY_LIMIT, f"{kind}: {peak:,} bytes at the peak"
    assert not (tmp_path / SENTINEL).exists()


def test_the_corpus_covers_every_kind_of_attempt() -> None:
    assert len(ATTEMPTS) >= 120
    assert all(len(texts) >= 4 for texts in CORPUS.values())


@pytest.mark.timeout(30)
def test_a_template_of_many_segments_is_refused_before_it_is_evaluated() -> None:
    error, peak = refused(lambda: parse_template("${half}" * 5000).render(SCOPE))

    assert_clear(error)
    assert "segments" in error.message
    assert peak < MEMORY_LIMIT
