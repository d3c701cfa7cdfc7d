"""The pipeline loader fuzzed with YAML that is nearly right, and every refusal read closely.

tests/unit/test_loader_properties.py feeds the loader arbitrary text and data
and checks the error type. Here the documents are the YAML a person (or an
attacker) writes: a valid pipeline, dumped, then edited line by line with
what YAML offers beyond JSON (tags, anchors, aliases, merge keys, keys that
are not strings, duplicate keys, special scalars, directives, more documents,
odd line breaks and indentation). Whatever comes in, the answer is a pipeline
or a PipelineInvalid whose every problem is one printable line, located inside
the document, that names no Python internals; and no tag ever makes the loader
build a Python object or run anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from engine.errors import PipelineInvalid
from engine.loader import load_pipeline
from tests.security.fuzzing import assert_problems_clear, fuzz
from tests.unit.test_loader_properties import base_pipeline

SENTINEL = "bunsui-fuzz-sentinel"
TAGS = [
    "!!str",
    "!!int",
    "!!float",
    "!!bool",
    "!!null",
    "!!binary",
    "!!timestamp",
    "!!set",
    "!!omap",
    "!!pairs",
    "!!map",
    "!!seq",
    "!local",
    "!<tag:yaml.org,2002:str>",
    "!<tag:example.com,2000:app>",
    "!!python/object/apply:os.system",
    "!!python/object/new:os.system",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/tuple",
]
SCALARS = [
    "~",
    "null",
    "Null",
    "true",
    "yes",
    "on",
    "No",
    ".inf",
    "-.Inf",
    ".nan",
    "0x1F",
    "0o17",
    "017",
    "1_000",
    "0b101",
    "1e400",
    "-1e-400",
    "12:30:45",
    "2024-01-01",
    "2001-12-14t21:59:43.10-05:00",
    "9" * 40,
    "'single ''quoted'''",
    '"double \\x00 \\u2028 \\N \\_ \\e \\L \\P"',
    '"\\ud800"',
    "|\n  literal\n  block",
    ">-\n  folded\n  block",
    "|+\n\n",
    "[a, [b, {c: d}]]",
    "{a: 1, a: 2}",
    "{? complex: key}",
    "*undefined",
    "&anchor",
    "!",
    "''",
    '""',
    "-",
    "- - -",
    "? ",
    "${__import__('os')}",
    f"!!python/object/apply:os.system ['touch {SENTINEL}']",
]
KEYS = ["1", "null", "~", "true", ".inf", "? [a, b]\n", "? {k: v}\n", "[x]", "'': ", "<<", "*a"]
JSON_PIECES = [
    '{"version": "1.1"',
    '"name": "p"',
    '"jobs": [',
    '{"id": "a", "type": "custom", "parameters": {"command": "true"}}',
    "]",
    "}",
    ",",
    ":",
    "NaN",
    "1e999",
    "-Infinity",
    '"\\ud800"',
    '"a": 1, "a": 2',
]
LINE_BREAKS = ["\r\n", "\r", "\u2028", "\u0085", "\n\n", "\n \n"]


def _value_split(line: str) -> tuple[str, str] | None:
    """``(head, value)`` of a ``key: value`` or ``- value`` line, else None."""
    stripped = line.lstrip(" ")
    if stripped.startswith("- "):
        cut = len(line) - len(stripped) + 2
        return line[:cut], line[cut:]
    if ": " in line:
        head, _, value = line.partition(": ")
        return head + ": ", value
    return None


def _edit(lines: list[str], edit: tuple[str, int, str]) -> list[str]:
    """One YAML-level edit of a dumped document, at line ``at`` (modulo its length)."""
    kind, at, text = edit
    if not lines:
        return [text]
    index = at % len(lines)
    line = lines[index]
    indent = line[: len(line) - len(line.lstrip(" "))]
    split = _value_split(line)
    if kind == "tag" and split:
        lines[index] = f"{split[0]}{text} {split[1]}"
    elif kind == "scalar" and split:
        lines[index] = split[0] + text.replace("\n", "\n" + indent + "  ")
    elif kind == "duplicate":
        lines.insert(index, line)
    elif kind == "key" and ":" in line:
        lines[index] = indent + text + line.lstrip(" ")[line.lstrip(" ").index(":") :]
    elif kind == "anchor" and split:
        lines[index] = f"{split[0]}&a {split[1]}"
        lines.insert(min(index + 1 + at % 7, len(lines)), f"{indent}alias_{at}: *a")
    elif kind == "merge":
        lines.insert(index, f"{indent}<<: {text}")
    elif kind == "indent":
        lines[index] = (" " if at % 2 else "\t") + line if at % 3 else line[1:]
    elif kind == "comment":
        lines[index] = f"{line} #{text}" if at % 2 else f"{line}#{text}"
    elif kind == "break":
        lines[index] = line + text
    return lines


EDITS = st.one_of(
    st.tuples(st.just("tag"), st.integers(0, 10_000), st.sampled_from(TAGS)),
    st.tuples(st.just("scalar"), st.integers(0, 10_000), st.sampled_from(SCALARS)),
    st.tuples(st.just("duplicate"), st.integers(0, 10_000), st.just("")),
    st.tuples(st.just("key"), st.integers(0, 10_000), st.sampled_from(KEYS)),
    st.tuples(st.just("anchor"), st.integers(0, 10_000), st.just("")),
    st.tuples(
        st.just("merge"), st.integers(0, 10_000), st.sampled_from(["*a", "{x: 1}", "[*a]", "7"])
    ),
    st.tuples(st.just("indent"), st.integers(0, 10_000), st.just("")),
    st.tuples(st.just("comment"), st.integers(0, 10_000), st.sampled_from(["", " c", "${x}"])),
    st.tuples(st.just("break"), st.integers(0, 10_000), st.sampled_from(LINE_BREAKS)),
)
WRAPPERS = st.sampled_from(
    [
        ("", ""),
        ("%YAML 1.1\n---\n", ""),
        ("%YAML 1.2\n%TAG ! tag:example.com,2000:\n---\n", ""),
        ("--- !!map\n", "...\n"),
        ("", "---\nname: second\n"),
        ("", "...\n--- {}\n"),
        ("\ufeff", ""),
        ("# only a comment\n", ""),
    ]
)


@st.composite
def nearly_right_documents(draw: st.DrawFn) -> str:
    """A valid pipeline, dumped block or flow style, with one to six YAML-level edits."""
    flow = draw(st.booleans())
    text = yaml.safe_dump(base_pipeline(), sort_keys=False, default_flow_style=flow, width=60)
    lines = text.splitlines()
    for edit in draw(st.lists(EDITS, min_size=1, max_size=6)):
        lines = _edit(lines, edit)
    before, after = draw(WRAPPERS)
    return before + "\n".join(lines) + "\n" + after


def answered(text: str) -> None:
    """The loader's answer to ``text``: a pipeline, or a refusal whose problems are clear."""
    try:
        pipeline = load_pipeline(text, "fuzz.yaml")
    except PipelineInvalid as exc:
        event(f"refused: {exc.problems[0].message[:30]}")
        assert_problems_clear(exc, text)
    else:
        event("loaded")
        assert pipeline.jobs
        assert sorted(j for level in pipeline.graph.levels() for j in level) == sorted(
            job.id for job in pipeline.jobs
        )


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder, where a command some input smuggled in would leave its mark."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@fuzz(300)
@given(nearly_right_documents())
def test_nearly_right_yaml_loads_or_is_refused_clearly(text: str) -> None:
    answered(text)


