"""Operations on JSON values for the expression language, and its functions.

Every operation takes and gives JSON values (None, bool, int, float, str,
list, dict) and complains with :class:`Fail`, which the evaluator turns into
a located :class:`~engine.errors.ExpressionError`. Sizes are bounded here so
that no expression can build a huge string, list or number.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

MAX_STRING_LENGTH = 1 << 20
MAX_LIST_LENGTH = 100_000
MAX_INTEGER = 2**63 - 1
MAX_VALUE_DEPTH = 200
"""How deep render_value and value_references walk into nested dicts and lists."""


class Fail(Exception):
    """An operation's complaint; the evaluator turns it into a located ExpressionError."""

    @property
    def message(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------ operations on values

_TYPE_NAMES = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "list",
    dict: "object",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _a(value: Any) -> str:
    name = _type_name(value)
    return name if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(value: Any) -> Any:
    if isinstance(value, int) and abs(value) > MAX_INTEGER:
        raise Fail(f"integer result is out of range (the limit is ±{MAX_INTEGER})")
    if isinstance(value, float) and not math.isfinite(value):
        raise Fail("result is not a finite number")
    return value


def _equal(left: Any, right: Any) -> bool:
    # An explicit stack, not recursion: values from from_json() may nest deeply.
    stack = [(left, right)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            stack.extend((a[k], b[k]) for k in a)
        elif _is_number(a) and _is_number(b):
            if a != b:
                return False
        elif type(a) is not type(b) or isinstance(a, list | dict) or a != b:
            return False  # bool vs number lands here: booleans are not numbers
    return True


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise Fail(f"'in' a string needs a string to look for, got {_type_name(item)}")
        return item in container
    if isinstance(container, list):
        return any(_equal(item, element) for element in container)
    if isinstance(container, dict):
        return isinstance(item, str) and item in container
    raise Fail(f"'in' needs a string, list or object on the right, got {_type_name(container)}")


def _compare(op: str, a: Any, b: Any) -> bool:
    if op in ("==", "!="):
        return _equal(a, b) is (op == "==")
    if op in ("in", "not in"):
        return _contains(b, a) is (op == "in")
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise Fail(
            f"'{op}' needs two numbers or two strings, got {_type_name(a)} and {_type_name(b)}"
        )
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _arithmetic(op: str, a: Any, b: Any) -> Any:
    if op == "+" and not (_is_number(a) and _is_number(b)):
        if isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_STRING_LENGTH:
                raise Fail(f"joined string would be longer than {MAX_STRING_LENGTH} characters")
            return a + b
        if isinstance(a, list) and isinstance(b, list):
            if len(a) + len(b) > MAX_LIST_LENGTH:
                raise Fail(f"joined list would have more than {MAX_LIST_LENGTH} items")
            return a + b
        hint = "; use str() to turn a value into text" if str in (type(a), type(b)) else ""
        raise Fail(f"cannot add {_type_name(a)} and {_type_name(b)}{hint}")
    if not (_is_number(a) and _is_number(b)):
        raise Fail(f"'{op}' needs two numbers, got {_type_name(a)} and {_type_name(b)}")
    if op in ("/", "//", "%") and b == 0:
        raise Fail("modulo by zero" if op == "%" else "division by zero")
    try:
        if op in ("+", "-", "*"):
            return _checked(a + b if op == "+" else a - b if op == "-" else a * b)
        return _checked(a / b if op == "/" else a // b if op == "//" else a % b)
    except OverflowError:
        raise Fail("number is out of range") from None


def _to_text(value: Any) -> str:
    """One value as template text; also the ``str()`` function."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and not math.isfinite(value):
        raise Fail("cannot render a number that is not finite")
    if _is_number(value):
        return repr(value)
    if isinstance(value, list | dict):
        return _dumps(value, (", ", ": "))
    raise Fail(f"cannot render a value of type {type(value).__name__}")


def _dumps(value: Any, separators: tuple[str, str]) -> str:
    # Streamed and counted: [o, o, o, ...] costs a few characters of expression
    # per copy of o, so json.dumps could build gigabytes before any check.
    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=separators)
    chunks, size = [], 0
    try:
        for chunk in encoder.iterencode(value):
            size += len(chunk)
            if size > MAX_STRING_LENGTH:
                raise Fail(f"JSON text would be longer than {MAX_STRING_LENGTH} characters")
            chunks.append(chunk)
    except (TypeError, ValueError, RecursionError) as exc:
        raise Fail(f"cannot render as JSON: {_clip(str(exc))}") from None
    return "".join(chunks)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(name: str, choices: Any) -> str:
    if not isinstance(choices, Mapping | list) or len(choices) > 500 or len(name) > 100:
        return ""  # difflib is slow on many or long candidates; a hint is not worth a slow error
    candidates = [c for c in choices if isinstance(c, str) and len(c) <= 100]
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


# ------------------------------------------------------------------ functions


def _need(value: Any, kinds: Any, what: str) -> Any:
    if not isinstance(value, kinds) or isinstance(value, bool):  # booleans are not numbers
        raise Fail(f"needs {what}, got {_a(value)}")
    return value


def _extreme(pick: Callable[..., Any], args: list[Any]) -> Any:
    items = _need(args[0], list, "a list or several values") if len(args) == 1 else args
    if not items:
        raise Fail("needs at least one value, got an empty list")
    if not (all(map(_is_number, items)) or all(isinstance(i, str) for i in items)):
        raise Fail("needs all numbers or all strings")
    return pick(items)


def _sum(items: Any) -> Any:
    if not all(map(_is_number, _need(items, list, "a list of numbers"))):
        raise Fail("needs a list of numbers")
    try:
        return _checked(sum(items))
    except OverflowError:
        raise Fail("number is out of range") from None


def _round(value: Any, digits: Any = None) -> Any:
    _need(value, int | float, "a number")
    if isinstance(value, float) and not math.isfinite(value):
        # A job's output read with json.loads may hold NaN or Infinity.
        raise Fail(f"cannot round {value!r}: not a finite number")
    if digits is None:
        return _checked(round(value))
    if not _is_int(digits) or abs(digits) > 30:
        raise Fail("needs a number of digits between -30 and 30")
    return _checked(round(value, digits))


def _convert(kind: type, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        pattern = (
            r"[+-]?[0-9]{1,19}"
            if kind is int
            else r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?"
        )
        if len(text) > 400 or not re.fullmatch(pattern, text):
            what = "an integer" if kind is int else "a number"
            raise Fail(f"cannot turn string {_clip(repr(value), 40)} into {what}")
        value = text
    elif not isinstance(value, int | float):
        raise Fail(f"needs a number, boolean or string, got {_type_name(value)}")
    try:
        return _checked(kind(value))
    except OverflowError:
        raise Fail("number is out of range") from None
    except ValueError:  # int(nan)
        raise Fail(f"cannot turn {value!r} into an integer: not a finite number") from None


def _reject(name: str) -> Any:
    raise Fail(f"invalid JSON: {name} is not a JSON number")


def _from_json(text: Any) -> Any:
    try:
        value = json.loads(
            _need(text, str, "a string"),
            parse_constant=_reject,
            parse_float=lambda t: _checked(float(t)),
        )
    except json.JSONDecodeError as exc:
        raise Fail(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # too many digits, too deep
        raise Fail(f"invalid JSON: {_clip(str(exc)) or 'nests too deeply'}") from None
    # The parser's own depth limit differs between Python versions; ours does not.
    if _nesting(value) > MAX_VALUE_DEPTH:
        raise Fail(f"invalid JSON: nests deeper than {MAX_VALUE_DEPTH} levels")
    return value


def _nesting(value: Any) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def _strings(test: Callable[[str, str], bool]) -> Callable[..., bool]:
    return lambda a, b: test(_need(a, str, "two strings"), _need(b, str, "two strings"))


_SIZED = str | list | dict
# name: (fewest arguments, most arguments or None, implementation taking the values)
_FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., Any]]] = {
    "len": (1, 1, lambda v: len(_need(v, _SIZED, "a string, list or object"))),
    "min": (1, None, lambda *args: _extreme(min, list(args))),
    "max": (1, None, lambda *args: _extreme(max, list(args))),
    "sum": (1, 1, _sum),
    "abs": (1, 1, lambda v: _checked(abs(_need(v, int | float, "a number")))),
    "round": (1, 2, _round),
    "int": (1, 1, lambda v: _convert(int, v)),
    "float": (1, 1, lambda v: _convert(float, v)),
    "str": (1, 1, _to_text),
    "bool": (1, 1, bool),
    "lower": (1, 1, lambda v: _need(v, str, "a string").lower()),
    "upper": (1, 1, lambda v: _need(v, str, "a string").upper()),
    "trim": (1, 1, lambda v: _need(v, str, "a string").strip()),
    "startswith": (2, 2, _strings(str.startswith)),
    "endswith": (2, 2, _strings(str.endswith)),
    "contains": (2, 2, _contains),
    "keys": (1, 1, lambda v: list(_need(v, dict, "an object"))),
    "values": (1, 1, lambda v: list(_need(v, dict, "an object").values())),
    "any": (1, 1, lambda v: any(_need(v, list, "a list"))),
    "all": (1, 1, lambda v: all(_need(v, list, "a list"))),
    "json": (1, 1, lambda v: _dumps(v, (",", ":"))),
    "from_json": (1, 1, _from_json),
    "default": (2, 2, lambda value, fallback: fallback if value is None else value),
}
