"""The armed timers: at most one per (worker pid, scope), ordered by deadline.

Deadlines are ``time.monotonic()`` seconds, so a step of the wall clock never fires or delays one.
The book is a dict for arming and releasing in O(1), and a heap for finding what is due in
O(log n). Released and re-armed timers leave stale heap entries behind (an entry is live only while
the dict still holds that very Timer); the heap is rebuilt when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Timer:
    pid: int
    scope_id: str
    deadline: float
    signal: int


class TimerBook:
    def __init__(self) -> None:
        self._by_pid: dict[int, dict[str, Timer]] = {}
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def arm(self, pid: int, scope_id: str, deadline: float, signal: int) -> None:
        """Arm the timer, replacing one already armed for the same pid and scope."""
        scopes = self._by_pid.setdefault(pid, {})
        timer = Timer(pid, scope_id, deadline, signal)
        if scopes.get(scope_id) is None:
            self._live += 1
        scopes[scope_id] = timer
        heapq.heappush(self._heap, (deadline, next(self._order), timer))
        if len(self._heap) > 2 * self._live + 1024:
            self._compact()

    def release(self, pid: int, scope_id: str) -> bool:
        """Disarm; False if no such timer was armed."""
        scopes = self._by_pid.get(pid)
        if scopes is None or scopes.pop(scope_id, None) is None:
            return False
        self._live -= 1
        if not scopes:
            del self._by_pid[pid]
        return True

    def forget(self, pid: int) -> list[Timer]:
        """Disarm every timer of ``pid``, returning them."""
        timers = list(self._by_pid.pop(pid, {}).values())
        self._live -= len(timers)
        return timers

    def holds(self, pid: int) -> bool:
        return pid in self._by_pid

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not self._is_live(heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Disarm and return every timer whose deadline is at or before ``now``, earliest first."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if self._is_live(timer):
                self.release(timer.pid, timer.scope_id)
                due.append(timer)
        return due

    def flush(self) -> None:
        """Persist the changes since the last call; this book keeps nothing on disk (see state.py)."""

    def __iter__(self) -> Iterator[Timer]:
        for scopes in self._by_pid.values():
            yield from scopes.values()

    def _is_live(self, timer: Timer) -> bool:
        scopes = self._by_pid.get(timer.pid)
        return scopes is not None and scopes.get(timer.scope_id) is timer

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._is_live(entry[2])]
        heapq.heapify(self._heap)
