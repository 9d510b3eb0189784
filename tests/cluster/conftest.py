"""The real control plane under tests/cluster: one per test run (tests/support/cluster.py), shared by
every test here and the xdist workers, one test at a time. CI fails, never skips, when the cluster
cannot start: ``up`` raises with the failing component's log."""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import cluster as local_cluster
from tests.support.kube import ApiError, Kube, Obj, wait_for

NAMESPACE = local_cluster.NAMESPACE
TRAINER_IMAGE_PREFIX = "localhost/expiry-test-trainer"
_names = itertools.count()

# What `scripts/cluster up` installs is the chart's defaults plus these: the condition on, and the sidecar
# RBAC bound to the default ServiceAccount of the namespace the Job tests use.
JOBS_NAMESPACE = "ml"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The quickstart uninstalls the session's release to install the chart as the page says (and puts
    # it back after): last, so the others do not wait for that.
    items.sort(key=lambda item: Path(item.path).name == "test_quickstart.py")


@dataclass
class Cluster:
    kubeconfig: Path
    kube: Kube

    def namespace(self, prefix: str, labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{next(_names)}-{uuid.uuid4().hex[:5]}"
        self.kube.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
        )
        wait_for(
            lambda: self.kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            30,
            f"the default ServiceAccount of {name}",
        )
        return name

    def operator_pods(self) -> list[Obj]:
        return self.kube.items(
            f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector="app.kubernetes.io/name=expiry"
        )

    def ready_operator_pods(self) -> list[Obj]:
        return [p for p in self.operator_pods() if _ready(p) and not p["metadata"].get("deletionTimestamp")]

    def settled_metric(self, name: str, **labels: str) -> float:
        """``operator_metric`` once two reads 0.5 s apart agree (a counter is raised as an answer is
        sent, so a read right after a request may come before the last increment)."""
        last = self.operator_metric(name, **labels)
        while True:
            time.sleep(0.5)
            now = self.operator_metric(name, **labels)
            if now == last:
                return now
            last = now

    def operator_metric(self, name: str, **labels: str) -> float:
        """The sum over every ready operator pod of one sample, scraped over HTTP at the pod's address."""
        total = 0.0
        for pod in self.ready_operator_pods():
            text = requests.get(f"http://{pod['status']['podIP']}:9465/metrics", timeout=5).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                        total += sample.value
        return total


def _ready(pod: Obj) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The one cluster of the test run, shared by the xdist workers: started by the first that needs
    it, stopped by the last to finish with it (unless it ran before the tests: then left running)."""
    kubeconfig = local_cluster.attach(owner="pytest")
    try:
        kube = Kube.from_kubeconfig(kubeconfig)
        pods = Cluster(kubeconfig, kube).ready_operator_pods
        wait_for(lambda: len(pods()) >= 1, 120, "a ready operator pod")
        yield Cluster(kubeconfig, kube)
    finally:
        local_cluster.detach(owner="pytest")


@pytest.fixture(autouse=True)
def one_at_a_time(cluster: Cluster) -> Iterator[None]:
    """Cluster tests run one at a time across workers (xdist's loadgroup does not group them under this
    pytest): a rolling restart or the quickstart's reinstall would disturb another's admissions."""
    with local_cluster.exclusive("tests"):
        yield
    if exited := local_cluster.exited():  # the test that was running when a component stopped, and why
        pytest.fail(f"a cluster component stopped during this test\n{exited}", pytrace=False)


@pytest.fixture
def kubeconfig(cluster: Cluster) -> Iterator[Path]:
    """The cluster as a first-time user finds it: without the session's release and namespace (both
    are put back afterwards)."""
    uninstall = ("uninstall", local_cluster.RELEASE, "-n", NAMESPACE, "--wait", "--ignore-not-found")
    local_cluster.helm(cluster.kubeconfig, *uninstall)
    gone = f"/api/v1/namespaces/{JOBS_NAMESPACE}"
    with contextlib.suppress(ApiError):
        cluster.kube.delete(gone)
    wait_for(lambda: not cluster.kube.exists(gone), 120, "namespace ml gone")
    yield cluster.kubeconfig
    local_cluster.helm(cluster.kubeconfig, *uninstall)
    with contextlib.suppress(ApiError):
        cluster.kube.delete(gone)
    wait_for(lambda: not cluster.kube.exists(gone), 120, "namespace ml gone")
    local_cluster.install_release(cluster.kube, cluster.kubeconfig, [])


def restricted_pod(
    name: str, annotations: dict[str, str], image: str = "busybox:stable", **extra: Any
) -> Obj:
    """A pod the "restricted" Pod Security Standard admits."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "trainer",
                    "image": image,
                    "command": ["sleep", "3600"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **extra,
                }
            ],
        },
    }


__all__ = ["JOBS_NAMESPACE", "ApiError", "Cluster", "restricted_pod"]
