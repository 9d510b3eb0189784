"""How long each scope's blocks take, learned from acquire/release pairs on the server.

A block is one acquire followed by its release; its duration is the release's arrival minus the
acquire's (both monotonic). A block that expired, was replaced by a new acquire, or whose worker
exited never completed and is not counted: only completed blocks say how long healthy work takes.
Torch's unmodified client counts as much as expiry's, since nothing here needs the client's help.

Statistics are kept per container and scope: two containers of a pod that run the same code (the same
``file#line``) may well take different times. The worker's container comes from its environment
(processes.Worker.container); one string, :func:`key`, names both, so the state file, the profile and
the deadline policy keep using one key per entry.

Memory is bounded twice over. Per scope: a count, the longest and total durations, and a
histogram over fixed log-spaced buckets (``BUCKETS + 1`` counts), fine enough for p50/p99
estimates within one bucket (19 %). Per pod: at most ``MAX_SCOPES`` scopes, in the order they first
complete a block; blocks of any further scope are pooled into one entry (``pooled``), counted there,
and never given a learned deadline of their own.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

SMALLEST = 0.001
"""The first bucket's upper bound, seconds: faster blocks all land in it."""
STEPS_PER_DOUBLING = 4
"""Bucket i's upper bound is SMALLEST * 2 ** (i / 4): each bucket is ~19 % wider than the last."""
BUCKETS = 108
"""Bounded buckets, up to ~1.2 days; longer blocks share one overflow bucket."""
PROMETHEUS_EVERY = 8
"""Every 8th bound (powers of 4 from 1 ms) is a Prometheus ``le`` bound, so both views agree exactly."""
MAX_SCOPES = 200


SEPARATOR = "\x1f"
"""Between a container's name and a scope id in a :func:`key`: a container name (an RFC 1123 label)
never holds it, so the first one in a key is always this one."""


def key(container: str, scope: str) -> str:
    """The key a scope's statistics are kept under: the scope id alone when the container is not known
    (as before containers were told apart), else ``container + SEPARATOR + scope``. A scope id of an
    unknown container that holds the separator gets an empty container in front, so :func:`split`
    never takes part of it for a container."""
    if not container and SEPARATOR not in scope:
        return scope
    return f"{container}{SEPARATOR}{scope}"


def split(learned_key: str) -> tuple[str, str]:
    """``(container, scope)`` of a :func:`key` (container "" when unknown)."""
    container, separator, scope = learned_key.partition(SEPARATOR)
    return (container, scope) if separator else ("", learned_key)


def upper_bound(index: int) -> float:
    """Bucket ``index``'s upper bound in seconds (inf for the overflow bucket)."""
    return SMALLEST * 2 ** (index / STEPS_PER_DOUBLING) if index < BUCKETS else math.inf


_BOUNDS = [upper_bound(i) for i in range(BUCKETS)]


def bucket_of(seconds: float) -> int:
    """The first bucket whose upper bound is at least ``seconds`` (one C call: it runs per release)."""
    return bisect.bisect_left(_BOUNDS, seconds)


PROMETHEUS_INDEXES = tuple(range(0, BUCKETS, PROMETHEUS_EVERY))
PROMETHEUS_BOUNDS = tuple(upper_bound(i) for i in PROMETHEUS_INDEXES)


class Learned(NamedTuple):
    """What a scope had learned when a block was armed: the adaptive rule's inputs, and its result."""

    blocks: int
    longest: float
    limit: float | None = None
    """Seconds the adaptive rule allows a block (deadlines.Policy.limit), None while warming up."""
    held: float = 0.0
    """ScopeStats.killed_after when it is still longer than the longest completed block: the scope
    keeps its requested deadlines (0: not held)."""
    suspended: bool = False
    """The pod spent its false-kill budget (budget.py): every block keeps its requested deadline."""


def _killed_after(more: list[Any]) -> float | None:
    """The optional sixth field of a scope's JSON (None: malformed)."""
    match more:
        case []:
            return 0.0
        case [float() | int() as seconds] if math.isfinite(seconds) and seconds >= 0:
            return float(seconds)
    return None


def _no_blocks() -> list[int]:
    return [0] * (BUCKETS + 1)


