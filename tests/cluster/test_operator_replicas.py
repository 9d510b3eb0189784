"""The operator's two replicas on the real API server: one Lease holder, failover when it is SIGKILLed
(within the lease duration plus a renew period), and a rolling restart during which every opted-in pod is
still injected (the stopping replica drains: it stops being ready and keeps answering admission)."""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time

from expiry import names
from tests.cluster.conftest import NAMESPACE, Cluster, restricted_pod
from tests.support.hostprocs import pid_of
from tests.support.kube import STRATEGIC, ApiError, Obj, wait_for

LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/expiry"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/expiry"
LEASE_DURATION = 15.0  # the operator's default (leadership.LeaseTiming)


def operator_pid(pod_name: str) -> int | None:
    return pid_of(f"EXPIRY_POD_NAME={pod_name}".encode(), b"expiry-operator")


def holder(cluster: Cluster) -> str:
    return str(cluster.kube.get(LEASE)["spec"].get("holderIdentity") or "")


def two_ready(cluster: Cluster) -> list[Obj]:
    def ready() -> list[Obj] | None:
        pods = cluster.ready_operator_pods()
        return pods if len(pods) == 2 else None

    return wait_for(ready, 180, "two ready operator pods")


def test_one_lease_holder_and_failover_on_sigkill(cluster: Cluster) -> None:
    pods = two_ready(cluster)
    leader = wait_for(lambda: holder(cluster) or None, 60, "a Lease holder")
    assert leader in {p["metadata"]["name"] for p in pods}
    assert cluster.operator_metric("expiry_operator_leading") == 1  # exactly one of the two leads

    pid = wait_for(lambda: operator_pid(leader), 10, "the leader's process")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    successor = wait_for(
        lambda: ((h := holder(cluster)) != leader and h) or None,
        3 * LEASE_DURATION,
        "another replica holding the Lease",
    )
    took = time.monotonic() - killed_at
    assert successor in {p["metadata"]["name"] for p in pods}
    # A follower takes over one lease duration after the last renewal it saw, then on its next retry.
    assert took < LEASE_DURATION + 2 * 2 + 5, f"failover took {took:.1f} s"
    print(f"failover took {took:.1f} s")

    # The killed replica's pod is deleted, as a kubelet restarting it would end the same way: two again.
    cluster.kube.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{leader}", gracePeriodSeconds=0)
    two_ready(cluster)


def test_a_rolling_restart_loses_no_admission(cluster: Cluster) -> None:
    two_ready(cluster)
    namespace = cluster.namespace("rollout")
    results: list[bool] = []
    errors: list[str] = []
    stop = threading.Event()

    def create_pods() -> None:
        index = 0
        while not stop.is_set():
            pod = restricted_pod(f"during-{index}", {names.ENABLED_ANNOTATION: "true"})
            try:
                made = cluster.kube.create(f"/api/v1/namespaces/{namespace}/pods", pod, dryRun="All")
            except ApiError as error:
                errors.append(str(error))
            else:
                containers = [*made["spec"].get("initContainers", []), *made["spec"]["containers"]]
                results.append(any(c["name"] == names.SIDECAR_CONTAINER for c in containers))
            index += 1
            time.sleep(0.05)

    creator = threading.Thread(target=create_pods)
    creator.start()
    try:
        old = {p["metadata"]["name"] for p in cluster.operator_pods()}
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        cluster.kube.patch(
            DEPLOYMENT,
            {
                "spec": {
                    "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}
                }
            },
            STRATEGIC,
        )

        def rolled() -> bool:
            pods = cluster.operator_pods()
            names_now = {p["metadata"]["name"] for p in pods}
            return not (names_now & old) and len(cluster.ready_operator_pods()) == 2

        wait_for(rolled, 240, "the rollout to replace both replicas")
    finally:
        stop.set()
        creator.join(30)
    assert not errors, errors[:3]
    assert results and all(results), f"{results.count(False)} of {len(results)} pods were not injected"
    print(f"{len(results)} pods created during the rollout, all injected")
