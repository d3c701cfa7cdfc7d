"""The expression language of Bunsui: what is written inside ``${...}`` and in conditions.

Templates (strings with ``${...}`` segments) and conditions are parsed by
:mod:`engine.templates`, which hands each segment to :func:`parse_expression`.

The language is evaluated by a hand-written parser and tree walker: nothing
reaches Python's ``eval``, no Python attribute is ever read by a user-given
name, and only the functions below can be called. Values are JSON values.

Grammar, lowest precedence first::

    a or b     a and b     not a        (and/or give the deciding operand, like Python)
    == != < <= > >= in, not in          (chains like 1 < x < 3 mean 1 < x and x < 3)
    + -        * / // %    -a +a
    a.key   a["key"]   a[0]   a[-1]   f(x, y)
    1  2.5  1e3  'text'  "text"  true false null (or True False None)  [1, 2]  {"k": v}

Strings take the escapes ``\\\\ \\' \\" \\n \\t \\r``. ``==`` never fails
(``1 == 1.0``; booleans are not numbers, so ``true == 1`` is false); ordering
needs two numbers or two strings; ``+`` adds numbers or joins two strings or
two lists; ``- * / // %`` take numbers (``/`` always gives a float); ``in``
finds a substring, a list item or an object key.

Functions (called by plain name; nothing else can be called):
    len(x): length of a string, list or object.
    min(list) or min(a, b, ...), max(...): of numbers, or of strings.
    sum(list): sum of numbers.   abs(x): absolute value.
    round(x[, n]): Python's rounding (half to even), -30 <= n <= 30.
    int(x), float(x): from a number, boolean or numeric string (int truncates).
    str(x): x as template text (null, true, 1.5, JSON for lists and objects).
    bool(x): truthiness (null, false, 0, "", [] and {} are false).
    lower(s), upper(s), trim(s): case and surrounding whitespace of a string.
    startswith(s, prefix), endswith(s, suffix): tests on strings.
    contains(container, item): same as ``item in container``.
    keys(obj), values(obj): an object's keys or values as a list.
    any(list), all(list): whether any / all items are truthy.
    json(x): compact JSON text.   from_json(s): the value of JSON text.
    default(x, fallback): x, or fallback when x is null or cannot be read (an
        unknown name, a missing key or index, a key of null). Only x's lookup
        failures are caught; x is evaluated lazily for that.

Limits, so that hostile text fails fast with an :class:`ExpressionError`: an
expression has at most ``MAX_EXPRESSION_LENGTH`` characters and nests at most
``MAX_DEPTH`` levels (parentheses, brackets, braces, calls, unary operators),
and a template holds at most ``MAX_SEGMENTS`` segments;
integers stay within ``±MAX_INTEGER`` and floats finite; ``+`` builds strings
of at most ``MAX_STRING_LENGTH`` characters and lists of at most
``MAX_LIST_LENGTH`` items; JSON text and rendered text are at most
``MAX_STRING_LENGTH`` characters; one evaluation creates at most
``MAX_PRODUCED`` characters and items in all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from engine.errors import ExpressionError, ExpressionSyntaxError, UnknownName
from engine.values import (
    _FUNCTIONS,
    MAX_INTEGER,
    MAX_STRING_LENGTH,
    Fail,
    _a,
    _arithmetic,
    _clip,
    _compare,
    _dumps,
    _is_int,
    _is_number,
    _suggest,
    _to_text,
    _type_name,
)

MAX_EXPRESSION_LENGTH = 4096
MAX_DEPTH = 32
MAX_SEGMENTS = 1000
"""``${...}`` segments in one template: each is parsed, so a long string of them costs time."""
MAX_PRODUCED = 16 * MAX_STRING_LENGTH
"""Characters and items that one evaluation may create in all (strings, lists, parsed JSON)."""


class Scope(Protocol):
    """Where an expression finds the values of names."""

    def resolve(self, name: str) -> Any:
        """Return the value of ``name``; raise :class:`UnknownName` when it has none."""
        ...


class MappingScope:
    """A :class:`Scope` over a mapping of names to JSON values."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def resolve(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            hint = _suggest(name, self._values)
            raise UnknownName(name, f"unknown name '{_clip(name, 60)}'{hint}") from None


