"""What the operator makes of a pod manifest, and how the kubelet would run its containers."""

from __future__ import annotations

from typing import Any

from expiry_operator.injection import Injected, admit
from expiry_operator.settings import SidecarSettings


def inject(manifest: dict[str, Any], settings: SidecarSettings) -> dict[str, Any]:
    """The injected pod, as the webhook would admit it (native sidecars supported)."""
    outcome = admit(manifest, settings, native_sidecars_supported=True)
    assert isinstance(outcome, Injected), outcome
    return outcome.pod


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    found: dict[str, Any] = next(
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name
    )
    return found


def resolve_env(pod: dict[str, Any], env: list[dict[str, Any]]) -> dict[str, str]:
    """What the kubelet would put in the environment (values and downward-API metadata fields, and
    ``spec.nodeName``: the node the pod is bound to, else this machine, ``localhost``)."""
    resolved = {}
    for var in env:
        if "value" in var:
            resolved[var["name"]] = var["value"]
            continue
        field = var["valueFrom"]["fieldRef"]["fieldPath"]
        if field == "spec.nodeName":
            resolved[var["name"]] = pod["spec"].get("nodeName") or "localhost"
        else:
            assert field.startswith("metadata."), field
            resolved[var["name"]] = pod["metadata"][field.removeprefix("metadata.")]
    return resolved
