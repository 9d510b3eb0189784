"""The chart's life cycle on the real API server, with the real helm: `helm test`, `helm upgrade
--reuse-values` from the previous chart (from git history), and `helm uninstall` leaving no webhook
configuration behind (a dangling one would send every opted-in pod to an operator that is gone)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import yaml

from expiry import names
from tests.cluster.conftest import Cluster, restricted_pod
from tests.support import cluster as local_cluster
from tests.support.kube import wait_for

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_CHART_COMMIT = "ece828b"  # the chart as first released (the 0.1.0 that landed on 2026-11-25)
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return local_cluster.helm(cluster.kubeconfig, *args, check=False)


def previous_chart(into: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", PREVIOUS_CHART_COMMIT, "charts/expiry"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "charts/expiry"


def test_helm_test_passes(cluster: Cluster) -> None:
    result = helm(
        cluster, "test", local_cluster.RELEASE, "--namespace", local_cluster.NAMESPACE, "--timeout", "3m"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Phase:          Succeeded" in result.stdout


def test_upgrade_from_the_previous_chart_then_uninstall(cluster: Cluster, tmp_path: Path) -> None:
    old = previous_chart(tmp_path)
    release, namespace = "prev", "expiry-prev"
    old_values = yaml.safe_load((old / "values.yaml").read_text())
    sets = ["--set", "operator.replicas=1"]
    if "pdb" in old_values:
        sets += ["--set", "pdb.enabled=false"]
    installed = helm(
        cluster,
        "install",
        release,
        str(old),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "4m",
        *sets,
    )
    assert installed.returncode == 0, installed.stderr
    try:
        upgraded = helm(
            cluster,
            "upgrade",
            release,
            str(REPO / "charts/expiry"),
            "--namespace",
            namespace,
            "--reuse-values",
            # A second release in one cluster: the session's release owns the cluster-scoped CRD.
            "--set",
            "crds.install=false",
            "--wait",
            "--timeout",
            "4m",
        )
        assert upgraded.returncode == 0, upgraded.stderr
        # The upgraded release's webhook admits pods (through its own Service and certificate).
        probe_ns = cluster.namespace("upgraded")
        pod = cluster.kube.create(
            f"/api/v1/namespaces/{probe_ns}/pods",
            restricted_pod("probe", {names.ENABLED_ANNOTATION: "true"}),
            dryRun="All",
        )
        assert any(
            c["name"] == names.SIDECAR_CONTAINER
            for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
        )
        assert cluster.kube.exists(f"{WEBHOOKS}/{release}-expiry")
    finally:
        uninstalled = helm(
            cluster, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "3m"
        )
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert not cluster.kube.exists(f"{WEBHOOKS}/{release}-expiry")
    selector = f"app.kubernetes.io/instance={release}"
    for path in (
        WEBHOOKS,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    ):
        assert cluster.kube.items(path, labelSelector=selector) == [], path
    wait_for(
        lambda: not cluster.kube.items(f"/api/v1/namespaces/{namespace}/pods") or None,
        60,
        "the old release's pods gone",
    )