@dataclass(frozen=True)
class Reference:
    """A name an expression reads, with the static part of its access path.

    Attributes:
        root: The name, e.g. ``jobs`` in ``jobs.train.output``.
        path: The literal ``.key``, ``["key"]`` and ``[0]`` accesses right after
            the root, up to the first computed one.
        position: 0-based offset of the name in the expression (in the whole
            text for :meth:`Template.references`).
    """

    root: str
    path: tuple[str | int, ...]
    position: int


class _MissingValue(ExpressionError):
    """A missing key or index, or a key of null: what default() replaces by its fallback."""


# ------------------------------------------------------------------ lexer


class _Token(NamedTuple):
    kind: str  # num, str, name, kw (and or not in), const (true...), op, end
    value: Any
    pos: int
    end: int


_CONSTANTS = {
    "true": True,
    "True": True,
    "false": False,
    "False": False,
    "null": None,
    "None": None,
}
# ASCII only: \s and \d would let Unicode look-alikes in.
_LEXEME = re.compile(
    r"(?P<ws>[ \t\r\n]+)|(?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>//|==|!=|<=|>=|[-+*/%<>()\[\]{},.:])|(?P<quote>['\"])"
)
_CHUNK = {"'": re.compile(r"[^'\\]*"), '"': re.compile(r'[^"\\]*')}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_CHAR_HINTS = {
    "!": "; use 'not' (or != to compare)",
    "&": "; use 'and'",
    "|": "; use 'or'",
    "=": "; use == to compare",
    "$": "; '${' cannot appear inside an expression",
}


