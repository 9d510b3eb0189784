"""A workload's DeadlineProfile: what its sidecars learned, merged, as a Kubernetes object. No I/O.

One profile per workload (a Job, a JobSet, a PyTorchJob...; the operator names it, see
``expiry_operator.profiles``), in the workload's namespace, owned by the workload so that Kubernetes'
garbage collector deletes it with the workload. Its ``status.scopes`` hold, per scope, exactly what
:class:`~expiry_sidecar.blocks.ScopeStats` keeps (count, longest, total, the longest block killed at
an adaptive deadline, the log-spaced histogram) plus figures for people (p50, p99, the suggested
deadline, a sentence). An entry is per container and scope (``container``, omitted when the sidecar
could not tell the worker's container; see blocks.key): the same code may take longer in one
container than in another.

Merging without double counting: each sidecar adds only what it learned since its last write (the
:func:`difference` between its statistics and a baseline it keeps beside its state file) to the
profile as it finds it (read, add, write back with the resourceVersion read: a conflict is read
again). Counts, sums and histogram buckets add; the longest block and the longest killed one are
maxima, so adding them twice changes nothing. A seeded pod's baseline starts at the seed, so what it
was given is never given back.

Bounded whatever the number of pods: at most ``MAX_SCOPES`` scopes (the ones with the most blocks
stay), scope ids cut to ``MAX_SCOPE_LENGTH`` characters, and per scope at most ``BUCKETS + 1``
histogram counts: at most ~165 KB however many pods write (a worst case of 64 scopes of 256
characters, every bucket a 9-digit count, is 158,922 bytes of JSON; a container name, at most 63
characters, adds at most 80 bytes an entry: 164,042), well inside etcd's limit.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from expiry import names
from expiry_sidecar.blocks import Learned, ScopeStats, key, split
from expiry_sidecar.deadlines import Policy

MAX_SCOPES = 64
MAX_SCOPE_LENGTH = 256
API_VERSION = f"{names.PROFILE_GROUP}/{names.PROFILE_VERSION}"


@dataclasses.dataclass(frozen=True)
class Owner:
    """The workload that owns the profile (an ownerReference: deleted with it)."""

    api_version: str
    kind: str
    name: str
    uid: str

    @classmethod
    def parse(cls, text: str) -> Owner:
        """``{"apiVersion": ..., "kind": ..., "name": ..., "uid": ...}``; ValueError otherwise."""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(key), str) and data[key] for key in ("apiVersion", "kind", "name", "uid")
        ):
            raise ValueError(f"not a JSON object with apiVersion, kind, name and uid: {text[:80]!r}")
        return cls(data["apiVersion"], data["kind"], data["name"], data["uid"])

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid}


def path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{API_VERSION}/namespaces/{namespace}/{names.PROFILE_PLURAL}"
    return base if name is None else f"{base}/{name}"


def copy(stats: ScopeStats) -> ScopeStats:
    return ScopeStats.from_json(stats.to_json())


def difference(
    current: Mapping[str, ScopeStats], baseline: Mapping[str, ScopeStats]
) -> dict[str, ScopeStats]:
    """What ``current`` learned since ``baseline``, per scope; only scopes that changed.

    Counts and buckets subtract (a bucket below its baseline, after learned state was lost, counts
    0: under-counting is safe, counting twice is not); maxima are taken whole (idempotent)."""
    changed = {}
    for scope, now in current.items():
        base = baseline.get(scope)
        if base is None:
            if now.count or now.killed_after:
                changed[scope] = copy(now)
            continue
        buckets = [max(0, a - b) for a, b in zip(now.buckets, base.buckets, strict=True)]
        count = sum(buckets)
        if not (count or now.longest > base.longest or now.killed_after > base.killed_after):
            continue
        total = max(0.0, now.total - base.total) if count else 0.0
        changed[scope] = ScopeStats(count, now.longest, total, now.requested, buckets, now.killed_after)
    return changed


def add(into: dict[str, ScopeStats], more: Mapping[str, ScopeStats]) -> None:
    """Merge ``more`` into ``into``, scope by scope."""
    for scope, stats in more.items():
        if scope in into:
            into[scope].merge(stats)
        else:
            into[scope] = copy(stats)


def bounded(learned_key: str) -> str:
    """The key with its scope id cut to MAX_SCOPE_LENGTH characters."""
    container, scope = split(learned_key)
    return key(container, scope[:MAX_SCOPE_LENGTH])


def merged(existing: Mapping[str, ScopeStats], delta: Mapping[str, ScopeStats]) -> dict[str, ScopeStats]:
    """The profile's scopes after adding ``delta``, bounded to the MAX_SCOPES with the most blocks."""
    scopes = {scope: copy(stats) for scope, stats in existing.items()}
    add(scopes, {bounded(scope): stats for scope, stats in delta.items()})
    kept = sorted(scopes, key=lambda scope: (-scopes[scope].count, scope))[:MAX_SCOPES]
    return {scope: scopes[scope] for scope in sorted(kept)}


