"""The properties every injected pod must have, checked the same way for the core, the CLI and the webhook."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from expiry import names
from tests.operator.pss_checker import level_of

OLDEST = "1.27.0"
FIRST_NATIVE = "1.29.0"
NEWEST = kubernetes_validate.utils.latest_version()


def sidecars(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = pod["spec"]
    return [
        (field, c)
        for field in ("containers", "initContainers")
        for c in spec.get(field) or []
        if c["name"] == names.SIDECAR_CONTAINER
    ]


def validate_schema(pod: dict[str, Any]) -> None:
    """Valid for every Kubernetes version the pod is meant for (native sidecars, ours or not, need 1.29)."""
    native = any("restartPolicy" in c for c in pod["spec"].get("initContainers") or [])
    for version in (FIRST_NATIVE if native else OLDEST, NEWEST):
        kubernetes_validate.validate(pod, version, strict=True)


def _effective(spec: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    own = (container.get("securityContext") or {}).get(field)
    return own if own is not None else (spec.get("securityContext") or {}).get(field)


def check_injected(
    original: dict[str, Any], result: dict[str, Any], trainers: list[str] | None = None
) -> None:
    validate_schema(result)
    spec = result["spec"]
    found = sidecars(result)
    assert len(found) == 1, found
    field, sidecar = found[0]
    native = field == "initContainers"
    if native:
        assert sidecar["restartPolicy"] == "Always"
        assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    else:
        assert "restartPolicy" not in sidecar
        pod_completes = spec.get("restartPolicy", "Always") != "Always"
        assert ("--exit-when-alone" in sidecar["args"]) == pod_completes

    (volume_name,) = [m["name"] for m in sidecar["volumeMounts"] if m["mountPath"] == names.RUN_DIR]
    volume = {"name": volume_name, "emptyDir": {}}
    assert volume in spec["volumes"]
    assert volume_name not in {v["name"] for v in original["spec"].get("volumes") or []}

    trainer_names = trainers or [c["name"] for c in original["spec"]["containers"]]
    for container in spec["containers"]:
        env = [e for e in container.get("env") or [] if e["name"] == names.TIMER_FILE_ENV]
        if container["name"] in trainer_names:
            assert env == [{"name": names.TIMER_FILE_ENV, "value": names.FIFO_PATH}], container
            assert {"name": volume["name"], "mountPath": names.RUN_DIR} in container["volumeMounts"]
        elif container["name"] != names.SIDECAR_CONTAINER:
            original_container = next(
                c for c in original["spec"]["containers"] if c["name"] == container["name"]
            )
            assert container == original_container  # not a trainer: untouched

    original_order = [c["name"] for c in original["spec"]["containers"]]
    assert [c["name"] for c in spec["containers"] if c["name"] != names.SIDECAR_CONTAINER] == original_order
    assert spec["shareProcessNamespace"] is True
    assert result["metadata"]["labels"][names.INJECTED_LABEL] == "true"
    assert result["metadata"]["annotations"][names.STATUS_ANNOTATION] == names.INJECTED

    downward = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in sidecar["env"] if "valueFrom" in e
    }
    assert downward == {
        names.POD_NAME_ENV: "metadata.name",
        names.POD_NAMESPACE_ENV: "metadata.namespace",
        names.POD_UID_ENV: "metadata.uid",
        names.NODE_NAME_ENV: "spec.nodeName",
    }
    port = next(p for p in sidecar["ports"] if p["name"] == names.METRICS_PORT_NAME)
    other_ports = {
        p.get("containerPort") for c in original["spec"]["containers"] for p in c.get("ports") or []
    }
    assert port["containerPort"] not in other_ports

    sc = sidecar["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    uids = {_effective(spec, c, "runAsUser") for c in spec["containers"] if c["name"] in trainer_names}
    assert len(uids) == 1
    (uid,) = uids
    if uid is None:  # the trainer runs as its image's user: signalling it needs CAP_KILL, kept only by root
        assert "KILL" in sc["capabilities"]["add"]
        assert (sc["runAsUser"], sc["runAsNonRoot"]) == (0, False)
    else:
        assert _effective(spec, sidecar, "runAsUser") == uid
        assert "KILL" not in (sc["capabilities"].get("add") or [])

    py_spy = original["metadata"].get("annotations", {}).get("expiry.io/stack-dumps") == "py-spy"
    if not py_spy:
        assert level_of(result) == level_of(original), (level_of(original), level_of(result))
