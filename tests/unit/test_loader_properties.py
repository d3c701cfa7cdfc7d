"""Properties of the loader: whatever comes in, the only failure is a PipelineInvalid.

And no input runs code: strings that would run a shell command if anything
evaluated them are fed in, and a sentinel file they would create must never
appear. Generated DAGs always load, with every parent on a lower level than
its child, and one edge back always makes a "dependency cycle".
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.errors import BunsuiError, PipelineInvalid
from engine.loader import load_pipeline, validate_pipeline

MODEST = settings(max_examples=100, deadline=None)
FEW = settings(max_examples=60, deadline=None)

# ------------------------------------------------------------------ (a) text and bytes

YAML_ALPHABET = st.sampled_from(
    [*"abcxyz019 \n\t-:,[]{}#&*!|>'\"%@`?~.$<=", "${", "}", "---", "<<", "0x", "1e9", "\ufeff"]
)
YAML_ISH = st.lists(YAML_ALPHABET, max_size=60).map("".join)


def loads_or_rejects(text: str | bytes) -> None:
    with contextlib.suppress(BunsuiError):
        load_pipeline(text)


@MODEST
@given(st.text())
def test_arbitrary_text_raises_only_bunsui_errors(text):
    loads_or_rejects(text)


@MODEST
@given(YAML_ISH)
def test_yaml_looking_text_raises_only_bunsui_errors(text):
    loads_or_rejects(text)


@MODEST
@given(st.binary())
def test_arbitrary_bytes_raise_only_bunsui_errors(data):
    loads_or_rejects(data)


@MODEST
@given(st.text(), st.sampled_from(["", 'version: "1.1"\nname: p\n', "jobs:\n  - ", "a: &x "]))
def test_text_after_a_valid_start_raises_only_bunsui_errors(text, prefix):
    loads_or_rejects(prefix + text)


# ------------------------------------------------------------------ (b) JSON-like data

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["lambda", "ecs", "custom", "a", "${a}", "${jobs.a.output}", "1.1", "2h"])
)
FIELDS = st.sampled_from(
    [
        "version",
        "name",
        "jobs",
        "parameters",
        "id",
        "type",
        "depends_on",
        "condition",
        "function_name",
        "payload",
        "command",
        "for_each",
        "items",
        "matrix",
        "outputs",
        "validation",
        "pattern",
        "min",
        "max",
        "enum",
        "default",
        "timeout",
        "retries",
    ]
) | st.text(max_size=8)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(FIELDS, children, max_size=6),
    max_leaves=40,
)


def validates_or_rejects(data: Any) -> None:
    try:
        validate_pipeline(data)
    except PipelineInvalid as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.message
            assert problem.line is None  # no source map, no lines


@MODEST
@given(JSON_LIKE)
def test_arbitrary_data_raises_only_pipeline_invalid(data):
    validates_or_rejects(data)


@MODEST
@given(
    st.fixed_dictionaries(
        {"version": st.sampled_from(["1.1", "1.0", 1.0, 2]), "name": st.text(max_size=10)},
        optional={
            "jobs": st.lists(st.dictionaries(FIELDS, JSON_LIKE, max_size=6), max_size=4),
            "parameters": st.lists(st.dictionaries(FIELDS, JSON_LIKE, max_size=6), max_size=3),
        },
    )
)
def test_pipeline_shaped_data_raises_only_pipeline_invalid(data):
    validates_or_rejects(data)


# ------------------------------------------------------------------ (c) mutations

SENTINEL = "SENTINEL"


def base_pipeline() -> dict[str, Any]:
    return {
        "version": "1.1",
        "name": "Mutated",
        "parameters": [
            {
                "name": "model_name",
                "type": "string",
                "required": True,
                "validation": {"pattern": "[a-z]+"},
            },
            {
                "name": "threshold",
                "type": "float",
                "default": 0.8,
                "validation": {"min": 0.0, "max": 1.0},
            },
            {"name": "shards", "type": "array", "default": [1, 2]},
        ],
        "jobs": [
            {
                "id": "prepare",
                "type": "lambda",
                "parameters": {
                    "function_name": "prep",
                    "payload": {"model": "${model_name}", "n": "${len(shards)}"},
                },
                "outputs": ["path"],
            },
            {
                "id": "train",
                "type": "ecs",
                "depends_on": ["prepare"],
                "parameters": {
                    "task_definition": "train",
                    "environment": {"DATA": "${jobs.prepare.output.path}"},
                },
                "condition": "${threshold > 0.5}",
                "retries": 2,
                "timeout": "2h",
            },
            {
                "id": "shard",
                "type": "custom",
                "depends_on": ["prepare"],
                "for_each": "${shards}",
                "parameters": {"command": ["run", "${item}"]},
            },
            {
                "id": "report",
                "type": "glue",
                "depends_on": ["train", "shard"],
                "trigger_rule": "all_done",
                "parameters": {
                    "job_name": "report",
                    "arguments": {"--results": "${jobs.shard.outputs}"},
                },
            },
        ],
    }


def test_the_base_of_the_mutations_is_valid():
    assert [job.id for job in validate_pipeline(base_pipeline()).jobs] == [
        "prepare",
        "train",
        "shard",
        "report",
    ]


def nodes(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from nodes(item, (*path, index))


PATHS = [path for path, _ in nodes(base_pipeline())]
DICT_PATHS = [path for path, value in nodes(base_pipeline()) if isinstance(value, dict)]


def at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def hostile_strings(sentinel: Path) -> st.SearchStrategy[str]:
    commands = [f"touch {SENTINEL}", f"touch {sentinel}"]
    known = []
    for command in commands:
        known += [
            f"${{__import__('os').system('{command}')}}",
            "${().__class__.__base__.__subclasses__()}",
            f"${{eval(\"__import__('os').system('{command}')\")}}",
            f"${{exec('import os; os.system(\"{command}\")')}}",
            f"${{open('{sentinel}', 'w')}}",
            f"{{{{ __import__('os').system('{command}') }}}}",
            f"$(touch {sentinel})",
            f"`{command}`",
            "${jobs.__class__}",
            "${session.__init__.__globals__}",
            "${from_json('{\"a\": 1}').__class__}",
        ]
    return (
        st.sampled_from(known)
        | st.text(max_size=30)
        | st.text(max_size=30).map(lambda text: "${" + text + "}")
    )


def mutations(sentinel: Path) -> st.SearchStrategy[tuple[str, Any]]:
    anything = JSON_LIKE | hostile_strings(sentinel)
    return st.one_of(
        st.tuples(st.just("drop"), st.sampled_from([p for p in PATHS if p])),
        st.tuples(st.just("replace"), st.tuples(st.sampled_from(PATHS), anything)),
        st.tuples(st.just("add"), st.tuples(st.sampled_from(DICT_PATHS), FIELDS, anything)),
        st.tuples(
            st.just("inject"),
            st.tuples(
                st.integers(0, 3),
                st.sampled_from(["payload", "condition", "command"]),
                hostile_strings(sentinel),
            ),
        ),
    )


def mutate(data: dict[str, Any], mutation: tuple[str, Any]) -> dict[str, Any] | Any:
    kind, detail = mutation
    if kind == "drop":
        *parent, last = detail
        del at(data, tuple(parent))[last]
    elif kind == "replace":
        path, value = detail
        if not path:
            return value
        *parent, last = path
        at(data, tuple(parent))[last] = value
    elif kind == "add":
        path, key, value = detail
        at(data, path)[key] = value
    else:
        index, place, text = detail
        job = data["jobs"][index]
        if place == "condition":
            job["condition"] = text
        elif place == "payload":
            job["parameters"]["payload"] = {"injected": text, "list": [1, text]}
        else:
            job["parameters"]["command"] = text
    return data


def as_yaml(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@pytest.fixture
def sentinel_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / SENTINEL).exists()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_pipelines_load_or_raise_pipeline_invalid_and_run_nothing(data, sentinel_dir):
    sentinel = sentinel_dir / "touched"
    steps = data.draw(st.lists(mutations(sentinel), min_size=1, max_size=3))
    document = base_pipeline()
    for step in steps:
        try:
            document = mutate(document, step)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier step removed or replaced what this one edits

    for attempt in (
        lambda: validate_pipeline(copy.deepcopy(document)),
        lambda: load_pipeline(as_yaml(document)),
    ):
        try:
            attempt()
        except PipelineInvalid as exc:
            assert exc.problems

    assert not sentinel.exists()
    assert not (sentinel_dir / SENTINEL).exists()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_hostile_yaml_snippets_spliced_into_a_valid_file(data, sentinel_dir):
    sentinel = sentinel_dir / "touched"
    snippets = [
        f"!!python/object/apply:os.system ['touch {sentinel}']",
        f"!!python/object/new:os.system ['touch {sentinel}']",
        "!!python/name:os.system ''",
        f"!!python/object/apply:subprocess.check_output [['touch', '{sentinel}']]",
        "&a [*a]",
        "*undefined",
        "{<<: [1, 2]}",
    ]
    snippet = data.draw(st.sampled_from(snippets) | hostile_strings(sentinel).map(json.dumps))
    lines = as_yaml(base_pipeline()).splitlines()
    # Lines that hold a `key: value` pair; the value is replaced by the snippet.
    candidates = [i for i, line in enumerate(lines) if ": " in line]
    index = data.draw(st.sampled_from(candidates))
    key = lines[index].split(": ", 1)[0]
    lines[index] = f"{key}: {snippet}"

    try:
        load_pipeline("\n".join(lines) + "\n")
    except PipelineInvalid as exc:
        assert exc.problems

    assert not sentinel.exists()
    assert not (sentinel_dir / SENTINEL).exists()


# ------------------------------------------------------------------ (d) random DAGs


@st.composite
def dags(draw) -> tuple[int, dict[int, list[int]]]:
    """n jobs and, for each, the lower-indexed jobs it depends on."""
    n = draw(st.integers(1, 25))
    parents = {
        child: sorted(draw(st.sets(st.integers(0, child - 1), max_size=4)) if child else [])
        for child in range(n)
    }
    return n, parents


def dag_pipeline(n: int, parents: dict[int, list[int]], order: list[int]) -> dict[str, Any]:
    return {
        "version": "1.1",
        "name": "dag",
        "jobs": [
            {
                "id": f"j{i}",
                "type": "custom",
                "parameters": {"command": f"echo {i}"},
                **({"depends_on": [f"j{p}" for p in parents[i]]} if parents[i] else {}),
            }
            for i in order
        ],
    }


@MODEST
@given(dags(), st.randoms(use_true_random=False))
def test_generated_dags_load_and_levels_put_parents_first(dag, rng):
    n, parents = dag
    order = list(range(n))
    rng.shuffle(order)  # declaration order must not matter

    pipeline = load_pipeline(as_yaml(dag_pipeline(n, parents, order)))

    graph = pipeline.graph
    level_of = {job: depth for depth, jobs in enumerate(graph.levels()) for job in jobs}
    assert sorted(level_of) == sorted(f"j{i}" for i in range(n))
    for child, deps in parents.items():
        for parent in deps:
            assert level_of[f"j{parent}"] < level_of[f"j{child}"]
            assert graph.is_ancestor(f"j{parent}", of=f"j{child}")
        # A job sits on the level right after its deepest parent.
        expected = max((level_of[f"j{p}"] + 1 for p in deps), default=0)
        assert level_of[f"j{child}"] == expected


def descendants(parents: dict[int, list[int]], start: int) -> set[int]:
    children: dict[int, list[int]] = {i: [] for i in parents}
    for child, deps in parents.items():
        for parent in deps:
            children[parent].append(child)
    found, stack = set(), [start]
    while stack:
        for child in children[stack.pop()]:
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


@MODEST
@given(dags(), st.data())
def test_one_back_edge_always_makes_a_dependency_cycle(dag, data):
    n, parents = dag
    pairs = [(low, high) for low in range(n) for high in sorted(descendants(parents, low))]
    assume(pairs)
    low, high = data.draw(st.sampled_from(pairs))
    document = dag_pipeline(n, parents, list(range(n)))
    document["jobs"][low].setdefault("depends_on", []).append(f"j{high}")

    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(as_yaml(document))

    cycles = [p for p in caught.value.problems if p.message.startswith("dependency cycle: ")]
    assert len(cycles) == 1
    assert [p.message for p in caught.value.problems] == [cycles[0].message]
    # The printed path is closed and follows real edges in run order.
    walk = cycles[0].message.removeprefix("dependency cycle: ").removesuffix(".").split(" -> ")
    assert walk[0] == walk[-1]
    assert len(walk) == len(set(walk)) + 1 >= 3
    edges = {(f"j{p}", f"j{c}") for c, deps in parents.items() for p in deps}
    edges.add((f"j{high}", f"j{low}"))
    assert all(pair in edges for pair in itertools.pairwise(walk))
    assert cycles[0].path.startswith("jobs[") and ".depends_on[" in cycles[0].path
    assert cycles[0].line is not None


@FEW
@given(dags())
def test_self_dependency_is_not_reported_as_a_cycle(dag):
    n, parents = dag
    document = dag_pipeline(n, parents, list(range(n)))
    document["jobs"][-1].setdefault("depends_on", []).append(f"j{n - 1}")

    with pytest.raises(PipelineInvalid) as caught:
        load_pipeline(as_yaml(document))

    assert [p.message for p in caught.value.problems] == [f"job 'j{n - 1}' depends on itself."]
