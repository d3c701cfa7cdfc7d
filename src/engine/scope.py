"""What a run's expressions see, and the per-event context the reducer works in.

:class:`RunScope` resolves names lazily from the store: upstream outputs are
searched nearest ancestor first and only as far as the name is found, so
resolving costs reads in proportion to the distance to the producer, never
to the size of the session. Secret parameters come from the
:class:`~engine.ports.Secrets` port, never from the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import UnknownName
from engine.pipeline import JobBase, Pipeline
from engine.ports import Secrets, Store
from engine.state import JobRun, Session
from engine.templates import value_references


@dataclass
class Context:
    """What one event handling knows: the session as read, the pipeline, the time."""

    session: Session
    pipeline: Pipeline
    now: str
    ready: deque[str] = field(default_factory=deque)
    """Job ids whose parents are all done, to decide (a queue, not recursion)."""
    freed: deque[str | None] = field(default_factory=deque)
    """Scopes of slots given back, each to hand to a queued run (a queue, not recursion:
    a start that fails gives its slot back at once, and a long queue of them would
    otherwise recurse as deep as the queue)."""
    draining: bool = False
    """Whether a handling up the stack is already handing freed slots on."""
    secrets: Secrets | None = None
    _secret_values: Mapping[str, Any] | None = None

    @property
    def secret_names(self) -> set[str]:
        return {p.name for p in self.pipeline.parameters if p.secret}

    def secret(self, name: str) -> Any:
        if self._secret_values is None:
            self._secret_values = self.secrets.get(self.session.id) if self.secrets else {}
        if name not in self._secret_values:
            raise UnknownName(name, f"the value of secret parameter '{name}' is not available")
        return self._secret_values[name]


class MemorySecrets:
    """Secrets kept in memory: for tests, and for a process that never restarts."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, Any]] = {}

    def put(self, session_id: str, values: Mapping[str, Any]) -> None:
        self._values.setdefault(session_id, {}).update(values)

    def get(self, session_id: str) -> Mapping[str, Any]:
        return dict(self._values.get(session_id, {}))


class RunScope:
    """The names one run's expressions read, loaded from the store only when read.

    Upstream outputs are searched nearest ancestor first and only as far as
    the name is found, so resolving costs reads in proportion to the
    distance to the producer, never to the size of the session.
    """

    def __init__(
        self, store: Store, call: Context, job: JobBase, run: JobRun, hide_secrets: bool = False
    ) -> None:
        self.hide_secrets = hide_secrets
        self.store = store
        self.call = call
        self.job = job
        self.run = run
        self._jobs: dict[str, Any] | None = None

    def resolve(self, name: str) -> Any:
        session, graph = self.call.session, self.call.pipeline.graph
        if self.run.index is not None and name in ("item", "item_index"):
            return self.run.item if name == "item" else self.run.index
        if name == "session":
            return {
                "id": session.id,
                "pipeline": session.pipeline,
                "pipeline_version": session.version,
                "started_at": session.created_at,
            }
        if name == "jobs":
            if self._jobs is None:  # several ${jobs...} in one payload read the store once
                self._jobs = {job_id: self._view(job_id) for job_id in self._jobs_read()}
            return self._jobs
        if name in session.parameters:
            if name in self.call.secret_names:
                if self.hide_secrets:
                    raise UnknownName(name)
                return self.call.secret(name)
            return session.parameters[name]
        searched = []
        for ancestor in graph.iter_ancestors(self.job.id):
            searched.append(ancestor)
            found = self.store.get_run(session.id, ancestor)
            if found is not None and isinstance(found.output, dict) and name in found.output:
                return found.output[name]
        where = ", ".join(searched[:20]) + (" ..." if len(searched) > 20 else "")
        raise UnknownName(
            name,
            f"name '{name}' is not a parameter and was not found in the "
            f"outputs of the upstream jobs ({where or 'none'})",
        )

    def _jobs_read(self) -> list[str]:
        graph = self.call.pipeline.graph
        values: list[Any] = [self.job.parameters.model_dump(mode="json")]
        if isinstance(self.job.condition, str):
            values.append(self.job.condition)
        if self.job.fan_out is not None:
            values.append(self.job.fan_out.model_dump(mode="json"))
        ids = []
        for _, ref in value_references(values):
            if ref.root == "jobs" and ref.path and isinstance(ref.path[0], str):
                target = ref.path[0]
                if target not in ids and graph.is_ancestor(target, of=self.job.id):
                    ids.append(target)
        return ids

    def _view(self, job_id: str) -> dict[str, Any]:
        found = self.store.get_run(self.call.session.id, job_id)
        status = found.status.value if found else "not_started"
        view: dict[str, Any] = {"status": status, "output": found.output if found else None}
        if self.call.pipeline.job(job_id).fan_out is not None:
            items = self.store.runs(self.call.session.id, job_id=job_id)
            view["outputs"] = [
                i.output
                for i in sorted(
                    (i for i in items if i.index is not None), key=lambda i: i.index or 0
                )
            ]
        return view