def _tokenize(source: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(source):
        match = _LEXEME.match(source, pos)
        if match is None:
            char = source[pos]
            raise ExpressionSyntaxError(
                f"unexpected character {char!r}{_CHAR_HINTS.get(char, '')}", source, pos
            )
        kind, text, end = match.lastgroup, match.group(), match.end()
        if kind == "num":
            if end < len(source) and (source[end].isalnum() or source[end] == "_"):
                raise ExpressionSyntaxError("invalid number", source, pos)
            tokens.append(_Token("num", _number(text, source, pos), pos, end))
        elif kind == "name":
            if text in ("and", "or", "not", "in"):
                tokens.append(_Token("kw", text, pos, end))
            elif text in _CONSTANTS:
                tokens.append(_Token("const", _CONSTANTS[text], pos, end))
            else:
                tokens.append(_Token("name", text, pos, end))
        elif kind == "op":
            tokens.append(_Token("op", text, pos, end))
        elif kind == "quote":
            value, end = _string(source, pos)
            tokens.append(_Token("str", value, pos, end))
        pos = end
    tokens.append(_Token("end", None, len(source), len(source)))
    return tokens


def _number(text: str, source: str, pos: int) -> int | float:
    if text.isdigit():
        # The length check keeps int() away from thousands of digits.
        if len(text.lstrip("0")) > 19 or int(text) > MAX_INTEGER:
            raise ExpressionSyntaxError(f"integer is larger than {MAX_INTEGER}", source, pos)
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ExpressionSyntaxError("number is out of range", source, pos)
    return value


def _string(source: str, start: int) -> tuple[str, int]:
    quote, parts, pos = source[start], [], start + 1
    while True:
        match = _CHUNK[quote].match(source, pos)
        assert match is not None  # the pattern matches the empty string
        parts.append(match.group())
        pos = match.end()
        if pos >= len(source):
            raise ExpressionSyntaxError("unterminated string", source, start)
        if source[pos] == quote:
            return "".join(parts), pos + 1
        escape = source[pos + 1 : pos + 2]  # source[pos] is a backslash
        if escape not in _ESCAPES:
            raise ExpressionSyntaxError(
                f"unknown escape '\\{escape}' in string; write \\\\ for a backslash", source, pos
            )
        parts.append(_ESCAPES[escape])
        pos += 2


# ------------------------------------------------------------------ syntax tree and evaluation


class _Node(NamedTuple):
    kind: str  # lit name get call list obj unary or and cmp arith
    pos: int  # offset in the expression: where errors point and references are
    kids: tuple[_Node, ...] = ()
    # lit: the value; name: the name; call: the function; obj: the keys; unary: the op;
    # or/and/cmp/arith: ((op, offset), ...); get: ((start, offset, dotted), ...) per step,
    # start being where the '.' or '[' is, so the text before it names the container.
    data: Any = None


class _Context:
    """One evaluation: the scope, the text for errors, and what it may still allocate."""

    def __init__(self, source: str, scope: Scope, keep_unresolved: bool) -> None:
        self.source, self.scope, self.budget = source, scope, MAX_PRODUCED
        # Rendering for a second pass: default() must leave an unknown name to the
        # later scope rather than take its fallback now.
        self.keep_unresolved = keep_unresolved

    def spend(self, value: Any, position: int) -> None:
        # Each result is capped, but [upper(s), upper(s), ...] multiplies a big s.
        if isinstance(value, str | list | dict):
            self.budget -= len(value)
            if self.budget < 0:
                raise ExpressionError(
                    f"expression creates more than {MAX_PRODUCED} characters and items in all",
                    self.source,
                    position,
                )


def _eval(node: _Node, ctx: _Context) -> Any:
    kind, pos, kids, data = node
    if kind == "lit":
        return data
    if kind == "name":
        try:
            return ctx.scope.resolve(data)
        except UnknownName as exc:
            located = UnknownName(exc.name, exc.message)
            # UnknownName's constructor takes no position; the base one formats it.
            ExpressionError.__init__(located, exc.message, ctx.source, pos)
            raise located from None
    if kind == "get":
        value = _eval(kids[0], ctx)
        for key, step in zip(kids[1:], data, strict=True):
            value = _lookup(ctx, pos, value, _eval(key, ctx), *step)
        return value
    if kind in ("or", "and"):
        for kid in kids:
            value = _eval(kid, ctx)
            if bool(value) is (kind == "or"):
                break
        return value
    if kind == "list":
        return [_eval(kid, ctx) for kid in kids]
    if kind == "obj":
        return {key: _eval(kid, ctx) for key, kid in zip(data, kids, strict=True)}
    if kind == "call":
        return _call(node, ctx)
    if kind == "unary":
        value = _eval(kids[0], ctx)
        if data == "not":
            return not value
        if not _is_number(value):
            raise ExpressionError(
                f"unary '{data}' needs a number, got {_type_name(value)}", ctx.source, pos
            )
        return -value if data == "-" else value
    left = _eval(kids[0], ctx)  # cmp or arith: a flat chain, so long ones need no recursion
    for (op, at), kid in zip(data, kids[1:], strict=True):
        right = _eval(kid, ctx)
        try:
            if kind == "arith":
                left = _arithmetic(op, left, right)
                ctx.spend(left, at)
            elif not _compare(op, left, right):
                return False
            else:
                left = right
        except Fail as exc:
            raise ExpressionError(exc.message, ctx.source, at) from None
    return True if kind == "cmp" else left


def _lookup(
    ctx: _Context, pos: int, value: Any, key: Any, start: int, at: int, dotted: bool
) -> Any:
    path = _clip(ctx.source[pos:start].strip())  # the text naming the container
    shown = f"key {_clip(repr(key), 40)}" if isinstance(key, str) else f"[{_clip(repr(key))}]"
    if isinstance(value, dict) and isinstance(key, str):
        if key in value:
            return value[key]
        raise _MissingValue(f"{path} has no {shown}{_suggest(key, value)}", ctx.source, at)
    if isinstance(value, list) and _is_int(key) and not dotted:
        if -len(value) <= key < len(value):
            return value[key]
        items = f"{len(value)} item{'' if len(value) == 1 else 's'}"
        raise _MissingValue(f"{path} has no index {key} (it has {items})", ctx.source, at)
    if value is None:
        raise _MissingValue(f"{path} is null; cannot read {shown}", ctx.source, at)
    if isinstance(value, dict):
        message = f"{path} is an object; its keys are strings, got {_a(key)}"
    elif isinstance(value, list) and not dotted:
        message = f"{path} is a list; its indexes are integers, got {_a(key)}"
    else:
        hint = "; use an index like [0]" if isinstance(value, list) else ""
        message = f"{path} is {_a(value)}, not an object; cannot read {shown}{hint}"
    raise ExpressionError(message, ctx.source, at)


def _call(node: _Node, ctx: _Context) -> Any:
    if node.data == "default":
        try:
            value = _eval(node.kids[0], ctx)
        except _MissingValue:
            value = None
        except UnknownName:
            if ctx.keep_unresolved:
                raise
            value = None
        return _eval(node.kids[1], ctx) if value is None else value
    args = [_eval(kid, ctx) for kid in node.kids]
    if node.data == "from_json":
        ctx.spend(args[0], node.pos)  # parsed JSON is bigger than its text, not its top level
    try:
        result = _FUNCTIONS[node.data][2](*args)
    except Fail as exc:
        raise ExpressionError(f"{node.data}() {exc.message}", ctx.source, node.pos) from None
    ctx.spend(result, node.pos)
    return result


# ------------------------------------------------------------------ parser

_LEVELS = (
    ("or", ("or",)),
    ("and", ("and",)),
    ("cmp", ("==", "!=", "<", "<=", ">", ">=", "in")),
    ("arith", ("+", "-")),
    ("arith", ("*", "/", "//", "%")),
)


class _Parser:
    """Recursive descent in which everything that nests goes through :meth:`nested`.

    Binary operators are read in loops into flat chains, so the Python stack
    grows with nesting (bounded by MAX_DEPTH, about a dozen frames a level), never
    with the length of the text.
    """

    def __init__(self, source: str) -> None:
        self.source, self.tokens, self.index, self.depth = source, _tokenize(source), 0, 0

    def fail(self, message: str, position: int) -> ExpressionSyntaxError:
        return ExpressionSyntaxError(message, self.source, position)

    def describe(self, token: _Token) -> str:
        if token.kind in ("end", "str"):
            return "end of expression" if token.kind == "end" else "a string"
        text = _clip(self.source[token.pos : token.end], 40)
        return f"number {text}" if token.kind == "num" else f"'{text}'"

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.index += 1
        return token

    def at(self, *values: str) -> bool:
        token = self.peek()
        return token.kind in ("op", "kw") and token.value in values

    def expect(self, op: str) -> None:
        if not self.at(op):
            raise self.fail(f"expected '{op}', got {self.describe(self.peek())}", self.peek().pos)
        self.take()

    def nested(self, position: int, parse: Callable[..., _Node], *args: Any) -> _Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"expression nests deeper than {MAX_DEPTH} levels", position)
        node = parse(*args)
        self.depth -= 1
        return node

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            raise self.fail("empty expression", 0)
        node = self.binary(0)
        token = self.peek()
        if token.kind != "end":
            hint = (
                "; use == or != to compare"
                if token.value == "is"
                else "; is an operator missing?"
                if token.kind in ("name", "num", "str", "const")
                else ""
            )
            raise self.fail(f"unexpected {self.describe(token)}{hint}", token.pos)
        return node

    def binary(self, level: int) -> _Node:
        if level == len(_LEVELS):
            return self.unary()
        kind, ops = _LEVELS[level]
        if kind == "cmp" and self.at("not"):  # 'not' binds looser than comparisons
            token = self.take()
            return _Node("unary", token.pos, (self.nested(token.pos, self.binary, level),), "not")
        kids, data = [self.binary(level + 1)], []
        while True:
            token = self.peek()
            if kind == "cmp" and self.at("not") and self.peek(1)[:2] == ("kw", "in"):
                self.take()
                op = "not in"
            elif self.at(*ops):
                op = token.value
            else:
                break
            self.take()
            data.append((op, token.pos))
            kids.append(self.binary(level + 1))
        return _Node(kind, kids[0].pos, tuple(kids), tuple(data)) if data else kids[0]

    def unary(self) -> _Node:
        if not self.at("-", "+"):
            return self.postfix()
        token = self.take()
        operand = self.nested(token.pos, self.unary)
        if operand.kind == "lit" and _is_number(operand.data):  # so [-1] is a literal index
            value = -operand.data if token.value == "-" else operand.data
            return _Node("lit", token.pos, (), value)
        return _Node("unary", token.pos, (operand,), token.value)

    def postfix(self) -> _Node:
        start = self.peek().pos
        kids, steps = [self.atom()], []
        while self.at(".", "[", "("):
            token = self.take()
            if token.value == "(":
                raise self.fail(
                    "only functions can be called, by plain name, e.g. len(x)", token.pos
                )
            if token.value == "[":
                kids.append(self.nested(token.pos, self.enclosed, "]"))
                steps.append((token.pos, token.pos, False))
                continue
            key = self.take()
            if key.kind not in ("name", "kw", "const"):
                hint = "; use [0] for a list index" if key.kind == "num" else ""
                raise self.fail(
                    f"expected a key name after '.', got {self.describe(key)}{hint}", key.pos
                )
            kids.append(_Node("lit", key.pos, (), self.source[key.pos : key.end]))
            steps.append((token.pos, key.pos, True))
        return _Node("get", start, tuple(kids), tuple(steps)) if steps else kids[0]

    def atom(self) -> _Node:
        token = self.take()
        if token.kind in ("num", "str", "const"):
            return _Node("lit", token.pos, (), token.value)
        if token.kind == "name" and self.at("("):
            return self.call(token)
        if token.kind == "name":
            return _Node("name", token.pos, (), token.value)
        if token.kind == "op" and token.value in ("(", "[", "{"):
            return self.nested(token.pos, self.group, token)
        raise self.fail(f"expected a value, got {self.describe(token)}", token.pos)

    def enclosed(self, closer: str) -> _Node:
        node = self.binary(0)
        self.expect(closer)
        return node

    def items(self, closer: str) -> tuple[_Node, ...]:
        items = []
        while not self.at(closer):
            items.append(self.binary(0))
            if not self.at(","):
                break
            self.take()
        self.expect(closer)
        return tuple(items)

    def group(self, token: _Token) -> _Node:
        if token.value == "(":
            return self.enclosed(")")
        if token.value == "[":
            return _Node("list", token.pos, self.items("]"))
        entries: dict[str, _Node] = {}
        while not self.at("}"):
            key = self.take()
            if key.kind != "str":
                raise self.fail(f"expected a quoted key, got {self.describe(key)}", key.pos)
            if key.value in entries:
                raise self.fail(f"duplicate key {_clip(repr(key.value), 40)}", key.pos)
            self.expect(":")
            entries[key.value] = self.binary(0)
            if not self.at(","):
                break
            self.take()
        self.expect("}")
        return _Node("obj", token.pos, tuple(entries.values()), tuple(entries))

    def call(self, name: _Token) -> _Node:
        if name.value not in _FUNCTIONS:
            hint = _suggest(name.value, list(_FUNCTIONS)) or (
                "; the functions are " + ", ".join(sorted(_FUNCTIONS))
            )
            raise self.fail(f"unknown function '{_clip(name.value, 40)}'{hint}", name.pos)
        args = self.nested(self.take().pos, self.items, ")")
        low, high, _ = _FUNCTIONS[name.value]
        if len(args) < low or (high is not None and len(args) > high):
            count = str(low) if low == high else f"{low} or {high}" if high else f"at least {low}"
            plural = "" if count.endswith("1") else "s"
            raise self.fail(
                f"{name.value}() takes {count} argument{plural} ({len(args)} given)", name.pos
            )
        return _Node("call", name.pos, args, name.value)


