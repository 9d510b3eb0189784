"""The Job controller's podFailurePolicy, for real: the manifests of examples/failure-policies, their pods
injected by the webhook, bound by the scheduler, run by the node (tests/support/kubelet.py: the pod's
images, one PID namespace), the trainer killed by the sidecar, which marks the pod with
``expiry.io/WorkerHung`` first through the API server under the pod's own ServiceAccount; then the real
kube-controller-manager decides. An exit 137 without the condition (the trainer SIGKILLed from outside,
as the kernel's OOM killer does) takes the other branch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import yaml

from expiry import names
from tests.cluster.conftest import JOBS_NAMESPACE, Cluster
from tests.support.hostprocs import pid_of
from tests.support.kube import Obj, wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples/failure-policies"
VERSION = str(yaml.safe_load((REPO / "charts/expiry/Chart.yaml").read_text())["appVersion"])
TRAINER_IMAGE = f"localhost/expiry-test-trainer:{VERSION}"
SLEEPER = ["python", "-c", "import time; print('training', flush=True); time.sleep(3600)"]


def job_from_example(example: str, name: str, command: list[str] | None = None) -> Obj:
    """The example Job, with the test trainer image (its fourth step hangs past a 2 s deadline) and the
    security context the namespace's "restricted" Pod Security level asks for."""
    job: Obj = yaml.safe_load((EXAMPLES / example).read_text())
    job["metadata"] = {"name": name, "namespace": JOBS_NAMESPACE}
    pod = job["spec"]["template"]["spec"]
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    trainer = pod["containers"][0]
    trainer.pop("resources", None)
    trainer["image"] = TRAINER_IMAGE
    trainer.pop("command", None)
    if command:
        trainer["command"] = command
    trainer["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return job


def run_job(cluster: Cluster, job: Obj) -> str:
    cluster.kube.create(f"/apis/batch/v1/namespaces/{JOBS_NAMESPACE}/jobs", job)
    return str(job["metadata"]["name"])


def pods_of(cluster: Cluster, job: str) -> list[Obj]:
    return cluster.kube.items(f"/api/v1/namespaces/{JOBS_NAMESPACE}/pods", labelSelector=f"job-name={job}")


def job_condition(cluster: Cluster, job: str, kind: str) -> Obj | None:
    status = cluster.kube.get(f"/apis/batch/v1/namespaces/{JOBS_NAMESPACE}/jobs/{job}").get("status", {})
    return next(
        (c for c in status.get("conditions", []) if c["type"] == kind and c["status"] == "True"), None
    )


def condition(pod: Obj, kind: str) -> Obj | None:
    return next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def trainer_exit(pod: Obj) -> int | None:
    for status in pod.get("status", {}).get("containerStatuses", []):
        if status["name"] == "trainer" and "terminated" in status.get("state", {}):
            return int(status["state"]["terminated"]["exitCode"])
    return None


def delete_job(cluster: Cluster, job: str) -> None:
    cluster.kube.delete(
        f"/apis/batch/v1/namespaces/{JOBS_NAMESPACE}/jobs/{job}", propagationPolicy="Background"
    )


def events_for(cluster: Cluster, kind: str, name: str, reason: str) -> list[Obj]:
    return [
        e
        for e in cluster.kube.items(f"/apis/events.k8s.io/v1/namespaces/{JOBS_NAMESPACE}/events")
        if e.get("reason") == reason
        and e.get("regarding", {}).get("kind") == kind
        and e.get("regarding", {}).get("name") == name
    ]


def test_a_hang_kill_takes_the_hang_branch_of_the_real_job_controller(cluster: Cluster) -> None:
    job = run_job(cluster, job_from_example("job-fail-on-hang.yaml", "hang-fails-job"))
    try:
        failed = wait_for(lambda: job_condition(cluster, job, "Failed"), 120, "the Job failed")
        assert failed["reason"] == "PodFailurePolicy", failed
        assert "expiry.io/WorkerHung" in failed["message"] or "rule at index 0" in failed["message"], failed
        [pod] = pods_of(cluster, job)
        assert pod["status"]["phase"] == "Failed"
        assert pod["metadata"]["labels"][names.INJECTED_LABEL] == "true"
        assert trainer_exit(pod) == 128 + signal.SIGKILL
        hung = condition(pod, "expiry.io/WorkerHung")
        assert hung is not None and hung["status"] == "True" and hung["reason"] == "DeadlineExceeded", hung
        assert "scope /app/train.py#" in hung["message"] or "/app/train.py#" in hung["message"], hung
        # The sidecar's kill Event, written under the pod's own ServiceAccount, and the leader's report.
        killed = wait_for(
            lambda: events_for(cluster, "Pod", pod["metadata"]["name"], names.KILLED_REASON),
            30,
            "the WorkerKilled Event",
        )
        assert killed[0]["reportingController"] == names.KILL_EVENT_CONTROLLER
        reports = wait_for(
            lambda: events_for(cluster, "Job", job, "HangDetected"), 60, "HangDetected on the Job"
        )
        assert len(reports) == 1
    finally:
        delete_job(cluster, job)


def test_an_exit_137_without_the_condition_takes_the_other_branch(cluster: Cluster) -> None:
    """job-ignore-hangs: a hang is ignored, anything else fails the Job. An OOM-like SIGKILL of the trainer
    (from outside, no condition) must fail it."""
    job = run_job(cluster, job_from_example("job-ignore-hangs.yaml", "oom-fails-job", SLEEPER))
    try:
        pod = wait_for(
            lambda: next((p for p in pods_of(cluster, job) if trainer_running(p)), None),
            120,
            "the trainer running",
        )
        pid = wait_for(lambda: trainer_pid(pod["metadata"]["name"]), 30, "the trainer's process")
        os.kill(pid, signal.SIGKILL)
        failed = wait_for(lambda: job_condition(cluster, job, "Failed"), 60, "the Job failed")
        assert failed["reason"] == "PodFailurePolicy", failed
        [pod] = pods_of(cluster, job)
        assert trainer_exit(pod) == 128 + signal.SIGKILL
        assert condition(pod, "expiry.io/WorkerHung") is None
    finally:
        delete_job(cluster, job)


def test_a_hang_under_job_ignore_hangs_is_retried_and_not_counted(cluster: Cluster) -> None:
    job = run_job(cluster, job_from_example("job-ignore-hangs.yaml", "hang-is-ignored"))
    try:

        def hung_and_replaced() -> bool:
            pods = pods_of(cluster, job)
            hung = [
                p
                for p in pods
                if p.get("status", {}).get("phase") == "Failed"
                and (condition(p, "expiry.io/WorkerHung") or {}).get("status") == "True"
            ]
            return bool(hung) and len(pods) >= 2

        wait_for(hung_and_replaced, 120, "a hung pod and its replacement")
        status = cluster.kube.get(f"/apis/batch/v1/namespaces/{JOBS_NAMESPACE}/jobs/{job}")["status"]
        assert status.get("failed", 0) == 0, status
        assert job_condition(cluster, job, "Failed") is None
    finally:
        delete_job(cluster, job)


# The first worker hangs and is killed by the sidecar at its deadline; the shell goes on, as torchrun
# restarts a worker; the successor completes a block; then the container dies as an OOM kill would: 137.
RECOVERS_THEN_OOM = [
    "sh",
    "-c",
    "python -c 'from expiry import expires; import threading\n"
    "with expires(after=2): threading.Event().wait()' || true;"
    " python -c 'from expiry import expires; import time\nwith expires(after=30): time.sleep(0.2)';"
    " sleep 3; kill -9 $$",
]


def test_a_recovered_hang_then_an_exit_137_counts_as_a_failure_not_a_hang(cluster: Cluster) -> None:
    """job-ignore-hangs: the condition goes back to "False" once a successor completes a block, so the
    later exit 137 takes the FailJob branch instead of being ignored as a hang."""
    job = run_job(cluster, job_from_example("job-ignore-hangs.yaml", "recovered-then-oom", RECOVERS_THEN_OOM))
    try:
        failed = wait_for(lambda: job_condition(cluster, job, "Failed"), 120, "the Job failed")
        assert failed["reason"] == "PodFailurePolicy", failed
        [pod] = pods_of(cluster, job)
        assert trainer_exit(pod) == 128 + signal.SIGKILL
        hung = condition(pod, "expiry.io/WorkerHung")
        assert hung is not None and hung["status"] == "False" and hung["reason"] == "WorkersRecovered", hung
    finally:
        delete_job(cluster, job)


def trainer_running(pod: Obj) -> bool:
    return any(
        s["name"] == "trainer" and "running" in s.get("state", {})
        for s in pod.get("status", {}).get("containerStatuses", [])
    )


def trainer_pid(pod_name: str) -> int | None:
    """The host pid of the pod's trainer: the process whose HOSTNAME is the pod's and runs the sleeper."""
    return pid_of(f"HOSTNAME={pod_name}".encode(), b"time.sleep(3600)")


__all__: list[Any] = []
