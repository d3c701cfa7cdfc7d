"""moto keeps every object it makes, for ever: the harness stops that for the per-request ones.

moto appends each instance of its model classes to a class list
(``instances_tracked``) for its dashboard, and only a reset empties them. A
DynamoDB write makes new ``Item`` objects (the item, the stream's copies of
its old and new images) and a ``StreamRecord``; an SQS message is a
``Message``. A 10,000-item fan-out rewrites its fan-out's run item 10,000
times while the item grows to ~150 KB, and the kept copies filled the
machine's 23 GB before the session ended. The harness keeps none of those
(the dashboard is not used); the state moto serves is unchanged.
"""

from __future__ import annotations

from typing import Any

from moto.dynamodb.models.dynamo_type import Item
from moto.dynamodb.models.table import StreamRecord
from moto.sqs.models import Message


class _Untracked(list):  # type: ignore[type-arg]
    """An ``instances_tracked`` that keeps nothing."""

    def append(self, item: Any) -> None:
        return None


def untrack() -> None:
    """Keep no Item, StreamRecord or Message instances (call again after each moto reset,
    which gives every class a new list)."""
    for model in (Item, StreamRecord, Message):
        model.instances_tracked = _Untracked()  # type: ignore[attr-defined]