@dataclass(slots=True)
class ScopeStats:
    count: int = 0
    longest: float = 0.0
    total: float = 0.0
    requested: float = 0.0
    """The requested deadline (seconds after the acquire) of the scope's last completed block."""
    buckets: list[int] = field(default_factory=_no_blocks)
    """Blocks per bucket: a list, not a sparse dict, since recording runs once per release."""
    killed_after: float = 0.0
    """The longest a block of this scope ran before it was killed at its adaptive deadline (0: never).
    While it is longer than ``longest`` the scope is held at its requested deadlines (deadlines.py);
    both only grow, so merging takes the larger of each, in any order."""
    snapshot: Learned | None = field(default=None, repr=False, compare=False)
    """The deadline policy's cache (deadlines.Deadlines). It depends on the count only until the
    scope has a limit, so it is dropped when the longest block grows or while there is no limit."""

    def record(self, seconds: float, requested: float) -> None:
        self.count += 1
        self.total += seconds
        self.requested = requested
        self.buckets[bisect.bisect_left(_BOUNDS, seconds)] += 1
        if seconds > self.longest:
            self.longest = seconds
            self.snapshot = None
        elif self.snapshot is not None and self.snapshot.limit is None:
            self.snapshot = None

    def quantile(self, q: float) -> float:
        """An upper estimate of the ``q`` quantile: its bucket's bound, never above the longest."""
        rank, seen = q * self.count, 0
        for index, n in enumerate(self.buckets):
            seen += n
            if n and seen >= rank:
                return min(upper_bound(index), self.longest)
        return self.longest

    def cumulative(self) -> list[int]:
        """Blocks at or under each of PROMETHEUS_BOUNDS (bucket bounds, so the counts are exact)."""
        return [sum(self.buckets[: index + 1]) for index in PROMETHEUS_INDEXES]

    def merge(self, other: ScopeStats) -> None:
        self.count += other.count
        self.total += other.total
        self.longest = max(self.longest, other.longest)
        self.killed_after = max(self.killed_after, other.killed_after)
        self.requested = other.requested or self.requested
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.snapshot = None

    def killed(self, ran: float) -> None:
        """A block ran ``ran`` seconds and was killed at its adaptive deadline."""
        if ran > self.killed_after:
            self.killed_after = ran
            self.snapshot = None

    @property
    def held(self) -> float:
        """killed_after while no completed block was as long (the scope is held), else 0."""
        return self.killed_after if self.killed_after > self.longest else 0.0

    def to_json(self) -> list[Any]:
        data: list[Any] = [
            self.count,
            self.longest,
            self.total,
            self.requested,
            {str(i): n for i, n in enumerate(self.buckets) if n},
        ]
        if self.killed_after:  # only then: a file without kills stays readable by older sidecars
            data.append(self.killed_after)
        return data

    @classmethod
    def from_json(cls, data: Any) -> ScopeStats:
        """Raise ValueError unless ``data`` is what :meth:`to_json` wrote."""
        match data:
            case [
                int(count),
                float() | int() as longest,
                float() | int() as total,
                float() | int() as requested,
                dict(raw),
                *more,
            ]:
                killed_after = _killed_after(more)
            case _:
                killed_after = None
        if killed_after is None:
            raise ValueError(f"not a scope's statistics: {str(data)[:80]!r}")
        buckets = _no_blocks()
        for key, n in raw.items():
            index = int(key)
            if not (0 <= index <= BUCKETS and isinstance(n, int) and n > 0):
                raise ValueError(f"bad bucket {key!r}: {n!r}")
            buckets[index] = n
        try:
            times = (float(longest), float(total), float(requested))
        except OverflowError:
            raise ValueError("scope statistics out of range") from None
        if count < 0 or sum(buckets) != count or not all(math.isfinite(x) and x >= 0 for x in times):
            raise ValueError("inconsistent scope statistics")
        return cls(count, times[0], times[1], times[2], buckets, killed_after)


class BlockStats:
    """Completed blocks per scope, bounded as the module says; tracks what changed for the state file."""

    def __init__(self, max_scopes: int = MAX_SCOPES) -> None:
        self.max_scopes = max_scopes
        self.clear()

    def clear(self) -> None:
        """Forget everything learned."""
        self.scopes: dict[str, ScopeStats] = {}
        self.pooled = ScopeStats()
        self.over_adaptive = 0
        """Blocks that finished after running past the adaptive deadline they had (see deadlines.py)."""
        self.dirty: set[str] = set()
        """Scopes changed since :meth:`take_dirty` (the pool as ""; it is never a tracked scope's name
        since the empty scope id is pooled too)."""

    def get(self, scope_id: str) -> ScopeStats | None:
        return self.scopes.get(scope_id)

    def killed(self, scope_id: str, ran: float) -> None:
        """A block of ``scope_id`` was killed at its adaptive deadline after ``ran`` seconds (a pooled
        scope has no adaptive deadline, so only tracked scopes are ever told)."""
        stats = self.scopes.get(scope_id)
        if stats is not None:
            stats.killed(ran)
            self.dirty.add(scope_id)

    def record(self, scope_id: str, seconds: float, requested: float) -> None:
        stats = self.scopes.get(scope_id)
        if stats is None and scope_id and len(self.scopes) < self.max_scopes:
            stats = self.scopes[scope_id] = ScopeStats()
        if stats is None:
            self.pooled.record(seconds, requested)
            self.dirty.add("")
        else:
            stats.record(seconds, requested)
            self.dirty.add(scope_id)

    def total(self) -> ScopeStats:
        """Every completed block of the pod, tracked or pooled."""
        whole = ScopeStats()
        for stats in self.all():
            whole.merge(stats)
        return whole

    def all(self) -> Iterator[ScopeStats]:
        yield from self.scopes.values()
        yield self.pooled

    def take_dirty(self) -> dict[str, Any]:
        """The changed scopes as JSON-ready data (the pool under ""), and forget that they changed."""
        changed = {scope: (self.scopes[scope] if scope else self.pooled).to_json() for scope in self.dirty}
        self.dirty.clear()
        return changed

    def export(self) -> dict[str, Any]:
        """Every scope, the pool under "" (for a snapshot of the state file)."""
        data = {scope: stats.to_json() for scope, stats in self.scopes.items()}
        data[""] = self.pooled.to_json()
        return data

    def load(self, data: Mapping[str, Any]) -> None:
        """Replace the scopes named in ``data`` (ValueError, changing nothing, if any is malformed)."""
        parsed = {scope: ScopeStats.from_json(raw) for scope, raw in data.items()}
        if not all(isinstance(scope, str) for scope in parsed):
            raise ValueError("scope ids must be strings")
        for scope, stats in parsed.items():
            if scope == "":
                self.pooled = stats
            elif scope in self.scopes or len(self.scopes) < self.max_scopes:
                self.scopes[scope] = stats
            else:
                self.pooled.merge(stats)
