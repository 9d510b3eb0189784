"""Annotated pods that run without the sidecar: the gap a fail-open webhook leaves when it is down.

This module is the bookkeeping (pure); ``watchers`` turns a newly found pod into a Kubernetes Event,
a log line and the ``expiry_unprotected_pods`` gauge. A pod counts from the first watch event that
shows it unprotected until it finishes (phase Succeeded or Failed) or is deleted; it is reported
(``observe`` returns True) once in its life, however many updates follow.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from expiry import names
from expiry_operator.opt_in import OptIn, invalid_message, opt_in, wants_expiry

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
EVENT_REASON = "ExpiryNotInjected"


def is_unprotected(pod: Mapping[str, Any]) -> bool:
    """Opted in (or tried to, with a misspelt value), not injected, and still running (or about to)."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return (
        wants_expiry(annotations)
        and annotations.get(names.STATUS_ANNOTATION) != names.INJECTED
        and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
    )


def warning(pod: Mapping[str, Any]) -> str:
    """The Event's message for an unprotected pod: why, and what to do."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(names.ENABLED_ANNOTATION, "")
    if opt_in(annotations) is OptIn.INVALID:
        return (
            f"pod runs without the expiry sidecar: {invalid_message(value)}. Stuck workers will not be "
            "killed. Fix the annotation and recreate the pod."
        )
    return (
        f"pod is annotated {names.ENABLED_ANNOTATION}={value} but runs without the expiry sidecar "
        "(the webhook was unavailable or bypassed when it was created): stuck workers will not "
        "be killed. Recreate the pod to have it injected."
    )


class UnprotectedPods:
    """The set of unprotected pods, kept up to date from watch events."""

    def __init__(self) -> None:
        self._pods: set[tuple[str, str]] = set()
        self._namespaces: set[str] = set()  # every namespace ever counted, so a gauge can drop to 0

    def observe(self, event_type: str | None, pod: Mapping[str, Any]) -> bool:
        """Update from one watch event; True when the pod has just become known as unprotected."""
        metadata = pod.get("metadata") or {}
        namespace = str(metadata.get("namespace", ""))
        key = (namespace, str(metadata.get("uid") or metadata.get("name", "")))
        if event_type != "DELETED" and is_unprotected(pod):
            if key in self._pods:
                return False
            self._pods.add(key)
            self._namespaces.add(namespace)
            return True
        self._pods.discard(key)
        return False

    def counts(self) -> dict[str, int]:
        """Unprotected pods per namespace, including 0 for namespaces that had some before."""
        counted = collections.Counter(namespace for namespace, _ in self._pods)
        return {namespace: counted[namespace] for namespace in self._namespaces}
