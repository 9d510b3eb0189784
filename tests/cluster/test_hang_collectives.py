"""The hang report by collective, on the real API server: real torchrun and gloo in two pods of one Job.

An Indexed Job of two pods, injected by the chart's operator (``expiry.io/stack-dumps: client``, so
the trainers get ``EXPIRY_DUMP_DIR`` and ``TORCH_FR_BUFFER_SIZE``), scheduled to the node the kubelet
stand-in runs (tests/support/kubelet.py). Each pod runs torchrun with 2 workers of
``examples/torchrun_trainer.py``; the two torchruns meet in a c10d rendezvous on a TCPStore this test
serves on the node's bridge, and the four ranks all-reduce over gloo between the pods' addresses.
Rank 3 hangs before a step's all-reduce; the other three wait in it. Each pod's sidecar asks its
workers' debug channels, kills them, and writes its kill Event (``expiry.io/kills``, with each
worker's collective and the node) through the API server under the pod's ServiceAccount; the
operator's leader reads the Events of both pods and writes one ``HangDetected`` on the Job.

torch is not in the test trainer image (1.2 GB, and the stand-in base image has no libstdc++): the
trainer container mounts this machine's development venv (torch 2.13) and its libstdc++ read only
(hostPath), so the namespace is not a restricted one. The code that runs is torch's own.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from expiry import names
from tests.cluster.conftest import Cluster
from tests.support import cluster as local_cluster
from tests.support import nodenet
from tests.support.kube import Obj, wait_for
from tests.support.sidecar import free_port

pytestmark = pytest.mark.torch

torch_distributed = pytest.importorskip("torch.distributed")

REPO = Path(__file__).resolve().parents[2]
VERSION = str(yaml.safe_load((REPO / "charts/expiry/Chart.yaml").read_text())["appVersion"])
TRAINER_IMAGE = f"localhost/expiry-test-trainer:{VERSION}"
SITE_PACKAGES = Path(torch_distributed.__file__).resolve().parents[2]
NODE = "expiry-node"
JOB = "llm"
HUNG_RANK = 3


@pytest.fixture
def host_libs(tmp_path: Path) -> Path:
    """This machine's libstdc++ (torch needs it; the image's Debian base leaves it out)."""
    found = next(Path("/usr/lib/x86_64-linux-gnu").glob("libstdc++.so.6*"))
    where = tmp_path / "lib"
    where.mkdir()
    shutil.copy(found.resolve(), where / "libstdc++.so.6")
    where.chmod(0o755)
    tmp_path.chmod(0o755)
    return where


@pytest.fixture
def store() -> Iterator[int]:
    """The rendezvous store both torchruns meet at, on the node's bridge (the pods' gateway)."""
    port = free_port()
    served = torch_distributed.TCPStore(nodenet.GATEWAY, port, is_master=True, wait_for_workers=False)
    yield port
    del served


def job(port: int, host_libs: Path) -> Obj:
    torchrun = (
        f"exec python -m torch.distributed.run --nnodes 2 --nproc-per-node 2 --max-restarts 0"
        f" --monitor-interval 1 --rdzv-backend c10d --rdzv-endpoint {nodenet.GATEWAY}:{port}"
        f' --rdzv-id {JOB} --rdzv-conf is_host=0 --local-addr "$POD_IP"'
        f" /examples/torchrun_trainer.py --deadline 3 --steps 3 --checkpoint-dir /checkpoints"
        f" --wait-on-peer-failure --hang-rank {HUNG_RANK}"
    )
    mounts = [
        ("torch", str(SITE_PACKAGES)),
        ("hostlib", str(host_libs)),
        ("examples", str(REPO / "examples")),
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": JOB},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "annotations": {names.ENABLED_ANNOTATION: "true", "expiry.io/stack-dumps": "client"}
                },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubernetes.io/hostname": NODE},
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                    "containers": [
                        {
                            "name": "pytorch",
                            "image": TRAINER_IMAGE,
                            "command": ["sh", "-c", torchrun],
                            # No capability left: the sidecar (same uid, none either) may read the
                            # workers' RANK from /proc/PID/environ, as with any runtime's non-root user.
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "env": [
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {"name": "PYTHONPATH", "value": "/torch"},
                                {"name": "LD_LIBRARY_PATH", "value": "/hostlib"},
                                {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"},
                                {"name": "HOME", "value": "/tmp"},
                            ],
                            "volumeMounts": [
                                *(
                                    {"name": name, "mountPath": f"/{name}", "readOnly": True}
                                    for name, _ in mounts
                                ),
                                {"name": "checkpoints", "mountPath": "/checkpoints"},
                            ],
                        }
                    ],
                    "volumes": [
                        *({"name": name, "hostPath": {"path": path}} for name, path in mounts),
                        {"name": "checkpoints", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def events(cluster: Cluster, namespace: str, reason: str) -> list[Obj]:
    return [
        e
        for e in cluster.kube.items(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")
        if e.get("reason") == reason
    ]


def bind_sidecar_roles(cluster: Cluster, namespace: str) -> None:
    """What the chart's ``sidecarEvents.bindings`` and ``podCondition.bindings`` do for a namespace: its
    pods' sidecars may write Events and the pod condition (the session's release has the condition on)."""
    roles = [
        r["metadata"]["name"]
        for r in cluster.kube.items("/apis/rbac.authorization.k8s.io/v1/clusterroles")
        if r["metadata"]["name"].endswith(("-sidecar-events", "-sidecar-pod-condition"))
    ]
    assert len(roles) == 2, roles
    for role in roles:
        cluster.kube.create(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
            },
        )


def diagnosis(cluster: Cluster, namespace: str) -> str:
    """The namespace's Events, its pods' phases and the tails of their containers' logs (the kubelet
    stand-in keeps them), and the operator's."""
    lines = [
        f"event {e.get('reason')} on {e.get('regarding', {}).get('name')}: {e['metadata'].get('annotations')}"
        for e in cluster.kube.items(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")
    ]
    pods = [
        *cluster.kube.items(f"/api/v1/namespaces/{namespace}/pods"),
        *cluster.operator_pods(),
    ]
    for pod in pods:
        lines.append(f"pod {pod['metadata']['name']}: {pod.get('status', {}).get('phase')}")
        for log in sorted((local_cluster.STATE / "pods" / pod["metadata"]["uid"]).glob("*.log")):
            lines += [f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-25:]]
    return "\n".join(lines)