@fuzz(100)
@given(text=nearly_right_documents())
def test_no_tag_builds_an_object_or_runs_a_command(text: str, in_tmp: Path) -> None:
    answered(text)
    assert not (in_tmp / SENTINEL).exists()


@fuzz(200)
@given(st.text(max_size=400))
def test_arbitrary_text_is_refused_on_clear_lines(text: str) -> None:
    answered(text)


@fuzz(150)
@given(
    st.lists(
        st.sampled_from(JSON_PIECES),
        max_size=20,
    ).map("".join)
)
def test_json_text_is_refused_on_clear_lines(text: str) -> None:
    answered(text)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/object/apply:subprocess.check_output",
        "!!python/object/new:os.system",
        "!!python/name:os.system",
        "!!python/module:os",
        "!!python/object:builtins.object",
    ],
)
def test_python_tags_are_refused_as_tags_and_run_nothing(tag: str, in_tmp: Path) -> None:
    document = base_pipeline()
    document["description"] = "PLACEHOLDER"
    text = yaml.safe_dump(document, sort_keys=False).replace(
        "PLACEHOLDER", f"{tag} [touch {SENTINEL}]"
    )

    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(text, "tagged.yaml")

    assert_problems_clear(caught.value, text)
    (problem,) = caught.value.problems
    assert "tag" in problem.message and problem.line is not None
    assert not (in_tmp / SENTINEL).exists()


def test_an_unacceptable_character_is_one_located_line() -> None:
    # PyYAML's reader refuses control characters with a message of two lines that
    # names its own "<unicode string>" and a character offset instead of a line.
    text = 'version: "1.1"\nname: p\ndescription: "a\x1bb"\n'

    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(text, "control.yaml")

    assert_problems_clear(caught.value, text)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (3, 16)
