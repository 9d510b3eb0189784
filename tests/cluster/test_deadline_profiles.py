"""The DeadlineProfile resource on the real API server: the chart's CRD accepts exactly what the
sidecar writes (the object built by the sidecar's own ``profile.body``), `kubectl get` shows its printer
columns, the schema refuses a malformed profile, and a profile owned by a Job goes with the Job (the
real garbage collector)."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import pytest

from expiry_sidecar import profile
from expiry_sidecar.blocks import ScopeStats, key
from expiry_sidecar.deadlines import Policy
from tests.cluster.conftest import Cluster
from tests.support.kube import ApiError, Obj, wait_for

KUBECTL = Path(__file__).resolve().parents[2] / ".tools/bin/kubectl"


def learned(*durations: float, requested: float = 600) -> ScopeStats:
    stats = ScopeStats()
    for seconds in durations:
        stats.record(seconds, requested)
    return stats


def sidecar_body(namespace: str, name: str, owner: profile.Owner | None) -> Obj:
    held = learned(0.05, 0.08)
    held.killed(1.2)
    # one entry of a known container, one of a worker whose container the sidecar could not read
    scopes = {key("trainer", "/app/train.py#88"): learned(0.04, 0.06, 0.05), "/app/train.py#120": held}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return profile.body(name, namespace, owner, scopes, Policy(), writer="train-0", now=now)


def test_the_crd_takes_what_the_sidecar_writes_and_kubectl_shows_it(cluster: Cluster) -> None:
    namespace = cluster.namespace("profiles")
    stored = cluster.kube.create(profile.path(namespace), sidecar_body(namespace, "job-train", None))
    assert stored["status"]["scopeCount"] == 2 and stored["status"]["heldScopes"] == 1
    containers = {e["scope"]: e.get("container") for e in stored["status"]["scopes"]}
    assert containers == {"/app/train.py#88": "trainer", "/app/train.py#120": None}

    table = subprocess.run(
        [str(KUBECTL), "get", "deadlineprofiles", "-n", namespace],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert table.splitlines()[0].split()[:6] == ["NAME", "WORKLOAD", "SCOPES", "BLOCKS", "HELD", "LONGEST"]
    assert "job-train" in table
    # The same columns as the API server computes them (what kubectl printed), by name.
    answer = cluster.kube.session.get(
        cluster.kube.server + profile.path(namespace),
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        timeout=30,
    ).json()
    cells = dict(
        zip([c["name"] for c in answer["columnDefinitions"]], answer["rows"][0]["cells"], strict=True)
    )
    assert (cells["Scopes"], cells["Blocks"], cells["Held"], cells["Longest"]) == (2, 5, 1, 0.08)


def test_the_schema_refuses_a_malformed_profile(cluster: Cluster) -> None:
    namespace = cluster.namespace("profiles")
    body = sidecar_body(namespace, "bad", None)
    body["status"]["scopes"][0]["blocks"] = -1
    with pytest.raises(ApiError) as refused:
        cluster.kube.create(profile.path(namespace), body)
    assert refused.value.status == 422
    assert "blocks" in refused.value.message


def test_a_profile_owned_by_its_job_goes_with_the_job(cluster: Cluster) -> None:
    namespace = cluster.namespace("profiles")
    job = cluster.kube.create(
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "train"},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "trainer", "image": "trainer:1"}],
                    }
                },
            },
        },
    )
    owner = profile.Owner("batch/v1", "Job", "train", job["metadata"]["uid"])
    cluster.kube.create(profile.path(namespace), sidecar_body(namespace, "job-train", owner))
    cluster.kube.delete(f"/apis/batch/v1/namespaces/{namespace}/jobs/train", propagationPolicy="Background")
    wait_for(
        lambda: not cluster.kube.exists(profile.path(namespace, "job-train")),
        60,
        "the profile garbage-collected with its Job",
    )
