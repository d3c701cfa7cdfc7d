"""Templates: strings with ``${...}`` segments, and conditions.

A template that is exactly one ``${...}`` keeps the value's type; in a
longer string each value is written as text (:func:`engine.expressions.to_text`).
``$${`` writes a literal ``${``. A condition is one expression, written
``${a > 5}`` or bare ``a > 5``. The expressions themselves are
:mod:`engine.expressions`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NamedTuple

from engine.errors import ExpressionError, ExpressionSyntaxError, UnknownName
from engine.expressions import (
    MAX_SEGMENTS,
    Expression,
    Reference,
    Scope,
    parse_expression,
    to_text,
)
from engine.values import MAX_STRING_LENGTH, MAX_VALUE_DEPTH


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Segment(NamedTuple):
    expression: Expression
    start: int  # offset of the '${' in the template text
    end: int  # offset just after its '}'


class Template:
    """A string with ``${...}`` segments.

    Attributes:
        source: The template text.
        is_single: The text is exactly one ``${...}``; render keeps the value's type.
        expressions: The segments' expressions, in order.
    """

    def __init__(self, source: str, parts: list[str | _Segment]) -> None:
        self.source, self._parts = source, parts
        self.expressions = [p.expression for p in parts if isinstance(p, _Segment)]
        self.is_single = (
            len(parts) == 1
            and isinstance(parts[0], _Segment)
            and parts[0].start == 0
            and parts[0].end == len(source)
        )

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def references(self) -> list[Reference]:
        """Every name the segments read; positions are offsets into the template text."""
        return [
            replace(ref, position=expression.offset + ref.position)
            for expression in self.expressions
            for ref in expression.references()
        ]

    def render(self, scope: Scope, *, keep_unresolved: bool = False) -> Any:
        """Fill the segments in from ``scope``.

        Args:
            scope: Where names get their values.
            keep_unresolved: Leave a segment that reads an unknown name as its
                ``${...}`` text (a single template returns its source), to show
                what is known so far; ``default()`` then keeps the segment too
                rather than take its fallback. The result is for showing: it is
                not re-escaped, so rendering it again may differ from one
                render with every name (a ``$${`` has already become ``${``).

        Returns:
            For a single template the value itself; otherwise the text.

        Raises:
            UnknownName: A name has no value (unless kept).
            ExpressionError: A segment fails, or the text outgrows MAX_STRING_LENGTH.
        """
        if self.is_single:
            try:
                value = self.expressions[0]._evaluate(scope, keep_unresolved)
            except UnknownName:
                if keep_unresolved:
                    return self.source
                raise
            return value
        pieces, size = [], 0
        for part in self._parts:
            text = part if isinstance(part, str) else self._text(part, scope, keep_unresolved)
            size += len(text)
            if size > MAX_STRING_LENGTH:
                raise ExpressionError(
                    f"rendered text is longer than {MAX_STRING_LENGTH} characters", self.source
                )
            pieces.append(text)
        return "".join(pieces)

    def _text(self, segment: _Segment, scope: Scope, keep_unresolved: bool) -> str:
        try:
            value = segment.expression._evaluate(scope, keep_unresolved)
        except UnknownName:
            if keep_unresolved:
                return self.source[segment.start : segment.end]
            raise
        try:
            return to_text(value)
        except ExpressionError as exc:
            source = segment.expression.source
            raise ExpressionError(
                f"cannot render ${{{_clip(source)}}}: {exc.message}", source
            ) from None


def _segment_end(text: str, pos: int) -> int:
    """Offset of the '}' that closes a segment whose body starts at ``pos``, or -1.

    Quotes and braces are followed so that a '}' in a string or an object
    literal does not end the segment; one pass, linear in the text.
    """
    depth = 0
    while pos < len(text):
        char = text[pos]
        if char in "'\"":
            pos += 1
            while pos < len(text) and text[pos] != char:
                pos += 2 if text[pos] == "\\" else 1
        elif char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return pos
            depth -= 1
        pos += 1
    return -1


def _next_segment(text: str, pos: int) -> tuple[str, int]:
    """Literal text from ``pos`` (escapes applied) up to the next unescaped ``${``, and its offset.

    The offset is -1 when no segment follows.
    """
    pieces = []
    while True:
        dollar = text.find("$", pos)
        if dollar < 0:
            return "".join([*pieces, text[pos:]]), -1
        if text.startswith("$${", dollar):
            pieces.append(text[pos:dollar] + "${")
            pos = dollar + 3
        elif text.startswith("${", dollar):
            return "".join([*pieces, text[pos:dollar]]), dollar
        else:
            pieces.append(text[pos : dollar + 1])
            pos = dollar + 1


def is_template(text: str) -> bool:
    """Whether ``text`` contains a ``${`` that is not escaped as ``$${``."""
    return "${" in text and _next_segment(text, 0)[1] >= 0


def parse_template(text: str) -> Template:
    """Parse a string with ``${...}`` segments.

    Raises:
        ExpressionSyntaxError: An unterminated or empty ``${}``, or a segment that
            is not a valid expression; ``position`` is an offset into ``text``.
    """
    parts: list[str | _Segment] = []
    literals = pos = 0
    while True:
        literal, start = _next_segment(text, pos)
        if literal:
            parts.append(literal)
            literals += 1
        if start < 0:
            return Template(text, parts)
        if len(parts) - literals >= MAX_SEGMENTS:
            raise ExpressionSyntaxError(
                f"a template may hold at most {MAX_SEGMENTS} ${{...}} segments", text, start
            )
        close = _segment_end(text, start + 2)
        if close < 0:
            raise ExpressionSyntaxError("'${' is never closed with '}'", text, start)
        if not text[start + 2 : close].strip():
            raise ExpressionSyntaxError("empty ${}", text, start)
        try:
            expression = parse_expression(text[start + 2 : close])
        except ExpressionSyntaxError as exc:
            position = None if exc.position is None else start + 2 + exc.position
            raise ExpressionSyntaxError(exc.message, text, position) from None
        expression.offset = start + 2
        parts.append(_Segment(expression, start, close + 1))
        pos = close + 1


def parse_condition(text: str) -> Expression:
    """Parse a condition: exactly ``${expr}`` (whitespace around it allowed) or a bare expression.

    Raises:
        ExpressionSyntaxError: Bad syntax, or ``${...}`` mixed with other text (the
            message shows the condition written as one expression).
    """
    if not is_template(text):
        return parse_expression(text)
    template = parse_template(text)
    literal = "".join(p for p in template._parts if isinstance(p, str))
    if len(template.expressions) == 1 and not literal.strip():
        return template.expressions[0]
    joined = "".join(
        p if isinstance(p, str) else p.expression.source.strip() for p in template._parts
    )
    raise ExpressionSyntaxError(
        "a condition must be one expression, not text with ${...} in "
        f"it; write it as ${{{_clip(joined.strip())}}}",
        text,
        text.find("${"),
    )


# ------------------------------------------------------------------ values holding templates


def _at_path(exc: ExpressionError, path: tuple[str | int, ...]) -> ExpressionError:
    exc.value_path = path  # type: ignore[attr-defined]
    return exc


def _strings_in(
    value: Any,
    path: tuple[str | int, ...] = (),
    depth: int = 0,
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if depth > MAX_VALUE_DEPTH:
        raise _at_path(ExpressionError(f"value nests deeper than {MAX_VALUE_DEPTH} levels"), path)
    if isinstance(value, str) and "${" in value:
        yield path, value
    elif isinstance(value, dict | list):
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _strings_in(item, (*path, key), depth + 1)


def render_value(value: Any, scope: Scope, *, keep_unresolved: bool = False) -> Any:
    """Render every templated string inside ``value``, walking dicts and lists.

    Dict keys are not templated and other values come back unchanged. A string
    holding only ``$${`` escapes is rendered too (it loses the escapes).

    Raises:
        ExpressionError: As :meth:`Template.render`, with ``value_path`` set to the
            keys and indices of the offending string.
    """
    return _render(value, scope, keep_unresolved, ())


def _render(value: Any, scope: Scope, keep: bool, path: tuple[str | int, ...]) -> Any:
    if len(path) > MAX_VALUE_DEPTH:
        raise _at_path(ExpressionError(f"value nests deeper than {MAX_VALUE_DEPTH} levels"), path)
    if isinstance(value, str) and "${" in value:
        try:
            return parse_template(value).render(scope, keep_unresolved=keep)
        except ExpressionError as exc:
            raise _at_path(exc, path) from None
    if isinstance(value, dict):
        return {k: _render(v, scope, keep, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, scope, keep, (*path, i)) for i, v in enumerate(value)]
    return value


def value_references(value: Any) -> list[tuple[tuple[str | int, ...], Reference]]:
    """Every reference in every templated string inside ``value``, with the string's path.

    Raises:
        ExpressionSyntaxError: A string is not a valid template; ``value_path`` on
            the exception holds its path (the caller adds its own location).
    """
    found: list[tuple[tuple[str | int, ...], Reference]] = []
    for path, text in _strings_in(value):
        try:
            template = parse_template(text)
        except ExpressionError as exc:
            raise _at_path(exc, path) from None
        found.extend((path, ref) for ref in template.references())
    return found
