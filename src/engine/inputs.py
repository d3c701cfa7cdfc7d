"""What a job receives: its parameters with every ``${...}`` resolved.

:class:`JobScope` answers the names a job's expressions read, in this order:
the fan-out's ``item``/``item_index``, ``session``, ``jobs``, the pipeline's
parameters, then the top-level keys of upstream outputs, nearest upstream
job first. Parameters win over outputs of the same name.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ExpressionError, UnknownName
from engine.pipeline import ForEach, JobBase
from engine.templates import render_value
from engine.validation import kind_of

_UNSET: Any = object()


@dataclass(frozen=True)
class Upstream:
    """A finished upstream job as expressions see it."""

    job_id: str
    status: str
    output: Any = None
    outputs: list[Any] | None = None


@dataclass
class JobScope:
    """The names visible to one job run.

    Args:
        parameters: The session's parameter values.
        upstream: Finished ancestors, nearest first (``Graph.ancestors`` order).
        session: ``${session.*}`` fields, when known.
        item: The fan-out item of this run, when the job has ``for_each``.
        item_index: Its position in the fan-out.
    """

    parameters: Mapping[str, Any]
    upstream: Sequence[Upstream] = ()
    session: Mapping[str, Any] | None = None
    item: Any = _UNSET
    item_index: int | None = None
    _jobs: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._jobs = {
            up.job_id: {"status": up.status, "output": up.output, "outputs": up.outputs}
            if up.outputs is not None
            else {"status": up.status, "output": up.output}
            for up in self.upstream
        }

    def resolve(self, name: str) -> Any:
        """The value of ``name``; raises :class:`UnknownName` naming where it looked."""
        if name == "item" and self.item is not _UNSET:
            return self.item
        if name == "item_index" and self.item_index is not None:
            return self.item_index
        if name == "session" and self.session is not None:
            return dict(self.session)
        if name == "jobs" and self.upstream:
            return self._jobs
        if name in self.parameters:
            return self.parameters[name]
        for up in self.upstream:
            if isinstance(up.output, dict) and name in up.output:
                return up.output[name]
        searched = ", ".join(up.job_id for up in self.upstream)
        where = f"the outputs of upstream jobs ({searched})" if searched else "no upstream outputs"
        raise UnknownName(name, f"name '{name}' is not a parameter and was not found in {where}")


TYPED_FIELDS = frozenset({"payload", "input", "cpu", "memory"})
"""Job parameters whose ``${...}`` keep the value's type; every other field is text."""


def job_inputs(job: JobBase, scope: Any, *, keep_unresolved: bool = False) -> dict[str, Any]:
    """The job's ``parameters`` with templates rendered.

    ``payload`` (lambda) and ``input`` (step_function) are JSON documents: a
    ``${...}`` that is the whole string keeps the value's type there, as do
    ecs ``cpu``/``memory``. Every other field is text for its service
    (function names, commands, arguments, environment variables): a value
    that resolves to anything but a string is written as text there,
    objects and lists as JSON (``{"max_depth": 10}``), numbers as digits.

    Raises:
        ExpressionError: an expression failed (the job fails, the engine does not).
    """
    params = getattr(job, "parameters")  # noqa: B009 - every job type has parameters
    raw = params.model_dump(mode="python", exclude_unset=True)
    rendered: dict[str, Any] = {}
    for key, value in raw.items():
        result = render_value(value, scope, keep_unresolved=keep_unresolved)
        rendered[key] = (
            result if key in TYPED_FIELDS else _as_text({key: value}, {key: result})[key]
        )
    return rendered


def _as_text(written: Any, rendered: Any) -> Any:
    """Where the file wrote a string, the rendered value becomes text."""
    if isinstance(written, str):
        return env_text(rendered)
    if isinstance(written, dict) and isinstance(rendered, dict):
        return {
            # Environment variables are text whatever the file wrote (FLAG: true -> "true").
            key: {k: env_text(v) for k, v in rendered[key].items()}
            if key == "environment" and isinstance(rendered[key], dict)
            else _as_text(written[key], rendered[key])
            for key in written
        }
    if isinstance(written, list) and isinstance(rendered, list):
        return [_as_text(w, r) for w, r in zip(written, rendered, strict=True)]
    return rendered


def env_text(value: Any) -> str:
    """How a value is written where text is expected (an environment variable, an argument)."""
    if isinstance(value, str):
        return str(value)  # a plain str, also for enum members
    return json.dumps(value, ensure_ascii=False)


def fan_out_items(fan: ForEach, scope: Any) -> list[Any]:
    """The items of a fan-out: the list, or every combination of the matrix in key order.

    A matrix ``{a: [1, 2], b: [x, y]}`` gives ``{a: 1, b: x}, {a: 1, b: y},
    {a: 2, b: x}, {a: 2, b: y}`` (the last key varies fastest).

    Raises:
        ExpressionError: a ``${...}`` did not resolve, or did not yield a list.
        UnknownName: it reads an upstream output not yet known (plan time).
    """
    if fan.matrix is not None:
        axes = {
            key: _as_list(render_value(values, scope), f"for_each.matrix.{key}")
            for key, values in fan.matrix.items()
        }
        keys = list(axes)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(axes[k] for k in keys))
        ]
    return _as_list(render_value(fan.items, scope), "for_each")


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ExpressionError(f"{where} must yield a list, got {kind_of(value)}")
    return value