def scopes_of(profile: Mapping[str, Any]) -> dict[str, ScopeStats]:
    """The statistics a profile object holds; ValueError when they are not what :func:`body` wrote."""
    status = profile.get("status") or {}
    entries = (status.get("scopes") or []) if isinstance(status, dict) else None
    if not isinstance(entries, list):
        raise ValueError("status.scopes is not a list")
    scopes = {}
    for entry in entries[:MAX_SCOPES]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("scope"), str)
            or not isinstance(entry.get("container", ""), str)
        ):
            raise ValueError(f"not a scope entry: {str(entry)[:80]!r}")
        histogram = entry.get("histogram")
        scopes[key(entry.get("container", ""), entry["scope"][:MAX_SCOPE_LENGTH])] = ScopeStats.from_json(
            [
                entry.get("blocks"),
                entry.get("longestSeconds"),
                entry.get("totalSeconds"),
                entry.get("requestedSeconds"),
                histogram if isinstance(histogram, dict) else None,
                entry.get("killedAfterSeconds", 0),
            ]
        )
    return scopes


def _entry(learned_key: str, stats: ScopeStats, policy: Policy) -> dict[str, Any]:
    limit = policy.limit(Learned(stats.count, stats.longest, held=stats.held))
    suggested = None if limit is None else min(stats.requested, limit)
    if stats.held:
        why = (
            f"held at requested deadlines: a block ran {stats.killed_after:.3g} s and was killed at its"
            " adaptive deadline; adaptive again once a block that long completes"
        )
    elif suggested is None:
        why = f"warming up: {stats.count} of {policy.min_samples} blocks"
    else:
        why = f"{policy.factor:g} x {stats.longest:.3g} s longest of {stats.count} blocks"
        why += f" (floor {policy.floor:g} s)"
    container, scope = split(learned_key)
    entry: dict[str, Any] = {"container": container} if container else {}
    entry |= {
        "scope": scope,
        "blocks": stats.count,
        "longestSeconds": stats.longest,
        "p50Seconds": stats.quantile(0.5),
        "p99Seconds": stats.quantile(0.99),
        "requestedSeconds": stats.requested,
        "suggestedSeconds": suggested,
        "totalSeconds": stats.total,
        "histogram": {str(i): n for i, n in enumerate(stats.buckets) if n},
        "explanation": why,
    }
    if stats.killed_after:
        entry["killedAfterSeconds"] = stats.killed_after
    return entry


def body(
    name: str,
    namespace: str,
    owner: Owner | None,
    scopes: Mapping[str, ScopeStats],
    policy: Policy,
    *,
    writer: str,
    now: str,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """The whole object, as created or replaced (``resource_version``: the one read, for a conflict check)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner is not None:
        metadata["ownerReferences"] = [owner.reference()]
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    entries = [_entry(scope, stats, policy) for scope, stats in scopes.items()]
    return {
        "apiVersion": API_VERSION,
        "kind": names.PROFILE_KIND,
        "metadata": metadata,
        "spec": {"workload": owner.reference() if owner else {}},
        "status": {
            "rule": (
                f"adaptive deadline = min(requested, max({policy.floor:g} s, {policy.factor:g} x longest"
                f" completed block)) once a scope has {policy.min_samples} blocks; a scope whose block was"
                " killed at its adaptive deadline keeps requested deadlines until a block that long"
                " completes. A new pod of the workload starts from these figures; the requested deadline"
                " stays the upper bound; delete this object to forget them."
            ),
            "scopeCount": len(entries),
            "blocks": sum(stats.count for stats in scopes.values()),
            "heldScopes": sum(1 for stats in scopes.values() if stats.held),
            "longestSeconds": max((stats.longest for stats in scopes.values()), default=0.0),
            "lastWriter": writer,
            "lastUpdated": now,
            "scopes": entries,
        },
    }
