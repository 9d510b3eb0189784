"""RBAC as the chart grants it, judged by the real API server's authorizer (SubjectAccessReview): the
operator's and the sidecar's ServiceAccounts may do what they do, and nothing more. That what they do
really succeeds under those accounts is shown by the running cluster itself: the operator pods hold the
Lease and serve the webhook with their TokenRequest tokens (below), the sidecars write the Events and the
condition in test_job_failure_policy.py."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import JOBS_NAMESPACE, NAMESPACE, Cluster
from tests.support.kube import ApiError

OPERATOR = f"system:serviceaccount:{NAMESPACE}:expiry"
SIDECAR = f"system:serviceaccount:{JOBS_NAMESPACE}:default"
OTHER_SIDECAR = "system:serviceaccount:default:default"  # a namespace without the chart's bindings

ALLOWED = [
    (OPERATOR, "list", "pods", "", "", ""),
    (OPERATOR, "watch", "pods", "", "", ""),
    (OPERATOR, "watch", "events", "events.k8s.io", "", ""),
    (OPERATOR, "get", "jobs", "batch", JOBS_NAMESPACE, ""),
    (OPERATOR, "create", "events", "", JOBS_NAMESPACE, ""),
    (OPERATOR, "update", "leases", "coordination.k8s.io", NAMESPACE, "expiry"),
    (SIDECAR, "create", "events", "events.k8s.io", JOBS_NAMESPACE, ""),
    (SIDECAR, "patch", "pods/status", "", JOBS_NAMESPACE, ""),
]
DENIED = [
    (OPERATOR, "get", "secrets", "", NAMESPACE, ""),
    (OPERATOR, "list", "secrets", "", "", ""),
    (OPERATOR, "patch", "pods", "", JOBS_NAMESPACE, ""),
    (OPERATOR, "create", "pods", "", JOBS_NAMESPACE, ""),
    (OPERATOR, "update", "leases", "coordination.k8s.io", NAMESPACE, "someone-elses-lease"),
    (OPERATOR, "update", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", "", ""),
    (SIDECAR, "patch", "pods", "", JOBS_NAMESPACE, ""),
    (SIDECAR, "get", "secrets", "", JOBS_NAMESPACE, ""),
    (SIDECAR, "patch", "pods/status", "", "default", ""),
    (SIDECAR, "create", "events", "events.k8s.io", "default", ""),
    (OTHER_SIDECAR, "patch", "pods/status", "", "default", ""),
]


Access = tuple[str, str, str, str, str, str]
"""(user, verb, resource[/subresource], API group, namespace, name)"""


def review(cluster: Cluster, access: Access) -> bool:
    user, verb, resource, group, namespace, name = access
    resource, _, subresource = resource.partition("/")
    return cluster.kube.can(
        verb, resource, group=group, namespace=namespace, subresource=subresource, user=user, name=name
    )


@pytest.mark.parametrize("access", ALLOWED, ids=lambda a: "-".join(filter(None, a[1:5])))
def test_what_the_chart_grants(cluster: Cluster, access: Access) -> None:
    assert review(cluster, access)


@pytest.mark.parametrize("access", DENIED, ids=lambda a: "-".join(filter(None, a[1:5])))
def test_nothing_more(cluster: Cluster, access: Access) -> None:
    assert not review(cluster, access)


def test_the_operator_token_is_refused_what_it_is_not_granted(cluster: Cluster) -> None:
    """The same answer from the authorizer on a real request with the operator's own token."""
    as_operator = cluster.kube.with_token(cluster.kube.token(NAMESPACE, "expiry"))
    assert as_operator.items(f"/api/v1/namespaces/{JOBS_NAMESPACE}/pods") is not None
    with pytest.raises(ApiError) as refused:
        as_operator.get(f"/api/v1/namespaces/{NAMESPACE}/secrets")
    assert refused.value.status == 403


def test_the_operator_pods_run_as_the_chart_service_account_and_hold_the_lease(cluster: Cluster) -> None:
    lease = cluster.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/expiry")
    holders = {p["metadata"]["name"] for p in cluster.operator_pods()}
    assert lease["spec"]["holderIdentity"] in holders
    for pod in cluster.operator_pods():
        assert pod["spec"]["serviceAccountName"] == "expiry"
