"""Annotated pods that run without the sidecar: the gap a fail-open webhook leaves when it is down.

This module is the bookkeeping (pure); ``handlers`` turns a newly found pod into a Kubernetes Event,
a log line and the ``expiry_unprotected_pods`` gauge.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from expiry import names
from expiry_operator.options import is_enabled

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
EVENT_REASON = "ExpiryNotInjected"


def is_unprotected(pod: Mapping[str, Any]) -> bool:
    """Opted in, not injected, and still running (or about to)."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return (
        is_enabled(annotations)
        and annotations.get(names.STATUS_ANNOTATION) != names.INJECTED
        and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
    )


class UnprotectedPods:
    """The set of unprotected pods, kept up to date from watch events."""

    def __init__(self) -> None:
        self._pods: set[tuple[str, str]] = set()
        self._namespaces: set[str] = set()  # every namespace ever counted, so a gauge can drop to 0

    def observe(self, event_type: str | None, pod: Mapping[str, Any]) -> bool:
        """Update from one watch event; True when the pod has just become known as unprotected."""
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        if event_type != "DELETED" and is_unprotected(pod):
            if key in self._pods:
                return False
            self._pods.add(key)
            self._namespaces.add(key[0])
            return True
        self._pods.discard(key)
        return False

    def counts(self) -> dict[str, int]:
        """Unprotected pods per namespace, including 0 for namespaces that had some before."""
        counted = collections.Counter(namespace for namespace, _ in self._pods)
        return {namespace: counted[namespace] for namespace in self._namespaces}
