from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.graph import Graph


def diamond() -> Graph:
    return Graph({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"]})


def test_levels_group_jobs_that_can_run_together():
    assert diamond().levels() == [["a"], ["b", "c"], ["d"], ["e"]]


def test_level_is_the_longest_path_not_the_shortest():
    graph = Graph({"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"]})
    assert graph.levels() == [["a"], ["b"], ["c"], ["d"]]


def test_ancestors_are_nearest_first():
    assert diamond().ancestors("e") == ["d", "b", "c", "a"]
    assert diamond().ancestors("a") == []


def test_descendants_and_children():
    graph = diamond()
    assert graph.children("a") == ["b", "c"]
    assert graph.descendants("b") == ["d", "e"]


def test_is_ancestor():
    graph = diamond()
    assert graph.is_ancestor("a", of="e")
    assert graph.is_ancestor("c", of="d")
    assert not graph.is_ancestor("b", of="c")
    assert not graph.is_ancestor("e", of="a")
    assert not graph.is_ancestor("e", of="e")
    assert not graph.is_ancestor("zzz", of="e")


def test_find_cycle_returns_the_cycle_in_run_order():
    graph = Graph({"a": ["c"], "b": ["a"], "c": ["b"], "d": []})
    cycle = graph.find_cycle()
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert len(cycle) == 4
    # Each step of the printed path is a real edge parent -> child.
    for parent, child in itertools.pairwise(cycle):
        assert parent in graph.parents(child)


def test_acyclic_graph_has_no_cycle_and_a_topological_order():
    graph = diamond()
    assert graph.find_cycle() is None
    order = graph.topological_order
    for job in graph.jobs:
        for parent in graph.parents(job):
            assert order.index(parent) < order.index(job)


def test_unknown_and_repeated_parents_are_ignored():
    graph = Graph({"a": ["nope"], "b": ["a", "a"]})
    assert graph.parents("a") == []
    assert graph.parents("b") == ["a"]
    assert graph.in_degree("b") == 1


def test_a_10000_job_chain_needs_no_recursion():
    n = 10_000
    graph = Graph({f"j{i}": [f"j{i - 1}"] if i else [] for i in range(n)})
    assert graph.find_cycle() is None
    assert len(graph.levels()) == n
    assert graph.is_ancestor("j0", of=f"j{n - 1}")


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=30))
    parents = {}
    for i in range(n):
        chosen = draw(st.sets(st.integers(min_value=0, max_value=max(i - 1, 0)), max_size=4))
        parents[f"j{i}"] = [f"j{p}" for p in sorted(chosen) if p < i]
    return parents


@settings(max_examples=200, deadline=None)
@given(dags())
def test_generated_dags_levels_respect_every_edge(parents):
    graph = Graph(parents)
    assert graph.find_cycle() is None
    level_of = {job: depth for depth, jobs in enumerate(graph.levels()) for job in jobs}
    assert set(level_of) == set(parents)
    for job, deps in parents.items():
        for dep in deps:
            assert level_of[dep] < level_of[job]
            assert graph.is_ancestor(dep, of=job)
            assert job in graph.descendants(dep)


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_a_back_edge_always_makes_a_cycle(parents, data):
    edges = [(dep, job) for job, deps in parents.items() for dep in deps]
    if not edges:
        return
    parent, child = data.draw(st.sampled_from(edges))
    parents = {job: list(deps) for job, deps in parents.items()}
    parents[parent].append(child)
    cycle = Graph(parents).find_cycle()
    assert cycle is not None and cycle[0] == cycle[-1]


def test_a_parents_position_is_its_place_in_the_order_given_repeats_dropped():
    graph = Graph({"a": [], "b": [], "c": ["b", "a", "b"], "d": ["c"]})
    assert [graph.position(p, "c") for p in graph.parents("c")] == [0, 1]
    assert graph.parents("c") == ["b", "a"]
    assert graph.position("c", "d") == 0
