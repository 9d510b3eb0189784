"""An incident, told: how many workers in how many pods, the first deadline, and the odd ones out.

In a collective hang (an all-reduce that one rank never joins) the many wait in the same place and
the few are stuck somewhere else: the majority is the (scope, frames) where most workers stopped, and
the odd ones out are the workers that stopped elsewhere. A worker without a stack (no dump) is
compared by its scope only. With no single largest place there is no majority, and nobody is named.
When the workers had torch's flight recorder, the report says instead which ranks broke the
collective (:mod:`.stragglers`: behind, mismatched, outside any collective); the frames remain in
the annotation, and are the message's fallback when no worker had a collective.
No I/O: ``watchers`` posts the result as one ``HangDetected`` Event on the workload.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from expiry_operator import stragglers
from expiry_operator.incidents import OTHER, Incident, Signature, Worker
from expiry_operator.kill_events import Collective

EVENT_REASON = "HangDetected"
DETAILS_ANNOTATION = "expiry.io/incident"
MAX_MESSAGE = 1024  # what kubectl and most Event consumers show in full
MAX_DETAILED_ODD = 64
_OUTCOMES = (
    ("WorkerKilled", "killed"),
    ("WorkerKillFailed", "kill failed"),
    ("WorkerHangObserved", "observed"),
)


@dataclasses.dataclass(frozen=True)
class OddOne:
    worker: Worker
    signature: Signature


@dataclasses.dataclass(frozen=True)
class HangReport:
    incident: Incident
    majority: Signature | None
    majority_workers: int
    odd: tuple[OddOne, ...]  # examples, at most MAX_EXAMPLES per place
    odd_workers: int  # every worker outside the majority, listed or not
    places: int
    findings: stragglers.Findings | None = None
    """Who broke the collective; None when no worker had a flight-recorder collective."""

    @property
    def kind(self) -> str:
        return self.incident.workload.kind

    def message(self) -> str:
        incident = self.incident
        workload = incident.workload
        outcomes = ", ".join(
            f"{incident.reasons[reason]} {word}" for reason, word in _OUTCOMES if incident.reasons[reason]
        )
        parts = [
            f"{_plural(incident.workers, 'worker')} in {_plural(len(incident.pods), 'pod')} of "
            f"{workload.kind} {workload.name} passed their deadline ({outcomes})."
        ]
        if incident.first_deadline is not None and incident.first is not None:
            parts.append(
                f"First deadline passed at {_iso(incident.first_deadline)}: "
                f"{_who(incident.first)}, scope {incident.first_scope or '?'}."
            )
        if self.findings is not None:
            parts.extend(_told(self.findings))
        elif self.majority is None:
            parts.append(f"No majority: the workers stopped in {self.places} different places.")
        else:
            parts.append(f"{self.majority_workers} stopped {_where(self.majority)}.")
            if self.odd_workers:
                listed = [f"{_who(odd.worker)} {_where(odd.signature)}" for odd in self.odd]
                parts.append(f"Odd ones out ({self.odd_workers}): " + "; ".join(listed) + ".")
            elif incident.workers > 1:
                parts.append("No odd ones out: every described worker stopped there.")
        if incident.unknown:
            parts.append(f"{incident.unknown} not described (left out of the sidecars' Events for size).")
        return _fit(" ".join(parts))

    def details(self) -> dict[str, Any]:
        """The machine-readable incident (the Event's ``expiry.io/incident`` annotation)."""
        incident = self.incident
        return {
            "workers": incident.workers,
            "pods": len(incident.pods),
            "outcomes": dict(sorted(incident.reasons.items())),
            "firstDeadline": incident.first_deadline,
            "first": _worker(incident.first, incident.first_scope) if incident.first else None,
            "majority": None
            if self.majority is None
            else {
                "scope": self.majority[0],
                "frames": list(self.majority[1]),
                "workers": self.majority_workers,
            },
            "oddWorkers": self.odd_workers,
            "oddOnesOut": [
                {**_worker(odd.worker, odd.signature[0]), "frames": list(odd.signature[1])}
                for odd in self.odd[:MAX_DETAILED_ODD]
            ],
            "undescribed": incident.unknown,
            "collectives": None if self.findings is None else _findings(self.findings),
        }

    def details_json(self) -> str:
        return json.dumps(self.details(), separators=(",", ":"), sort_keys=True)


def report(incident: Incident) -> HangReport:
    findings = stragglers.find(incident.collectives)
    return dataclasses.replace(_by_frames(incident), findings=findings)


def _by_frames(incident: Incident) -> HangReport:
    ranked = sorted(incident.places.items(), key=lambda item: item[1].workers, reverse=True)
    majority: Signature | None = None
    if ranked and ranked[0][0] != OTHER and (len(ranked) == 1 or ranked[0][1].workers > ranked[1][1].workers):
        majority = ranked[0][0]
    if majority is None:
        return HangReport(incident, None, 0, (), 0, len(ranked))
    majority_workers, odd_workers = 0, 0
    odd: list[OddOne] = []
    for signature, place in ranked:
        if _agrees(signature, majority):
            majority_workers += place.workers
        else:
            odd_workers += place.workers
            odd.extend(OddOne(worker, signature) for worker in place.examples)
    return HangReport(incident, majority, majority_workers, tuple(odd), odd_workers, len(ranked))


def _told(findings: stragglers.Findings) -> list[str]:
    """The findings in sentences, the culprits first (the message is cut at MAX_MESSAGE)."""
    parts: list[str] = []
    for waited in findings.waited:
        name = _collective_name(waited.op, waited.seq, waited.group)
        behind = [odd for odd in findings.behind if odd.waited == waited]
        mismatched = [odd for odd in findings.mismatched if odd.waited == waited]
        waiting = f"{_plural(len(waited.workers), 'rank')} {'waits' if len(waited.workers) == 1 else 'wait'}"
        if behind:
            who = ", ".join(_who(odd.worker) for odd in behind)
            parts.append(f"{who} never entered {name}; {waiting} in it.")
        for odd in mismatched:
            assert odd.collective is not None
            theirs = _collective_name(odd.collective.op, odd.collective.seq, odd.collective.group)
            parts.append(
                f"Mismatch: {_who(odd.worker)} is in {theirs} ({odd.collective.state}); {waiting} in {name}."
            )
        if not behind and not mismatched:
            parts.append(f"{waiting.capitalize()} in {name}; none of its ranks is behind.")
    if findings.outside:
        who = ", ".join(_who(odd.worker) for odd in findings.outside[:MAX_DETAILED_ODD])
        verb = "is" if len(findings.outside) == 1 else "are"
        parts.append(f"{who} {verb} outside any collective.")
    return parts


def _collective_name(op: str, seq: int, group: str) -> str:
    return f"{op} #{seq} of {group}"


def _findings(findings: stragglers.Findings) -> dict[str, Any]:
    def odd(one: stragglers.Odd) -> dict[str, Any]:
        return {
            "pod": one.worker.pod,
            "node": one.worker.node,
            "rank": one.worker.rank,
            "collective": _collective(one.collective),
        }

    return {
        "waitedIn": [
            {"group": w.group, "seq": w.seq, "op": w.op, "workers": len(w.workers)} for w in findings.waited
        ],
        "behind": [odd(one) for one in findings.behind[:MAX_DETAILED_ODD]],
        "mismatched": [odd(one) for one in findings.mismatched[:MAX_DETAILED_ODD]],
        "outside": [odd(one) for one in findings.outside[:MAX_DETAILED_ODD]],
    }


def _collective(collective: Collective | None) -> dict[str, Any] | None:
    return None if collective is None else dataclasses.asdict(collective)


def _agrees(signature: Signature, majority: Signature) -> bool:
    """Same place; a worker without a stack (or a majority without one) is judged by its scope."""
    if signature == majority:
        return True
    return signature[0] == majority[0] and not (signature[1] and majority[1])


def _where(signature: Signature) -> str:
    scope, frames = signature
    if signature == OTHER:
        return f"in {scope}"
    return f"in {frames[-1]} (scope {scope or '?'})" if frames else f"in scope {scope or '?'} (no stack)"


def _who(worker: Worker) -> str:
    where = f"pod {worker.pod}, node {worker.node}" if worker.node else f"pod {worker.pod}"
    return f"rank {worker.rank} ({where})" if worker.rank is not None else where


def _worker(worker: Worker, scope: str) -> dict[str, Any]:
    return {"pod": worker.pod, "node": worker.node, "rank": worker.rank, "scope": scope}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fit(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    tail = " (cut; the full list is in the expiry.io/incident annotation)"
    return text[: MAX_MESSAGE - len(tail)].rstrip() + tail
