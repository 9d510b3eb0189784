"""Property tests of the injection core with generated pods: valid, idempotent, same PSS level."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from expiry_operator.injection import Denied, Injected, admit
from expiry_operator.settings import SidecarSettings
from tests.operator.injection_checks import check_injected
from tests.operator.pss_checker import level_of

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)
UIDS = st.none() | st.sampled_from([0, 1000, 65532])
RESTRICTED_BITS = st.fixed_dictionaries(
    {},
    optional={
        "allowPrivilegeEscalation": st.booleans(),
        "capabilities": st.sampled_from(
            [{"drop": ["ALL"]}, {"add": ["NET_ADMIN"]}, {"drop": ["ALL"], "add": ["KILL"]}]
        ),
        "runAsNonRoot": st.booleans(),
        "seccompProfile": st.sampled_from([{"type": "RuntimeDefault"}, {"type": "Unconfined"}]),
        "privileged": st.booleans(),
    },
)
POD_SECURITY = st.fixed_dictionaries(
    {},
    optional={
        "runAsNonRoot": st.booleans(),
        "seccompProfile": st.sampled_from([{"type": "RuntimeDefault"}, {"type": "Unconfined"}]),
    },
)


@st.composite
def security_context(draw: st.DrawFn, uid: int | None) -> dict[str, Any]:
    context = draw(RESTRICTED_BITS)
    if uid is not None:
        context["runAsUser"] = uid
    return context


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(
        st.lists(NAMES, min_size=1, max_size=3, unique=True).filter(lambda n: "expiry-sidecar" not in n)
    )
    container_uid = draw(UIDS)  # one uid for all trainers when set per container, or none
    containers = []
    for name in names:
        container: dict[str, Any] = {"name": name, "image": "busybox"}
        if draw(st.booleans()):
            container["securityContext"] = draw(security_context(container_uid))
        if draw(st.booleans()):
            container["ports"] = [{"containerPort": draw(st.sampled_from([8080, 9464, 9465]))}]
        if draw(st.booleans()):
            container["env"] = [{"name": "FOO", "value": "bar"}]
        if draw(st.booleans()):
            container["resources"] = draw(
                st.sampled_from(
                    [
                        {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                        {"limits": {"nvidia.com/gpu": "1"}},
                    ]
                )
            )
        containers.append(container)
    spec: dict[str, Any] = {"containers": containers}
    if draw(st.booleans()):
        spec["securityContext"] = draw(POD_SECURITY)
        pod_uid = draw(UIDS)
        if pod_uid is not None:
            spec["securityContext"]["runAsUser"] = pod_uid
    if draw(st.booleans()):
        spec["restartPolicy"] = draw(st.sampled_from(["Always", "OnFailure", "Never"]))
    if draw(st.booleans()):
        spec["volumes"] = [{"name": draw(st.sampled_from(["data", "expiry-run"])), "emptyDir": {}}]
    if draw(st.booleans()):
        spec["hostNetwork"] = draw(st.booleans())
    annotations = {"expiry.io/enabled": "true"}
    annotations.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "expiry.io/kill-signal": st.sampled_from(["SIGTERM", "SIGKILL", "INT"]),
                    "expiry.io/escalate-after": st.sampled_from(["0", "5", "1.5"]),
                    "expiry.io/sidecar-memory": st.sampled_from(["32Mi", "1Gi"]),
                    "expiry.io/stack-dumps": st.sampled_from(["off", "client"]),
                    "expiry.io/events": st.sampled_from(["true", "false"]),
                },
            )
        )
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": spec,
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=pods(), native=st.booleans())
def test_generated_pods_are_injected_validly_idempotently_and_at_the_same_pss_level(
    pod: dict[str, Any], native: bool
) -> None:
    outcome = admit(pod, SidecarSettings(), native_sidecars_supported=native)
    event(type(outcome).__name__)
    if isinstance(outcome, Denied):
        assert outcome.message.startswith("expiry: ") and outcome.code in (400, 403)
        return
    assert isinstance(outcome, Injected) and outcome.changed
    check_injected(pod, outcome.pod)  # schema (1.27 or 1.29, and the newest), completeness, PSS level
    again = admit(outcome.pod, SidecarSettings(), native_sidecars_supported=native)
    assert isinstance(again, Injected) and not again.changed and again.pod == outcome.pod
    assert level_of(outcome.pod) == level_of(pod)
