"""Admission through the real kube-apiserver: its webhook call over TLS (the chart's caBundle, the
Service resolved to the operator pods' addresses), its CEL matchConditions and namespaceSelector as the
chart renders them, its PodSecurity admission on the injected pod, and its error answers."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from expiry import names
from tests.cluster.conftest import NAMESPACE, Cluster, restricted_pod
from tests.cluster.test_job_failure_policy import TRAINER_IMAGE, trainer_exit
from tests.support.kube import ApiError, Obj, wait_for

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
BASELINE = {"pod-security.kubernetes.io/enforce": "baseline"}


def create(cluster: Cluster, namespace: str, pod: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    params = {"dryRun": "All"} if dry_run else {}
    return cluster.kube.create(f"/api/v1/namespaces/{namespace}/pods", pod, **params)


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    spec = pod["spec"]
    return next(
        (
            c
            for c in [*spec.get("initContainers", []), *spec["containers"]]
            if c["name"] == names.SIDECAR_CONTAINER
        ),
        None,
    )


@pytest.mark.parametrize("form", ["native", "legacy"])
def test_an_annotated_pod_in_a_restricted_namespace_comes_back_injected(cluster: Cluster, form: str) -> None:
    namespace = cluster.namespace("restricted", RESTRICTED)
    annotations = {
        names.ENABLED_ANNOTATION: "true",
        "expiry.io/native-sidecar": "true" if form == "native" else "false",
    }
    pod = create(cluster, namespace, restricted_pod("train", annotations))

    sidecar = sidecar_of(pod)
    assert sidecar is not None, pod["spec"]
    in_init = sidecar in pod["spec"].get("initContainers", [])
    assert in_init == (form == "native")
    if form == "native":
        assert sidecar["restartPolicy"] == "Always"
    assert pod["spec"]["shareProcessNamespace"] is True
    assert pod["metadata"]["labels"][names.INJECTED_LABEL] == "true"
    trainer = pod["spec"]["containers"][0]
    assert {"name": names.TIMER_FILE_ENV, "value": names.FIFO_PATH} in trainer["env"]
    # Stored as the API server admitted it, after PodSecurity's "restricted" check of the injected pod.
    stored = cluster.kube.get(f"/api/v1/namespaces/{namespace}/pods/train")
    assert sidecar_of(stored) == sidecar


def test_pod_security_still_rejects_what_it_rejected_before(cluster: Cluster) -> None:
    """The webhook makes no pod pass that would fail: a trainer on the host network stays refused."""
    namespace = cluster.namespace("restricted", RESTRICTED)
    pod = restricted_pod("privileged", {names.ENABLED_ANNOTATION: "true"})
    pod["spec"]["hostNetwork"] = True
    with pytest.raises(ApiError) as refused:
        create(cluster, namespace, pod)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in refused.value.message
    assert "hostNetwork" in refused.value.message


def test_a_pod_without_the_annotation_never_reaches_the_webhook(cluster: Cluster) -> None:
    namespace = cluster.namespace("plain")
    before = cluster.settled_metric("expiry_admissions_total")
    for index, given in enumerate(
        [{}, {names.ENABLED_ANNOTATION: "false"}, {names.ENABLED_ANNOTATION: "Off"}]
    ):
        pod = create(cluster, namespace, restricted_pod(f"plain-{index}", given))
        assert sidecar_of(pod) is None
    assert cluster.settled_metric("expiry_admissions_total") == before
    annotated = create(cluster, namespace, restricted_pod("annotated", {names.ENABLED_ANNOTATION: "yes"}))
    assert sidecar_of(annotated) is not None
    # The annotated one was sent (twice: reinvocationPolicy IfNeeded calls again after the API server's
    # own mutations; the second call returns it unchanged).
    assert cluster.operator_metric("expiry_admissions_total") > before


def test_the_operators_own_namespace_is_never_sent(cluster: Cluster) -> None:
    before = cluster.settled_metric("expiry_admissions_total")
    pod = create(cluster, NAMESPACE, restricted_pod("own", {names.ENABLED_ANNOTATION: "true"}), dry_run=True)
    assert sidecar_of(pod) is None
    assert cluster.settled_metric("expiry_admissions_total") == before


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda pod: (
                pod["spec"]["containers"][0]
                .setdefault("env", [])
                .append({"name": names.TORCH_FILE_TIMER_ENV, "value": "1"})
            ),
            f"container trainer sets {names.TORCH_FILE_TIMER_ENV}=1",
        ),
        (
            lambda pod: pod["metadata"]["annotations"].update({names.ENABLED_ANNOTATION: "maybe"}),
            f"annotation {names.ENABLED_ANNOTATION}: 'maybe' is not accepted",
        ),
    ],
    ids=["torch-file-timer", "unknown-spelling"],
)
def test_denials_reach_the_client_with_their_message(cluster: Cluster, change: Any, expected: str) -> None:
    namespace = cluster.namespace("denied")
    pod = restricted_pod("denied", {names.ENABLED_ANNOTATION: "true"})
    change(pod)
    with pytest.raises(ApiError) as denied:
        create(cluster, namespace, pod)
    assert denied.value.status == 400
    assert 'admission webhook "inject.expiry.io" denied the request' in denied.value.message
    assert expected in denied.value.message
    assert not cluster.kube.exists(f"/api/v1/namespaces/{namespace}/pods/denied")


def test_an_injected_pod_is_returned_unchanged_on_reinvocation(cluster: Cluster) -> None:
    """reinvocationPolicy IfNeeded: the API server may call the webhook again; no second sidecar."""
    namespace = cluster.namespace("again")
    pod = create(cluster, namespace, restricted_pod("once", {names.ENABLED_ANNOTATION: "true"}))
    containers = [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    assert [c["name"] for c in containers].count(names.SIDECAR_CONTAINER) == 1
    assert [v["name"] for v in pod["spec"]["volumes"]].count(names.VOLUME_NAME) == 1


def test_a_trainer_running_as_its_image_s_user_is_killed_by_a_root_sidecar_with_only_kill(
    cluster: Cluster,
) -> None:
    """The trainer whose uid is left to its image (no runAsUser anywhere), on the real API server: the webhook
    gives it a root sidecar with only CAP_KILL, the real PodSecurity admission lets that through at the
    "baseline" level, and the node (the pod runner, which applies capabilities as containerd does: no
    ambient ones) runs it, so the sidecar's lone KILL really kills the stuck uid-1000 trainer."""
    namespace = cluster.namespace("baseline", BASELINE)
    pods = f"/api/v1/namespaces/{namespace}/pods"
    pod = cluster.kube.create(
        pods,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "image-user", "annotations": {names.ENABLED_ANNOTATION: "true"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "trainer", "image": TRAINER_IMAGE}],  # USER 1000 in the image
            },
        },
    )
    sidecar = sidecar_of(pod)
    assert sidecar is not None, pod["spec"]
    context = sidecar["securityContext"]
    assert (context["runAsUser"], context["runAsNonRoot"]) == (0, False), context
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["KILL"]}, context

    def finished() -> Obj | None:
        current: Obj = cluster.kube.get(f"{pods}/image-user")
        return current if current.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    done = wait_for(finished, 120, "the image-user pod finished")
    assert trainer_exit(done) == 128 + signal.SIGKILL, done["status"]
