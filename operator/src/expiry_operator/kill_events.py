"""The sidecars' kill Events, read: which pod, which reason, and one ``Kill`` per worker. No I/O.

The contract (docs/architecture.md, "Kill Events"; the sidecar's ``events`` writes them): an
events.k8s.io/v1 Event on the sidecar's own pod, ``reportingController: expiry.io/sidecar``, one of
``KILL_REASONS``; the kills of one burst are a compact JSON list in the annotation ``expiry.io/kills``
(``expiry.io/kills-truncated`` counts the workers left out for size). A malformed list still counts:
the Event says at least one worker hung.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from expiry import names

REPORTING_CONTROLLER = names.KILL_EVENT_CONTROLLER
KILL_REASONS = frozenset({names.KILLED_REASON, names.KILL_FAILED_REASON, names.OBSERVED_REASON})
KILLS_ANNOTATION = names.KILLS_ANNOTATION
TRUNCATED_ANNOTATION = names.KILLS_TRUNCATED_ANNOTATION
MAX_NODE = 253
"""A node's name is a DNS subdomain: longer is not a node name, and is cut."""


@dataclasses.dataclass(frozen=True, slots=True)
class Collective:
    """The worker's latest flight-recorder collective (docs/architecture.md, "Collective state in kills")."""

    group: str
    seq: int
    op: str
    state: str  # scheduled, started or completed


@dataclasses.dataclass(frozen=True, slots=True)
class Kill:
    """One worker whose deadline passed (killed, or only observed)."""

    rank: int | None
    scope: str
    deadline: float | None
    frames: tuple[str, ...]  # innermost last; () when no stack was dumped
    collective: Collective | None = None  # None: no flight recorder, or none read
    node: str | None = None  # the pod's node (the sidecar's EXPIRY_NODE_NAME); None: not said


@dataclasses.dataclass(frozen=True, slots=True)
class KillEvent:
    uid: str  # the Event's own uid (a redelivered Event is not a new kill)
    namespace: str
    pod: str
    pod_uid: str
    reason: str
    kills: tuple[Kill, ...]
    truncated: int
    time: float | None  # epoch seconds: the Event's last observation
    digest: str  # what the kills annotation said, to tell an update with new kills from a resend

    @property
    def workers(self) -> int:
        """Workers this Event stands for; at least one (an Event whose list is unreadable still hung)."""
        return max(1, len(self.kills) + self.truncated)


def is_kill_event(event: Mapping[str, Any]) -> bool:
    return event.get("reportingController") == REPORTING_CONTROLLER and event.get("reason") in KILL_REASONS


def parse_kill_event(event: Mapping[str, Any]) -> KillEvent | None:
    """The kill Event as data; None when it is not a sidecar's kill Event about a pod."""
    if not is_kill_event(event):
        return None
    metadata = event.get("metadata") or {}
    regarding = event.get("regarding") or event.get("involvedObject") or {}
    if regarding.get("kind", "Pod") != "Pod" or not regarding.get("name"):
        return None
    annotations = metadata.get("annotations") or {}
    listed = annotations.get(KILLS_ANNOTATION, "")
    return KillEvent(
        uid=str(metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}"),
        namespace=str(regarding.get("namespace") or metadata.get("namespace") or ""),
        pod=str(regarding["name"]),
        pod_uid=str(regarding.get("uid") or ""),
        reason=str(event["reason"]),
        kills=_kills(listed),
        truncated=_count(annotations.get(TRUNCATED_ANNOTATION)),
        time=_event_time(event),
        digest=listed,
    )


def _kills(text: str) -> tuple[Kill, ...]:
    try:
        items = json.loads(text) if text else []
    except ValueError:
        return ()
    if not isinstance(items, list):
        return ()
    return tuple(kill for kill in map(_kill, items) if kill is not None)


def _kill(item: object) -> Kill | None:
    if not isinstance(item, dict):
        return None
    rank = item.get("rank")
    deadline = item.get("deadline")
    frames = item.get("frames")
    node = item.get("node")
    return Kill(
        rank=rank if isinstance(rank, int) and not isinstance(rank, bool) else None,
        scope=str(item.get("scope") or ""),
        deadline=float(deadline)
        if isinstance(deadline, int | float) and not isinstance(deadline, bool)
        else None,
        frames=tuple(str(frame) for frame in frames) if isinstance(frames, list) else (),
        collective=_collective(item.get("collective")),
        node=str(node)[:MAX_NODE] if isinstance(node, str) and node else None,
    )


def _collective(item: object) -> Collective | None:
    if not isinstance(item, dict):
        return None
    seq, state = item.get("seq"), item.get("state")
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or state not in ("scheduled", "started", "completed")
    ):
        return None
    return Collective(str(item.get("group") or "?"), seq, str(item.get("op") or "?"), str(state))


def _count(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def _event_time(event: Mapping[str, Any]) -> float | None:
    """The last time the Event was observed: series.lastObservedTime, else eventTime (MicroTime)."""
    series = event.get("series") or {}
    for value in (
        series.get("lastObservedTime"),
        event.get("eventTime"),
        event.get("deprecatedLastTimestamp"),
        event.get("lastTimestamp"),
    ):
        if isinstance(value, str) and value:
            try:
                return datetime.datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return None
