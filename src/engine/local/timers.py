"""Timers for the local backend: events put back on a queue when they are due."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from engine.events import Event


def now_iso() -> str:
    """The wall-clock time, ISO-8601 UTC: the local backend's clock."""
    return datetime.now(UTC).isoformat()


class LocalTimers:
    """Implements the Timers port with one thread and a heap of due times.

    Args:
        deliver: Called with each event when it is due (from the timer thread).
    """

    def __init__(self, deliver: Callable[[Event], None]) -> None:
        self._deliver = deliver
        self._heap: list[tuple[float, int, Event]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bunsui-timers", daemon=True)
        self._thread.start()

    def schedule(self, event: Event, at: str) -> None:
        due = datetime.fromisoformat(at).timestamp()
        with self._wake:
            heapq.heappush(self._heap, (due, next(self._order), event))
            self._wake.notify()

    def pending(self) -> int:
        with self._wake:
            return len(self._heap)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed:
                    if self._heap:
                        wait = self._heap[0][0] - datetime.now(UTC).timestamp()
                        if wait <= 0:
                            break
                        self._wake.wait(timeout=wait)
                    else:
                        self._wake.wait()
                if self._closed:
                    return
                _, _, event = heapq.heappop(self._heap)
            self._deliver(event)
