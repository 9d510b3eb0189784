"""The MutatingWebhookConfiguration sends exactly the opted-in pods to the operator.

The API server's decision is re-enacted from the rendered object: the label selectors are evaluated as the
API server evaluates them, and the matchConditions are real CEL evaluated by cel-python against an
AdmissionReview-shaped request (`object`, `oldObject`, `request`), as the API server binds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import celpy
import pytest

from expiry import names
from expiry_operator.opt_in import OFF, ON, wants_expiry

if TYPE_CHECKING:
    from conftest import Helm, Rendered

WEBHOOK_PATH = "/expiry-inject"  # kopf serves handler id "expiry-inject" there (contracts.md)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels AND every matchExpression); absent or empty matches all."""
    if not selector:
        return True
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def admission_request(pod: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The `request` of an AdmissionReview for creating `pod`, as the API server sends it."""
    return {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:job-controller", "groups": []},
        "object": pod,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }


def conditions_admit(webhook: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    """All matchConditions true (the API server ANDs them); none means admitted."""
    env = celpy.Environment()
    activation = {
        "object": celpy.json_to_cel(request["object"]),
        "oldObject": celpy.json_to_cel(request["oldObject"]),
        "request": celpy.json_to_cel({k: v for k, v in request.items() if k not in ("object", "oldObject")}),
    }
    for condition in webhook.get("matchConditions", []):
        result = env.program(env.compile(condition["expression"])).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), f"{condition['name']} gave {result!r}, not a bool"
        if not result:
            return False
    return True


def reaches_webhook(
    webhook: Mapping[str, Any], pod: Mapping[str, Any], namespace_labels: dict[str, str]
) -> bool:
    """Would the API server call this webhook for creating `pod` in a namespace with these labels?"""
    rules = webhook["rules"]
    assert any(
        "CREATE" in r["operations"] and "pods" in r["resources"] and r["apiGroups"] == [""] for r in rules
    )
    namespace = namespace_labels["kubernetes.io/metadata.name"]
    return (
        selector_matches(webhook.get("namespaceSelector"), namespace_labels)
        and selector_matches(webhook.get("objectSelector"), pod["metadata"].get("labels", {}))
        and conditions_admit(webhook, admission_request(pod, namespace))
    )


def pod(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"generateName": "train-", "namespace": "ml"}
    if annotations is not None:
        metadata["annotations"] = annotations
    if labels is not None:
        metadata["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "trainer", "image": "pytorch/pytorch:2.3.0"}]},
    }


def ns(name: str, **labels: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name, **labels}


OPTED_IN = {names.ENABLED_ANNOTATION: "true"}


def only_webhook(rendered: Rendered) -> dict[str, Any]:
    webhooks: list[dict[str, Any]] = rendered.one("MutatingWebhookConfiguration")["webhooks"]
    assert len(webhooks) == 1
    return webhooks[0]


@pytest.fixture(scope="module")
def new_cluster(helm: Helm) -> dict[str, Any]:
    return only_webhook(helm.render())


@pytest.fixture(scope="module")
def old_cluster(helm: Helm) -> dict[str, Any]:
    return only_webhook(helm.render(kube_version=helm.old_kube))


def test_new_clusters_filter_with_cel_on_the_annotation(new_cluster: dict[str, Any]) -> None:
    assert "objectSelector" not in new_cluster
    assert new_cluster["matchConditions"]
    assert reaches_webhook(new_cluster, pod(OPTED_IN), ns("ml"))


@pytest.mark.parametrize(
    "skipped",
    [
        pod(),
        pod({}),
        pod({names.ENABLED_ANNOTATION: "false"}),
        pod({"other.io/enabled": "true"}),
        pod({}, labels={names.ENABLED_ANNOTATION: "true"}),
    ],
    ids=["no-annotations", "empty-annotations", "false", "other-key", "label-only"],
)
def test_new_clusters_skip_pods_that_did_not_opt_in(
    new_cluster: dict[str, Any], skipped: dict[str, Any]
) -> None:
    assert not reaches_webhook(new_cluster, skipped, ns("ml"))


SPELLINGS = (*ON, *OFF, "ture", " true", "enabled", "", "TRUE ")


@pytest.mark.parametrize("webhook_fixture", ["new_cluster", "old_cluster"])
def test_the_webhook_sees_exactly_the_pods_the_operator_injects_or_denies(
    request: pytest.FixtureRequest, webhook_fixture: str
) -> None:
    """One opt-in rule: the chart's filter (CEL, or the label before 1.30) agrees with opt_in.wants_expiry."""
    webhook = request.getfixturevalue(webhook_fixture)
    for value in SPELLINGS:
        annotations = {names.ENABLED_ANNOTATION: value}
        candidate = pod(annotations, labels=annotations if webhook_fixture == "old_cluster" else None)
        assert reaches_webhook(webhook, candidate, ns("ml")) is wants_expiry(annotations), value


def test_old_clusters_filter_with_the_opt_in_label(old_cluster: dict[str, Any]) -> None:
    assert "matchConditions" not in old_cluster
    both = pod(OPTED_IN, labels={names.ENABLED_ANNOTATION: "true"})
    assert reaches_webhook(old_cluster, both, ns("ml"))
    assert not reaches_webhook(old_cluster, pod(OPTED_IN), ns("ml"))
    assert not reaches_webhook(old_cluster, pod(labels={"app": "train"}), ns("ml"))


@pytest.mark.parametrize(("kube", "expected"), [("1.29.5", "objectSelector"), ("1.30.0", "matchConditions")])
def test_auto_filter_switches_at_1_30(helm: Helm, kube: str, expected: str) -> None:
    assert expected in only_webhook(helm.render(kube_version=kube))


@pytest.mark.parametrize("chosen", ["objectSelector", "matchConditions"])
def test_filter_can_be_chosen(helm: Helm, chosen: str) -> None:
    webhook = only_webhook(helm.render({"webhook": {"filter": chosen}}, kube_version="1.30.0"))
    assert chosen in webhook
    assert {"objectSelector", "matchConditions"} - {chosen} & webhook.keys() == set()


@pytest.mark.parametrize("webhook_fixture", ["new_cluster", "old_cluster"])
def test_operator_and_system_namespaces_never_reach_the_webhook(
    request: pytest.FixtureRequest, helm: Helm, webhook_fixture: str
) -> None:
    webhook = request.getfixturevalue(webhook_fixture)
    everything = pod(OPTED_IN, labels={names.ENABLED_ANNOTATION: "true"})
    assert not reaches_webhook(webhook, everything, ns(helm.namespace))
    assert not reaches_webhook(webhook, everything, ns("kube-system"))
    assert reaches_webhook(webhook, everything, ns("default"))


def test_extra_namespace_rules_apply(helm: Helm) -> None:
    values = {
        "webhook": {
            "excludeNamespaces": ["monitoring"],
            "namespaceSelectorExpressions": [{"key": "team", "operator": "In", "values": ["ml"]}],
        }
    }
    webhook = only_webhook(helm.render(values))
    assert reaches_webhook(webhook, pod(OPTED_IN), ns("research", team="ml"))
    assert not reaches_webhook(webhook, pod(OPTED_IN), ns("research", team="web"))
    assert not reaches_webhook(webhook, pod(OPTED_IN), ns("monitoring", team="ml"))
    assert not reaches_webhook(webhook, pod(OPTED_IN), ns(helm.namespace, team="ml"))


def test_webhook_calls_the_operators_handler_through_its_service(defaults: Rendered) -> None:
    webhook = only_webhook(defaults)
    service_ref = webhook["clientConfig"]["service"]
    assert service_ref["path"] == WEBHOOK_PATH
    service = defaults.one("Service", service_ref["name"])
    assert service["metadata"]["namespace"] == service_ref["namespace"]
    port = next(p for p in service["spec"]["ports"] if p["port"] == service_ref["port"])
    deployment = defaults.one("Deployment")
    assert selector_matches(
        {"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"]
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    config = defaults.one("ConfigMap")["data"]["operator.yaml"]
    assert f"port: {target['containerPort']}" in config


def test_webhook_is_safe_by_default(new_cluster: dict[str, Any]) -> None:
    assert new_cluster["sideEffects"] == "None"
    assert new_cluster["failurePolicy"] == "Ignore"
    assert 1 <= new_cluster["timeoutSeconds"] <= 10
    assert new_cluster["admissionReviewVersions"] == ["v1"]
    assert new_cluster["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]


def test_failure_policy_and_timeout_come_from_values(helm: Helm) -> None:
    webhook = only_webhook(helm.render({"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 3}}))
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Fail", 3)
