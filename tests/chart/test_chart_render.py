"""Every scenario lints and renders, and every rendered object is valid for the Kubernetes it targets.

Built-in kinds are validated (strictly: unknown fields fail) against the Kubernetes OpenAPI schemas of
kubernetes-validate; the CRD-based kinds (cert-manager, Prometheus Operator) against the fields their
CRDs require.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jsonschema
import kubernetes_validate
import pytest

if TYPE_CHECKING:
    from conftest import Helm, Rendered, Scenario

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_STRING = {"type": "string", "minLength": 1}
_SELECTOR = {"type": "object", "minProperties": 1}
_ISSUER_REF = _obj(["name"], name=_STRING, kind={"enum": ["Issuer", "ClusterIssuer"]})

# What the CRDs (cert-manager v1, Prometheus Operator v1) require of the specs the chart renders.
CRD_SPECS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): _obj(
        ["secretName", "issuerRef"],
        secretName=_STRING,
        issuerRef=_ISSUER_REF,
        dnsNames={"type": "array", "items": _STRING},
        isCA={"type": "boolean"},
    ),
    ("cert-manager.io/v1", "Issuer"): {
        "type": "object",
        "minProperties": 1,
        "properties": {"selfSigned": {"type": "object"}, "ca": _obj(["secretName"], secretName=_STRING)},
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): _obj(
        ["selector", "podMetricsEndpoints"],
        selector=_SELECTOR,
        podMetricsEndpoints={"type": "array", "minItems": 1, "items": _obj(["port"], port=_STRING)},
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _obj(
        ["selector", "endpoints"],
        selector=_SELECTOR,
        endpoints={"type": "array", "minItems": 1, "items": _obj(["port"], port=_STRING)},
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _obj(
        ["groups"],
        groups={
            "type": "array",
            "minItems": 1,
            "items": _obj(
                ["name", "rules"],
                name=_STRING,
                rules={
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["expr"],
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    },
                },
            ),
        },
    ),
}


def test_lints(helm: Helm, scenario: Scenario) -> None:
    result = helm.lint(scenario.values, kube_version=scenario.kube_version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_objects_are_valid_kubernetes(rendered: Rendered, scenario: Scenario) -> None:
    for obj in rendered.everything:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        crd_spec = CRD_SPECS.get((obj["apiVersion"], obj["kind"]))
        if crd_spec is not None:
            jsonschema.validate(obj, _obj(["metadata", "spec"], spec=crd_spec))
            continue
        try:
            kubernetes_validate.validate(obj, scenario.kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{what} is not valid for Kubernetes {scenario.kube_version}: {error.message}")


def test_objects_carry_the_standard_labels(rendered: Rendered) -> None:
    for obj in rendered.everything:
        labels = obj["metadata"].get("labels", {})
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_namespaced_objects_go_to_the_release_namespace(
    rendered: Rendered, helm: Helm, scenario: Scenario
) -> None:
    """...or to namespaceOverride; dashboards may go to Grafana's namespace."""
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "CustomResourceDefinition",
    }
    namespace = scenario.values.get("namespaceOverride") or helm.namespace
    dashboards = scenario.values.get("monitoring", {}).get("dashboards", {}).get("namespace") or namespace
    for obj in rendered.objects:
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        elif obj["kind"] == "ConfigMap" and "-dashboard-" in obj["metadata"]["name"]:
            assert obj["metadata"]["namespace"] == dashboards
        elif obj["kind"] != "RoleBinding":  # sidecarEvents.bindings go to the training namespaces
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [key, *strings(item)]]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("mode", ["selfSigned", "certManager"])
def test_namespace_override_leaves_no_trace_of_the_release_namespace(helm: Helm, mode: str) -> None:
    """The Service the webhook calls, the certificate's names, RBAC subjects, the namespaces the webhook
    never sees, cert-manager's CA injection: all follow namespaceOverride."""
    values = {
        "namespaceOverride": "ml-platform-ops",
        "tls": {"mode": mode},
        "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    }
    rendered = helm.render(values, api_versions=(*helm.cert_manager_apis, *helm.monitoring_apis))
    leaks = [s for obj in rendered.everything for s in strings(obj) if helm.namespace in s]
    assert leaks == []
    webhook = rendered.one("MutatingWebhookConfiguration")["webhooks"][0]
    assert webhook["clientConfig"]["service"]["namespace"] == "ml-platform-ops"
    excluded = webhook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert "ml-platform-ops" in excluded
    if mode == "selfSigned":
        annotations = rendered.one("Secret")["metadata"]["annotations"]
        assert "expiry.ml-platform-ops.svc" in annotations["expiry.io/tls-dns-names"].split(",")


def test_common_labels_reach_every_object(helm: Helm) -> None:
    rendered = helm.render({"commonLabels": {"team": "ml-platform", "app.kubernetes.io/name": "hijack"}})
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert labels["team"] == "ml-platform"
        assert labels["app.kubernetes.io/name"] == "expiry", "commonLabels must not override selector labels"


def test_names_follow_overrides(helm: Helm) -> None:
    rendered = helm.render({"fullnameOverride": "ttl"})
    assert rendered.one("Deployment")["metadata"]["name"] == "ttl"
    webhook = rendered.one("MutatingWebhookConfiguration")
    assert (
        webhook["webhooks"][0]["clientConfig"]["service"]["name"]
        == rendered.one("Service")["metadata"]["name"]
    )


def test_kube_version_below_the_charts_floor_is_refused(helm: Helm) -> None:
    result = helm.template(kube_version="1.24.0", check=False)
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "1.25" in result.stderr, result.stderr