# ------------------------------------------------------------------ expressions


class Expression:
    """A parsed expression, to evaluate against any number of scopes.

    Attributes:
        source: The expression text (inside the ``${}`` when from a template).
        offset: Where ``source`` starts in the text it was parsed from (0 for
            :func:`parse_expression`, just after the ``${`` for a template segment).
    """

    def __init__(self, source: str, root: _Node, offset: int = 0) -> None:
        self.source, self.offset, self._root = source, offset, root

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def references(self) -> list[Reference]:
        """Every name the expression reads (function names excluded), in source order."""
        found, pending = [], [self._root]
        while pending:
            node = pending.pop()
            if node.kind == "name":
                found.append(Reference(node.data, (), node.pos))
            elif node.kind == "get" and node.kids[0].kind == "name":
                path: list[str | int] = []
                for key in node.kids[1:]:
                    if key.kind != "lit" or not (isinstance(key.data, str) or _is_int(key.data)):
                        break  # the path stops at the first computed access
                    path.append(key.data)
                found.append(Reference(node.kids[0].data, tuple(path), node.kids[0].pos))
                pending.extend(node.kids[1:])
            else:
                pending.extend(node.kids)
        return sorted(found, key=lambda ref: ref.position)

    def evaluate(self, scope: Scope) -> Any:
        """Evaluate against ``scope``.

        Raises:
            UnknownName: A name has no value in the scope.
            ExpressionError: Anything else that fails, located in ``source``.
        """
        return self._evaluate(scope, keep_unresolved=False)

    def _evaluate(self, scope: Scope, keep_unresolved: bool) -> Any:
        try:
            return _eval(self._root, _Context(self.source, scope, keep_unresolved))
        except RecursionError:
            # Nesting is bounded by MAX_DEPTH; this guards a caller already deep in its stack.
            raise ExpressionError(
                "expression nests too deeply to evaluate", self.source, 0
            ) from None