def kills(event: Obj) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(event["metadata"]["annotations"][names.KILLS_ANNOTATION])
    return listed


@pytest.mark.timeout(900)
def test_the_operator_names_the_rank_behind_by_collective_with_its_node(
    cluster: Cluster, store: int, host_libs: Path
) -> None:
    namespace = cluster.namespace("hang")
    bind_sidecar_roles(cluster, namespace)
    cluster.kube.create(f"/apis/batch/v1/namespaces/{namespace}/jobs", job(store, host_libs))
    try:

        def killed() -> dict[int, tuple[str, dict[str, Any]]] | None:
            """Rank -> (pod, its kill) once both sidecars' kill Events list all four ranks."""
            found = {
                kill["rank"]: (event["regarding"]["name"], kill)
                for event in events(cluster, namespace, names.KILLED_REASON)
                for kill in kills(event)
            }
            return found if sorted(found) == [0, 1, 2, 3] else None

        try:
            workers = wait_for(killed, 420, "the kill Events of both pods' sidecars, four ranks")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{diagnosis(cluster, namespace)}") from None
        culprit_pod, culprit = workers[HUNG_RANK]
        assert culprit["node"] == NODE, culprit
        assert culprit["collective"] is not None and culprit["collective"]["state"] == "completed", culprit
        waiting = [k["collective"] for rank, (_, k) in workers.items() if rank != HUNG_RANK]
        assert {(c["op"], c["state"]) for c in waiting} <= {
            ("all_reduce", "started"),
            ("all_reduce", "scheduled"),
        }

        (report,) = wait_for(
            lambda: events(cluster, namespace, "HangDetected"), 120, "HangDetected on the Job"
        )
        assert (report["regarding"]["kind"], report["regarding"]["name"]) == ("Job", JOB)
        message = report["note"] if "note" in report else report["message"]
        seq = waiting[0]["seq"]
        assert re.search(
            rf"rank {HUNG_RANK} \(pod {culprit_pod}, node {NODE}\) never entered all_reduce #{seq} of"
            r" \S+; 3 ranks wait in it\.",
            message,
        ), message
        incident = json.loads(report["metadata"]["annotations"]["expiry.io/incident"])
        (behind,) = incident["collectives"]["behind"]
        assert (behind["rank"], behind["pod"], behind["node"]) == (HUNG_RANK, culprit_pod, NODE), incident
        assert incident["pods"] == 2 and incident["workers"] == 4, incident
    finally:
        cluster.kube.delete(
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{JOB}", propagationPolicy="Background"
        )
