"""Reading pipeline documents: YAML into plain values, with a map of where each came from.

The document is built from PyYAML's event stream rather than its composer so
that nesting depth, alias expansion and size are bounded *while* parsing: a
hostile file (alias bomb, deep nesting, huge input) ends in a located error,
never in a RecursionError, a hang or exhausted memory.

Scalars resolve by the YAML 1.2 core schema, which is what users of JSON and
most editors expect: only ``true``/``false`` are booleans (``on``, ``no`` and
``yes`` stay strings), ``~``/``null``/empty are null, and there are no
timestamps (``2024-01-01`` stays a string).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import PipelineInvalid, Problem

MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
"""Largest pipeline file accepted (a 10,000-job pipeline is about 3 MB)."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences accepted."""

MAX_VALUES = 1_000_000
"""Most values a document may hold once its aliases are expanded."""

PathPart = str | int
YamlPath = tuple[PathPart, ...]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NULL = re.compile(r"~|null|Null|NULL|")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_INT_OCT = re.compile(r"0o[0-7]+")
_INT_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_STR_TAGS = {"tag:yaml.org,2002:str", "!"}


@dataclass(frozen=True)
class Location:
    """A 1-based line and column in a document."""

    line: int
    column: int


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a document starts."""

    values: dict[YamlPath, Location] = field(default_factory=dict)
    keys: dict[YamlPath, Location] = field(default_factory=dict)

    def locate(self, path: YamlPath, *, key: bool = False) -> Location | None:
        """The location of ``path``, or of its nearest enclosing value that has one.

        Args:
            path: The value's path.
            key: Prefer the location of the mapping key naming the value (where a
                wrong field name is, for instance).
        """
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while True:
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return None
            probe = probe[:-1]


@dataclass
class Document:
    """A parsed document: plain data, where it came from, and its name."""

    data: Any
    source_map: SourceMap
    name: str


def format_path(path: YamlPath) -> str:
    """Render a path as users write it: ``jobs[3].depends_on[0]``, ``metadata["a b"]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{_quote(part)}]"
    return text


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_document(path: str | Path) -> Document:
    """Read and parse a YAML file.

    Raises:
        PipelineInvalid: the file cannot be read, is too large or is not valid YAML.
    """
    name = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_DOCUMENT_BYTES:
                raise PipelineInvalid([_too_large(size)], name)
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise PipelineInvalid([Problem("", "file not found.", "check the path.")], name) from None
    except IsADirectoryError:
        raise PipelineInvalid(
            [Problem("", "is a directory, not a pipeline file.", "give the path of a .yaml file.")],
            name,
        ) from None
    except OSError as exc:
        raise PipelineInvalid([Problem("", f"cannot be read: {exc.strerror}.")], name) from None
    return parse_document(raw, name)


