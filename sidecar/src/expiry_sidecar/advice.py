"""What the sidecar has learned, as a document (``GET /blocks``) and as advice for a person.

``expiry-sidecar advise`` reads the document from a running sidecar, or builds it from a state
file, and prints per scope: how many blocks completed, p50/p99/longest, the deadline the code
requests, the deadline the adaptive rule would give, and so how long after a hang it is found
today and with the suggestion.
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from expiry_sidecar.blocks import Learned, ScopeStats, split
from expiry_sidecar.deadlines import Deadlines, Policy


def document(deadlines: Deadlines) -> dict[str, Any]:
    """Everything learned, JSON-ready: the policy, each tracked scope, and the pool."""
    policy, stats = deadlines.policy, deadlines.stats
    return {
        "policy": {
            "deadlines": policy.deadlines,
            "adaptive_factor": policy.factor,
            "adaptive_min_samples": policy.min_samples,
            "adaptive_floor": policy.floor,
        },
        "max_scopes": stats.max_scopes,
        "blocks_over_adaptive_deadline": stats.over_adaptive,
        "scopes": [_scope(policy, s) | _named(learned) for learned, s in stats.scopes.items()],
        "pooled": _scope(policy, stats.pooled, learns=False),
    }


def _named(learned_key: str) -> dict[str, str]:
    """``scope``, and ``container`` when the worker's container is known (blocks.key)."""
    container, scope = split(learned_key)
    return {"container": container, "scope": scope} if container else {"scope": scope}


def _scope(policy: Policy, stats: ScopeStats, learns: bool = True) -> dict[str, Any]:
    limit = policy.limit(Learned(stats.count, stats.longest)) if learns else None
    return {
        "blocks": stats.count,
        "mean": stats.total / stats.count if stats.count else 0.0,
        "p50": stats.quantile(0.5),
        "p99": stats.quantile(0.99),
        "longest": stats.longest,
        "requested": stats.requested,
        "adaptive_limit": limit,
        "held_after": stats.held,
    }


class DocumentError(ValueError):
    """What came back is not a sidecar's ``/blocks`` document; the message names the field."""


def fetch(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The document a running sidecar serves at ``url`` (its base, e.g. ``http://10.0.0.7:9402``).

    OSError when it cannot be reached; DocumentError when the answer is not a ``/blocks`` document.
    """
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/blocks", timeout=timeout) as response:
            data = json.load(response)
    except (ValueError, RecursionError, http.client.HTTPException) as exc:  # bad URL, body, or reply
        raise DocumentError(" ".join(str(exc).split()) or type(exc).__name__) from None
    check_document(data)
    checked: dict[str, Any] = data
    return checked


_NUMBER = (int, float)


def check_document(doc: object) -> None:
    """Raise DocumentError naming the first field of ``doc`` that :func:`render` could not use."""
    _check(doc, dict, "the document")
    assert isinstance(doc, dict)
    policy = doc.get("policy")
    _check(policy, dict, "policy")
    assert isinstance(policy, dict)
    _check(policy.get("deadlines"), str, "policy.deadlines")
    for key in ("adaptive_factor", "adaptive_floor"):
        _check(policy.get(key), _NUMBER, f"policy.{key}", positive=True)
    _check(policy.get("adaptive_min_samples"), int, "policy.adaptive_min_samples", positive=True)
    _check(doc.get("max_scopes"), int, "max_scopes")
    if doc.get("blocks_over_adaptive_deadline") is not None:
        _check(doc["blocks_over_adaptive_deadline"], int, "blocks_over_adaptive_deadline")
    scopes = doc.get("scopes")
    _check(scopes, list, "scopes")
    assert isinstance(scopes, list)
    for index, entry in enumerate([*scopes, doc.get("pooled")]):
        where = "pooled" if index == len(scopes) else f"scopes[{index}]"
        _check(entry, dict, where)
        assert isinstance(entry, dict)
        if index < len(scopes):
            _check(entry.get("scope"), str, f"{where}.scope")
            _check(entry.get("container", ""), str, f"{where}.container")
        _check(entry.get("blocks"), int, f"{where}.blocks")
        for key in ("p50", "p99", "longest", "requested"):
            _check(entry.get(key), _NUMBER, f"{where}.{key}")


def _check(value: object, types: type | tuple[type, ...], where: str, *, positive: bool = False) -> None:
    kinds = types if isinstance(types, tuple) else (types,)
    expected = " or ".join(kind.__name__ for kind in kinds)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise DocumentError(f"{where} must be {expected}, got {type(value).__name__}")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not (math.isfinite(number) and number >= 0 and (number > 0 or not positive)):
            bound = "> 0" if positive else ">= 0"
            raise DocumentError(f"{where} must be a finite number {bound}, got {str(value)[:40]}")


@dataclass(frozen=True)
class Advice:
    scope: str
    """The scope id, after its container's name and a colon when that is known."""
    blocks: int
    p50: float
    p99: float
    longest: float
    requested: float
    suggested: float | None
    """None while the scope has too few blocks to learn from."""


def advise(doc: dict[str, Any], policy: Policy) -> list[Advice]:
    rows = []
    for entry in doc["scopes"]:
        limit = policy.limit(Learned(entry["blocks"], entry["longest"]))
        suggested = None if limit is None else min(entry["requested"], limit)
        rows.append(
            Advice(
                f"{entry['container']}: {entry['scope']}" if entry.get("container") else entry["scope"],
                entry["blocks"],
                entry["p50"],
                entry["p99"],
                entry["longest"],
                entry["requested"],
                suggested,
            )
        )
    return rows


def render(rows: list[Advice], policy: Policy, doc: dict[str, Any]) -> Iterator[str]:
    rule = (
        f"adaptive rule: min(requested, max({policy.floor:g} s, {policy.factor:g} x longest))"
        f" after {policy.min_samples:,} blocks"
    )
    yield f"{rule}; this sidecar runs with {doc['policy']['deadlines']} deadlines"
    yield (
        f"{'scope':<32} {'blocks':>9} {'p50':>9} {'p99':>9} {'longest':>9} {'requested':>10}"
        f" {'suggested':>10}  a hang is found after"
    )
    for row in rows:
        if row.suggested is None:
            suggested, found = (
                "-",
                f"{_s(row.requested)} (warming up: {row.blocks:,} of {policy.min_samples:,})",
            )
        else:
            suggested = _s(row.suggested)
            sooner = row.requested / row.suggested if row.suggested else 1.0
            found = (
                f"{_s(row.requested)} today, {_s(row.suggested)} with the suggestion ({sooner:.3g}x sooner)"
            )
        yield (
            f"{_short(row.scope):<32} {row.blocks:>9,} {_s(row.p50):>9} {_s(row.p99):>9} {_s(row.longest):>9}"
            f" {_s(row.requested):>10} {suggested:>10}  {found}"
        )
    pooled = doc["pooled"]["blocks"]
    if pooled:
        first = doc["max_scopes"]
        yield f"{pooled:,} blocks of scopes beyond the first {first} were pooled: no advice for them"
    over = doc.get("blocks_over_adaptive_deadline")  # None: not known (read from a state file)
    if over is not None:
        yield f"blocks that finished after running past their adaptive deadline: {over:,}"


def _short(scope: str) -> str:
    return scope if len(scope) <= 32 else "..." + scope[-29:]


def _s(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:,.0f} s"
    return f"{seconds:.3g} s"
