"""The armed timers: at most one per (worker pid, scope), ordered by deadline.

Deadlines are ``time.monotonic()`` seconds, so a step of the wall clock never fires or delays one.
The book is a dict for arming and releasing in O(1), and a heap for finding what is due in
O(log n). Released and re-armed timers leave stale heap entries behind (an entry is live only while
the dict still holds that very Timer); the heap is rebuilt when stale entries outnumber live ones.

Memory is what limits how many timers a small sidecar holds, so a timer is one object: a ``float``
(its deadline) with three slots. The heap holds the timers themselves and orders them by comparing
floats in C, with no (deadline, tie-breaker, timer) tuple; the pid is the one int object its
worker's entry holds; the scope is the same string as the dict key. ~110 bytes a timer besides its
scope string (heap slot and dict entry included), where a dataclass in a tuple took ~230.

Three more slots serve the deadline policy (deadlines.py), ~25 bytes a timer more: when the block
was armed (one float shared by every request of a FIFO read), the deadline its client requested
(None unless adaptive lowered it: then it is not the timer's own value) and what its scope had
learned by then (one snapshot per scope, shared until the scope's longest block grows).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

from expiry_sidecar.blocks import Learned


class Timer(float):
    """An armed timer; as a float it is its deadline."""

    __slots__ = ("_lowered_from", "armed_at", "learned", "pid", "scope_id", "signal")
    pid: int
    scope_id: str
    signal: int
    armed_at: float
    """Monotonic seconds the acquire arrived (nan when unknown: a block's duration is then unknown)."""
    learned: Learned | None
    _lowered_from: float | None
    """The requested deadline when the policy lowered it; None (shared) when the timer's own value is."""

    def __new__(
        cls,
        pid: int,
        scope_id: str,
        deadline: float,
        signal: int,
        *,
        armed_at: float = math.nan,
        requested: float | None = None,
        learned: Learned | None = None,
    ) -> Timer:
        timer = super().__new__(cls, deadline)
        timer.pid = pid
        timer.scope_id = scope_id
        timer.signal = signal
        timer.armed_at = armed_at
        timer._lowered_from = None if requested is None or requested == deadline else requested
        timer.learned = learned
        return timer

    @property
    def deadline(self) -> float:
        return float(self)

    @property
    def requested(self) -> float:
        """The deadline the client asked for; the timer's own value (its deadline) is at most this."""
        return float(self) if self._lowered_from is None else self._lowered_from

    def __repr__(self) -> str:
        return (
            f"Timer(pid={self.pid}, scope_id={self.scope_id!r}, deadline={self.deadline},"
            f" signal={self.signal})"
        )


class _Scopes(dict[str, Timer]):
    """One worker's timers by scope, and the worker's pid as the one int object its timers share."""

    __slots__ = ("pid",)

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid


class TimerBook:
    def __init__(self) -> None:
        self._by_pid: dict[int, _Scopes] = {}
        self._heap: list[Timer] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def arm(
        self,
        pid: int,
        scope_id: str,
        deadline: float,
        signal: int,
        *,
        armed_at: float = math.nan,
        requested: float | None = None,
        learned: Learned | None = None,
    ) -> Timer:
        """Arm the timer, replacing one already armed for the same pid and scope."""
        scopes = self._by_pid.get(pid)
        if scopes is None:
            scopes = self._by_pid[pid] = _Scopes(pid)
        timer = Timer(
            scopes.pid, scope_id, deadline, signal, armed_at=armed_at, requested=requested, learned=learned
        )
        if scopes.get(scope_id) is None:
            self._live += 1
        scopes[scope_id] = timer
        heapq.heappush(self._heap, timer)
        if len(self._heap) > 2 * self._live + 1024:
            self._compact()
        return timer

    def release(self, pid: int, scope_id: str) -> Timer | None:
        """Disarm, returning the timer; None if no such timer was armed."""
        scopes = self._by_pid.get(pid)
        timer = scopes.pop(scope_id, None) if scopes is not None else None
        if timer is not None:
            self._live -= 1  # an emptied worker entry stays until forget(): its next acquire reuses it
        return timer

    def forget(self, pid: int) -> list[Timer]:
        """Disarm every timer of ``pid``, returning them."""
        scopes = self._by_pid.pop(pid, None)
        timers = list(scopes.values()) if scopes is not None else []
        self._live -= len(timers)
        return timers

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0].deadline if heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Disarm and return every timer whose deadline is at or before ``now``, earliest first."""
        due = []
        heap = self._heap
        while heap and heap[0] <= now:
            timer = heapq.heappop(heap)
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
        self._heap = [timer for timer in self._heap if self._is_live(timer)]
        heapq.heapify(self._heap)