def parse_expression(source: str) -> Expression:
    """Parse an expression (without ``${}`` around it).

    Raises:
        ExpressionSyntaxError: The text is not an expression or breaks a limit;
            ``position`` is an offset into ``source``.
    """
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionSyntaxError(
            f"expression is longer than {MAX_EXPRESSION_LENGTH} characters",
            source,
            MAX_EXPRESSION_LENGTH,
        )
    try:
        return Expression(source, _Parser(source).parse())
    except RecursionError:  # as in evaluate: only when the caller's stack is already deep
        raise ExpressionSyntaxError("expression nests too deeply", source, 0) from None


def truth(value: Any, source: str = "") -> bool:
    """The verdict of a condition: a boolean as is, null as false, anything else an error.

    Raises:
        ExpressionError: The value is neither a boolean nor null.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    try:
        shown = _dumps(value, (",", ":"))
    except Fail:
        shown = f"of type {type(value).__name__}"
    raise ExpressionError(
        f"condition must evaluate to true or false, got {_type_name(value)} {_clip(shown, 40)}",
        source,
    )


def to_text(value: Any) -> str:
    """How a value is written into template text: null, true/false, numbers, JSON.

    Raises:
        ExpressionError: the value cannot be text (a non-finite number, too long).
    """
    try:
        return _to_text(value)
    except Fail as exc:
        raise ExpressionError(exc.message) from None