def parse_document(text: str | bytes, name: str = "<pipeline>") -> Document:
    """Parse one YAML document into plain values and a source map.

    Raises:
        PipelineInvalid: with the location of the first syntax problem, or of
            every duplicate key, unsupported tag and non-string key found.
    """
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_DOCUMENT_BYTES:
        raise PipelineInvalid([_too_large(size)], name)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PipelineInvalid(
                [Problem("", f"is not UTF-8 text (byte {exc.start}).", "save the file as UTF-8.")],
                name,
            ) from None
    builder = _Builder(name)
    try:
        data = builder.build(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = (exc.problem or exc.context or "invalid YAML").strip()
        at_tab = mark is not None and 0 <= mark.index < len(text) and text[mark.index] == "\t"
        problem = Problem(
            "",
            f"YAML syntax error: {message}.",
            _syntax_hint("tab" if at_tab else message),
            mark.line + 1 if mark else None,
            mark.column + 1 if mark else None,
        )
        raise PipelineInvalid([problem], name) from None
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        problem = Problem(
            "",
            f"the file holds a character YAML does not allow: U+{exc.character:04X}.",
            "remove it, or write it as an escape (\\uXXXX) inside a double-quoted string.",
            line,
            column,
        )
        raise PipelineInvalid([problem], name) from None
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise PipelineInvalid([Problem("", f"YAML syntax error: {message}.")], name) from None
    except _Abort as abort:
        raise PipelineInvalid([abort.problem], name) from None
    if builder.problems:
        raise PipelineInvalid(builder.problems, name)
    return Document(data, builder.source_map, name)


def _line_column(text: str, position: int) -> tuple[int, int]:
    """The 1-based line and column of a character offset."""
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _too_large(size: int) -> Problem:
    return Problem(
        "",
        f"the file is {size:,} bytes ({size / 1048576:.1f} MiB); pipeline files are limited "
        f"to {MAX_DOCUMENT_BYTES:,} bytes ({MAX_DOCUMENT_BYTES // 1048576} MiB).",
        "split the pipeline, or pass large data by reference (an S3 path) instead of inline.",
    )


def _syntax_hint(message: str) -> str:
    if "tab" in message:
        return "indent with spaces, not tabs."
    if "mapping values are not allowed" in message:
        return "quote a value that contains ': ', or fix the indentation of this line."
    if "expected <block end>" in message or "did not find expected" in message:
        return "check the indentation and that every '-' item lines up with its siblings."
    if "nesting depth" in message:
        return f"flatten the structure; nesting is limited to {MAX_DEPTH} levels."
    if "found unexpected end of stream" in message or "unexpected end" in message:
        return "close the open quote or bracket."
    return "fix the YAML at this position."


class _Abort(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


@dataclass
class _Open:
    """A mapping or sequence being built."""

    value: dict[str, Any] | list[Any]
    path: YamlPath
    anchor: str | None
    size: int = 1
    pending_key: Any = None
    has_key: bool = False
    key_mark: Any = None
    merges: list[tuple[Any, Any]] = field(default_factory=list)


class _Builder:
    """Builds plain values from YAML events, bounding depth and alias expansion."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source_map = SourceMap()
        self.problems: list[Problem] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.total = 0

    def build(self, events: Any) -> Any:
        stack: list[_Open] = []
        root: Any = None
        documents = 0
        have_root = False
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _Abort(
                        self._problem(
                            (),
                            "the file holds more than one YAML document ('---').",
                            "keep one pipeline per file.",
                            event.start_mark,
                        )
                    )
                continue
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in self.anchors:
                    raise _Abort(
                        self._problem(
                            self._child_path(stack),
                            f"alias '*{event.anchor}' refers to no anchor defined before it.",
                            f"define '&{event.anchor}' earlier in the file.",
                            event.start_mark,
                        )
                    )
                value, size = self.anchors[event.anchor]
                self._count(size, event.start_mark)
                have_root, root = self._place(stack, value, size, event.start_mark, have_root, root)
                continue
            if isinstance(event, yaml.ScalarEvent):
                path = self._child_path(stack)
                value = self._scalar(event, path)
                self._count(1, event.start_mark)
                if event.anchor:
                    self.anchors[event.anchor] = (value, 1)
                have_root, root = self._place(stack, value, 1, event.start_mark, have_root, root)
                continue
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                path = self._child_path(stack)
                if len(stack) >= MAX_DEPTH:
                    raise _Abort(
                        self._problem(
                            path,
                            f"nesting is deeper than {MAX_DEPTH} levels.",
                            "flatten the structure, or pass it by reference (an S3 path).",
                            event.start_mark,
                        )
                    )
                self._check_tag(
                    event, path, "map" if isinstance(event, yaml.MappingStartEvent) else "seq"
                )
                container: dict[str, Any] | list[Any] = (
                    {} if isinstance(event, yaml.MappingStartEvent) else []
                )
                self._record(path, event.start_mark)
                self._count(1, event.start_mark)
                stack.append(_Open(container, path, event.anchor))
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                done = stack.pop()
                if isinstance(done.value, dict):
                    self._apply_merges(done)
                if done.anchor:
                    self.anchors[done.anchor] = (done.value, done.size)
                mark = self.source_map.values.get(done.path)
                have_root, root = self._place(
                    stack, done.value, done.size, None, have_root, root, mark
                )
                continue
        if not have_root or root is None:
            raise _Abort(
                Problem(
                    "", "the file is empty.", 'start with: version: "1.1", name: ..., jobs: [...]'
                )
            )
        return root

    def _count(self, size: int, mark: Any) -> None:
        self.total += size
        if self.total > MAX_VALUES:
            raise _Abort(
                self._problem(
                    (),
                    f"the document expands to more than {MAX_VALUES:,} values "
                    "(an alias expanded many times?).",
                    "use fewer nested aliases ('*name'); a pipeline never needs this many values.",
                    mark,
                )
            )

    def _child_path(self, stack: list[_Open]) -> YamlPath:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        if top.has_key:
            return (*top.path, top.pending_key if isinstance(top.pending_key, (str, int)) else "?")
        return (*top.path, "<key>")

    def _place(
        self,
        stack: list[_Open],
        value: Any,
        size: int,
        mark: Any,
        have_root: bool,
        root: Any,
        location: Location | None = None,
    ) -> tuple[bool, Any]:
        if not stack:
            if mark is not None:
                self._record((), mark)
            return True, value
        top = stack[-1]
        top.size += size
        if isinstance(top.value, list):
            if mark is not None:
                self._record((*top.path, len(top.value)), mark)
            top.value.append(value)
            return have_root, root
        if not top.has_key:
            top.pending_key, top.has_key, top.key_mark = value, True, mark
            return have_root, root
        key, key_mark = top.pending_key, top.key_mark
        top.pending_key, top.has_key = None, False
        if key == "<<":
            top.merges.append((value, key_mark))
            return have_root, root
        if not isinstance(key, str):
            shown = "null" if key is None else key
            self.problems.append(
                self._problem(
                    top.path,
                    f"mapping key {shown!r} is not a string.",
                    f'quote the key: "{shown}".',
                    key_mark,
                )
            )
            return have_root, root
        path = (*top.path, key)
        if key in top.value:
            self.problems.append(
                self._problem(
                    path,
                    f"duplicate key '{key}'; the earlier value would be silently replaced.",
                    "remove one of the two.",
                    key_mark,
                )
            )
            return have_root, root
        if key_mark is not None:
            self.source_map.keys[path] = _location(key_mark)
        if mark is not None:
            self._record(path, mark)
        elif location is not None:
            # A container's own start mark was recorded under its path already.
            pass
        top.value[key] = value
        return have_root, root

    def _apply_merges(self, done: _Open) -> None:
        assert isinstance(done.value, dict)
        for merged, mark in done.merges:
            sources = merged if isinstance(merged, list) else [merged]
            for source in sources:
                if not isinstance(source, dict):
                    self.problems.append(
                        self._problem(
                            done.path,
                            "a merge key ('<<') must be given a mapping or a list of mappings.",
                            "merge an anchored mapping: <<: *defaults",
                            mark,
                        )
                    )
                    continue
                for key, value in source.items():
                    done.value.setdefault(key, value)

    def _scalar(self, event: Any, path: YamlPath) -> Any:
        value: str = event.value
        tag = event.tag
        plain, _ = event.implicit
        if tag in (None, "!") and plain and not event.style:
            try:
                return _resolve_plain(value)
            except ValueError as exc:
                self.problems.append(self._problem(path, f"{exc}.", _NUMBER_HINT, event.start_mark))
                return value
        if tag in (None, *_STR_TAGS):
            return value
        explicit = {
            "tag:yaml.org,2002:int": _as_int,
            "tag:yaml.org,2002:float": _as_float,
            "tag:yaml.org,2002:bool": _as_bool,
            "tag:yaml.org,2002:null": _as_null,
        }.get(tag)
        if explicit is None:
            self._unsupported_tag(path, tag, event.start_mark)
            return value
        try:
            return explicit(value)
        except ValueError as exc:
            self.problems.append(
                self._problem(
                    path,
                    f"{exc}.",
                    "fix the value or remove the tag.",
                    event.start_mark,
                )
            )
            return value

    def _check_tag(self, event: Any, path: YamlPath, kind: str) -> None:
        tag = event.tag
        if tag not in (None, "!", f"tag:yaml.org,2002:{kind}"):
            self._unsupported_tag(path, tag, event.start_mark)

    def _unsupported_tag(self, path: YamlPath, tag: str, mark: Any) -> None:
        self.problems.append(
            self._problem(
                path,
                f"unsupported YAML tag '{tag}'.",
                "remove the tag; pipeline files hold plain strings, numbers, booleans, "
                "lists and mappings.",
                mark,
            )
        )

    def _record(self, path: YamlPath, mark: Any) -> None:
        self.source_map.values.setdefault(path, _location(mark))

    def _problem(self, path: YamlPath, message: str, hint: str, mark: Any) -> Problem:
        location = _location(mark) if mark is not None else None
        return Problem(
            format_path(path),
            message,
            hint,
            location.line if location else None,
            location.column if location else None,
        )


def _location(mark: Any) -> Location:
    return Location(mark.line + 1, mark.column + 1)


_NUMBER_HINT = 'quote it to keep it as text: "...".'
MAX_INTEGER = 2**63 - 1
"""Integers beyond 64 bits cannot travel as JSON numbers to every service."""


def _resolve_plain(text: str) -> Any:
    if _NULL.fullmatch(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.fullmatch(text) or _INT_OCT.fullmatch(text) or _INT_HEX.fullmatch(text):
        return _as_int(text)
    if _FLOAT.fullmatch(text) or _INF.fullmatch(text) or _NAN.fullmatch(text):
        return _as_float(text)
    return text


def _as_int(text: str) -> int:
    cleaned = text.replace("_", "")
    digits = cleaned.lstrip("+-")
    if len(digits) > 40:
        raise ValueError(f"integer '{text[:20]}...' is out of range (at most {MAX_INTEGER})")
    try:
        number = int(cleaned, 0) if digits.startswith(("0o", "0x")) else int(cleaned, 10)
    except ValueError:
        raise ValueError(f"'{text}' is not an integer") from None
    if abs(number) > MAX_INTEGER:
        raise ValueError(f"integer {text} is out of range (at most {MAX_INTEGER})")
    return number


def _as_float(text: str) -> float:
    spelled = text
    if _INF.fullmatch(text) or _NAN.fullmatch(text):
        spelled = text.replace(".", "", 1)  # YAML's .inf / .nan spelling
    try:
        number = float(spelled)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
    if not math.isfinite(number):
        raise ValueError(
            f"'{text}' is not a finite number; infinity and NaN cannot be passed as JSON"
        )
    return number


def _as_null(text: str) -> None:
    if not _NULL.fullmatch(text):
        raise ValueError(f"'{text}' is not null")


def _as_bool(text: str) -> bool:
    if text not in _BOOL:
        raise ValueError(f"'{text}' is not true or false")
    return _BOOL[text]
