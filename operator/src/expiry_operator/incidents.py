"""Kills of one workload, grouped in time into incidents, in bounded memory. No I/O, no clock.

An incident opens with the first kill Event of a workload and takes every later one of the same
workload until ``window`` seconds pass without one, or ``max_span`` seconds after it opened (so a
job that keeps hanging is still reported). Its kills are kept as a tally: per distinct (scope,
frames), how many workers and the first few of them, so memory depends on how many different places
the workers stopped in (capped), not on how many workers there were.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator

from expiry_operator.kill_events import Collective, Kill, KillEvent
from expiry_operator.owners import Workload

Signature = tuple[str, tuple[str, ...]]
"""Where a worker stopped: its expired scope and its innermost frames (() when no stack was dumped)."""
OTHER: Signature = ("(other places, not told apart)", ())
MAX_SIGNATURES = 32
MAX_EXAMPLES = 8
MAX_PODS = 100_000
MAX_COLLECTIVES = 16_384
"""Workers whose collectives an incident keeps (one small record each): a 16k-rank job."""


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    """One killed worker, as an example of its signature."""

    pod: str
    rank: int | None
    node: str | None = None


@dataclasses.dataclass
class Place:
    """Workers that stopped at one signature: how many, and the first ``MAX_EXAMPLES`` of them."""

    workers: int = 0
    examples: list[Worker] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Incident:
    workload: Workload
    opened: float
    last: float
    workers: int = 0
    unknown: int = 0  # workers an Event counted but did not describe (truncated or unreadable)
    pods: set[str] = dataclasses.field(default_factory=set)
    reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    places: dict[Signature, Place] = dataclasses.field(default_factory=dict)
    first_deadline: float | None = None
    first: Worker | None = None  # the worker whose deadline passed first
    first_scope: str = ""
    collectives: list[tuple[Worker, Collective | None]] = dataclasses.field(default_factory=list)
    """Every described worker with its latest collective (up to MAX_COLLECTIVES), for stragglers."""

    def add(self, event: KillEvent, now: float) -> None:
        self.last = now
        if len(self.pods) < MAX_PODS:
            self.pods.add(event.pod)
        self.workers += event.workers
        self.unknown += event.workers - len(event.kills)
        self.reasons[event.reason] += event.workers
        for kill in event.kills:
            self._place(kill, event.pod)

    def _place(self, kill: Kill, pod: str) -> None:
        worker = Worker(pod, kill.rank, kill.node)
        if kill.deadline is not None and (self.first_deadline is None or kill.deadline < self.first_deadline):
            self.first_deadline, self.first, self.first_scope = kill.deadline, worker, kill.scope
        if len(self.collectives) < MAX_COLLECTIVES:
            self.collectives.append((worker, kill.collective))
        signature: Signature = (kill.scope, kill.frames)
        place = self.places.get(signature)
        if place is None:
            if len(self.places) >= MAX_SIGNATURES - 1:
                signature = OTHER
            place = self.places.setdefault(signature, Place())
        place.workers += 1
        if len(place.examples) < MAX_EXAMPLES:
            place.examples.append(worker)


class IncidentTracker:
    """Open incidents by workload; ``pop_due`` hands over the ones whose window has closed."""

    def __init__(self, *, window: float, max_span: float) -> None:
        self.window = window
        self.max_span = max_span
        self._open: dict[tuple[str, str, str, str, str], Incident] = {}

    def add(self, workload: Workload, event: KillEvent, now: float) -> Incident:
        incident = self._open.get(workload.key)
        if incident is None:
            incident = self._open[workload.key] = Incident(workload=workload, opened=now, last=now)
        incident.add(event, now)
        return incident

    def due_at(self, incident: Incident) -> float:
        return min(incident.last + self.window, incident.opened + self.max_span)

    def next_due(self) -> float | None:
        return min((self.due_at(incident) for incident in self._open.values()), default=None)

    def pop_due(self, now: float) -> Iterator[Incident]:
        for key, incident in list(self._open.items()):
            if self.due_at(incident) <= now:
                del self._open[key]
                yield incident

    def __len__(self) -> int:
        return len(self._open)
