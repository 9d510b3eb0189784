"""Who runs the pod watches: one replica, chosen with a ``coordination.k8s.io/v1`` Lease.

The webhook is served by every replica; the watches (the unprotected-pod report, and any other
leader-only handler) by the holder of the Lease only, so the Events they post are not doubled.
This module is the pure part, the same rules as client-go's leader election:

* the Lease is **free** when it has no holder (the previous holder released it on a clean exit),
  **expired** when its record (holder, renewTime, transitions) has not changed for its
  ``leaseDurationSeconds`` *as measured on our own monotonic clock since we first saw that record*.
  Comparing the holder's ``renewTime`` with our wall clock would make failover depend on clock skew
  between nodes; ``renewTime`` is written for people and tools, and its changes are what we watch.
  So a replica that starts beside an abandoned Lease waits one lease duration before it takes over.
* the holder renews every retry period, and **stops acting as leader** once ``renewDeadline`` has
  passed since its last successful write, before any other replica may take over
  (``renewDeadline < leaseDurationSeconds``, so two leaders never overlap while clocks run at the
  same rate).

``election`` is the thin I/O loop around ``Elector``; ``Leadership`` is the gate the rest of the
operator reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
from collections.abc import Mapping
from typing import Any

LEASE_API = "coordination.k8s.io/v1"


@dataclasses.dataclass(frozen=True)
class LeaseTiming:
    """client-go's defaults: a failed-over replica waits 15 s; a holder gives up after 10 s."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problem(self) -> str | None:
        """Why these timings cannot guarantee one leader at a time (None when they can)."""
        if self.retry_period <= 0:
            return "retryPeriod must be positive"
        if not self.retry_period < self.renew_deadline < self.duration:
            return "the timings must satisfy retryPeriod < renewDeadline < leaseDuration"
        if self.duration < 1:
            return "leaseDuration must be at least 1 second (the Lease holds whole seconds)"
        return None


@dataclasses.dataclass(frozen=True)
class Lease:
    """The parts of a Lease object the election reads."""

    holder: str
    duration: float | None
    renew_time: str | None
    transitions: int
    resource_version: str | None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Lease:
        spec = obj.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(duration) if isinstance(duration, int | float) and duration > 0 else None,
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
        )


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, held by us
    ACQUIRE = "acquire"  # free or expired: take it over
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # another replica holds a live Lease


class Elector:
    """The decisions of one replica, fed the Lease as read and the monotonic time of the read."""

    def __init__(self, identity: str, timing: LeaseTiming) -> None:
        self.identity = identity
        self.timing = timing
        self._seen: tuple[str, str | None, int] | None = None
        self._seen_at = 0.0
        self._renewed_at: float | None = None

    def decide(self, lease: Lease | None, now: float) -> Action:
        if lease is None:
            return Action.CREATE
        if lease.holder == self.identity:
            return Action.RENEW
        self._renewed_at = None  # another holder (or none): whatever we held is gone
        record = (lease.holder, lease.renew_time, lease.transitions)
        if record != self._seen:
            self._seen, self._seen_at = record, now
        if not lease.holder:
            return Action.ACQUIRE
        duration = lease.duration if lease.duration is not None else self.timing.duration
        return Action.ACQUIRE if now - self._seen_at >= duration else Action.WAIT

    def written(self, started: float) -> None:
        """A create, takeover or renewal that was started at ``started`` succeeded."""
        self._renewed_at = started

    def released(self) -> None:
        self._renewed_at = None

    def leading(self, now: float) -> bool:
        return self._renewed_at is not None and now - self._renewed_at < self.timing.renew_deadline

    def leading_until(self) -> float | None:
        """The monotonic time at which we stop leading unless renewed (None when not leading)."""
        return None if self._renewed_at is None else self._renewed_at + self.timing.renew_deadline


def micro_time(when: datetime.datetime) -> str:
    """Kubernetes ``MicroTime``: RFC 3339 in UTC with microseconds."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_lease(name: str, namespace: str, identity: str, timing: LeaseTiming, now: str) -> dict[str, Any]:
    return {
        "apiVersion": LEASE_API,
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": _whole_seconds(timing.duration),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        },
    }


def takeover_patch(lease: Lease, identity: str, timing: LeaseTiming, now: str) -> dict[str, Any]:
    """A merge patch taking the Lease over; fails with 409 if it changed since it was read."""
    return _patch(
        lease,
        holderIdentity=identity,
        leaseDurationSeconds=_whole_seconds(timing.duration),
        acquireTime=now,
        renewTime=now,
        leaseTransitions=lease.transitions + 1,
    )


def renew_patch(lease: Lease, timing: LeaseTiming, now: str) -> dict[str, Any]:
    return _patch(lease, renewTime=now, leaseDurationSeconds=_whole_seconds(timing.duration))


def release_patch(lease: Lease, now: str) -> dict[str, Any]:
    """On a clean exit: no holder, so the next replica takes over at its next retry, not in 15 s."""
    return _patch(lease, holderIdentity=None, leaseDurationSeconds=1, renewTime=now)


def _patch(lease: Lease, **spec: Any) -> dict[str, Any]:
    # A resourceVersion in a merge patch is a precondition: the API server answers 409 Conflict if the
    # Lease changed since we read it, so two replicas cannot both take over the same expired Lease.
    metadata = {"resourceVersion": lease.resource_version} if lease.resource_version else {}
    return {"metadata": metadata, "spec": spec}


def _whole_seconds(seconds: float) -> int:
    return max(1, round(seconds))


class Leadership:
    """The gate: whether this replica leads now, and a way to wait for either state.

    Leader-only work waits for ``wait_leading()`` and stops at ``wait_following()``; a plain check is
    ``leading``. The election sets it; nothing else should.
    """

    def __init__(self) -> None:
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()
        self._listeners: list[asyncio.Event] = []

    def notify(self, event: asyncio.Event) -> None:
        """Set ``event`` on every change (to wait for a change or something else without a task)."""
        self._listeners.append(event)

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def set(self, leading: bool) -> None:
        (self._leading if leading else self._following).set()
        (self._following if leading else self._leading).clear()
        for event in self._listeners:
            event.set()

    async def wait_leading(self) -> None:
        await self._leading.wait()

    async def wait_following(self) -> None:
        await self._following.wait()
