"""The dependency graph of a pipeline's jobs.

Pure and iterative throughout: a 10,000-job chain neither recurses nor
costs more than linear time for the whole-graph questions (order, levels,
cycles). Ancestor sets are bitsets (Python ints) built once in topological
order, so "is A upstream of B" is one AND.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property


class Graph:
    """A directed graph of job ids; edges run from parent to child.

    Args:
        parents: For every job id, the ids it depends on, in the order given.
            Ids that are not keys are ignored (the validator reports them).
    """

    def __init__(self, parents: Mapping[str, Iterable[str]]) -> None:
        self._order = list(parents)
        self._index = {job: i for i, job in enumerate(self._order)}
        self._parents: dict[str, list[str]] = {}
        self._children: dict[str, list[str]] = {job: [] for job in self._order}
        self._positions: dict[tuple[str, str], int] = {}
        for job, deps in parents.items():
            seen: list[str] = []
            for dep in deps:
                if dep in self._index and (dep, job) not in self._positions:
                    self._positions[(dep, job)] = len(seen)
                    seen.append(dep)
                    self._children[dep].append(job)
            self._parents[job] = seen

    @property
    def jobs(self) -> list[str]:
        """Every job id, in declaration order."""
        return list(self._order)

    def parents(self, job: str) -> list[str]:
        return list(self._parents[job])

    def children(self, job: str) -> list[str]:
        return list(self._children[job])

    def roots(self) -> list[str]:
        """Jobs without parents, in declaration order."""
        return [job for job in self._order if not self._parents[job]]

    def in_degree(self, job: str) -> int:
        return len(self._parents[job])

    def position(self, parent: str, child: str) -> int:
        """Where ``parent`` is among ``child``'s parents (0 for the first given)."""
        return self._positions[(parent, child)]

    def find_cycle(self) -> list[str] | None:
        """One cycle as a closed path (``[a, b, c, a]``), or None when the graph is acyclic."""
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(self._order, white)
        for start in self._order:
            if color[start] != white:
                continue
            # Iterative DFS over parent edges; `path` is the grey stack.
            path = [start]
            iters = [iter(self._parents[start])]
            color[start] = grey
            while iters:
                nxt = next(iters[-1], None)
                if nxt is None:
                    color[path.pop()] = black
                    iters.pop()
                    continue
                if color[nxt] == grey:
                    cycle = [*path[path.index(nxt) :], nxt]
                    # Parent edges walk the cycle backwards; show it in run order.
                    return list(reversed(cycle))
                if color[nxt] == white:
                    color[nxt] = grey
                    path.append(nxt)
                    iters.append(iter(self._parents[nxt]))
        return None

    @cached_property
    def topological_order(self) -> list[str]:
        """Jobs with every parent before its children; declaration order breaks ties.

        Raises:
            ValueError: the graph has a cycle.
        """
        remaining = {job: len(self._parents[job]) for job in self._order}
        ready = deque(job for job in self._order if remaining[job] == 0)
        order: list[str] = []
        while ready:
            job = ready.popleft()
            order.append(job)
            for child in self._children[job]:
                remaining[child] -= 1
                if remaining[child] == 0:
                    ready.append(child)
        if len(order) != len(self._order):
            raise ValueError("the graph has a cycle")
        return order

    def levels(self) -> list[list[str]]:
        """Jobs grouped by the longest path from a root: each level can run in parallel."""
        depth: dict[str, int] = {}
        for job in self.topological_order:
            depth[job] = max((depth[p] + 1 for p in self._parents[job]), default=0)
        levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for job in self._order:
            levels[depth[job]].append(job)
        return levels

    @cached_property
    def _ancestor_bits(self) -> dict[str, int]:
        bits: dict[str, int] = {}
        for job in self.topological_order:
            mask = 0
            for parent in self._parents[job]:
                mask |= bits[parent] | (1 << self._index[parent])
            bits[job] = mask
        return bits

    def is_ancestor(self, candidate: str, of: str) -> bool:
        """Whether ``candidate`` is upstream of ``of`` (a parent, grandparent, ...)."""
        if candidate not in self._index:
            return False
        try:
            return bool(self._ancestor_bits[of] >> self._index[candidate] & 1)
        except ValueError:
            return candidate in set(self.iter_ancestors(of))

    def ancestors(self, job: str) -> list[str]:
        """Every upstream job, nearest first (breadth-first over ``depends_on`` order).

        This is the order in which names used by a job are looked up in
        upstream outputs: the closest producer of a name wins.
        """
        return list(self.iter_ancestors(job))

    def iter_ancestors(self, job: str) -> Iterator[str]:
        """:meth:`ancestors`, lazily: a lookup that stops early walks only what it needs."""
        return self._walk(job, self._parents)

    def descendants(self, job: str) -> list[str]:
        """Every downstream job, nearest first."""
        return list(self._walk(job, self._children))

    @staticmethod
    def _walk(job: str, edges: Mapping[str, list[str]]) -> Iterator[str]:
        seen = {job}
        queue = deque([job])
        while queue:
            for node in edges[queue.popleft()]:
                if node not in seen:
                    seen.add(node)
                    queue.append(node)
                    yield node
