"""Which rank broke the collective, from the workers' flight-recorder collectives. No I/O.

Each kill carries the worker's latest collective (``group``, ``seq``, ``op``, ``state``; or none,
see docs/architecture.md, "Collective state in kills"). Per process group, the collective the ranks
wait in is the one (seq, op) most workers are inside (scheduled or started; ties go to the lowest
seq, then op). Against it, each other worker of that group is:

- **behind**: its latest collective of the group is completed and earlier: it never entered the
  one the others wait in (it is stuck in Python before it: the culprit of a collective hang);
- **mismatched**: inside another collective of the group (a different op, or seq), or past it;

and a worker with no collective at all, or whose group nobody waits in, is **outside any
collective**. When no worker has a collective (no flight recorder), there are no findings, and the
hang report falls back to the stack frames.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

from expiry_operator.incidents import Worker
from expiry_operator.kill_events import Collective

INSIDE = frozenset({"scheduled", "started"})


@dataclasses.dataclass(frozen=True)
class Waited:
    """The collective most ranks of a group wait in."""

    group: str
    seq: int
    op: str
    workers: tuple[Worker, ...]


@dataclasses.dataclass(frozen=True)
class Odd:
    worker: Worker
    collective: Collective | None
    waited: Waited | None
    """The collective of its group that the others wait in (None: outside any collective)."""


@dataclasses.dataclass(frozen=True)
class Findings:
    waited: tuple[Waited, ...]
    behind: tuple[Odd, ...]
    mismatched: tuple[Odd, ...]
    outside: tuple[Odd, ...]

    @property
    def culprits(self) -> tuple[Odd, ...]:
        return self.behind + self.mismatched + self.outside


def find(workers: Iterable[tuple[Worker, Collective | None]]) -> Findings | None:
    """The findings, or None when no worker had a collective (no flight recorder anywhere)."""
    listed = list(workers)
    if not any(collective is not None for _, collective in listed):
        return None
    inside: dict[str, Counter[tuple[int, str]]] = {}
    for _, collective in listed:
        if collective is not None and collective.state in INSIDE:
            inside.setdefault(collective.group, Counter())[(collective.seq, collective.op)] += 1
    waited: dict[str, Waited] = {}
    members: set[int] = set()
    for group, counts in sorted(inside.items()):
        (seq, op), _ = min(counts.items(), key=lambda item: (-item[1], item[0]))
        those = [
            index
            for index, (_, c) in enumerate(listed)
            if c is not None and c.group == group and c.state in INSIDE and (c.seq, c.op) == (seq, op)
        ]
        members.update(those)
        waited[group] = Waited(group, seq, op, tuple(listed[index][0] for index in those))
    behind: list[Odd] = []
    mismatched: list[Odd] = []
    outside: list[Odd] = []
    for index, (worker, collective) in enumerate(listed):
        target = waited.get(collective.group) if collective is not None else None
        if index in members:
            continue
        if collective is None or target is None:
            outside.append(Odd(worker, collective, None))
        elif collective.state not in INSIDE and collective.seq < target.seq:
            behind.append(Odd(worker, collective, target))
        else:
            mismatched.append(Odd(worker, collective, target))
    return Findings(tuple(waited.values()), tuple(behind), tuple(mismatched), tuple(outside))
