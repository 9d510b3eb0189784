"""Realistic pods the operator meets, each with what admission must make of it."""

from __future__ import annotations

import copy
from typing import Any

ENABLED = {"expiry.io/enabled": "true"}
RESTRICTED_CONTAINER_SC = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(
    name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None, **metadata: Any
) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": "training",
        "annotations": {**ENABLED, **(annotations or {})},
        **metadata,
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def trainer(name: str = "trainer", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "nvcr.io/nvidia/pytorch:24.05-py3",
        "command": ["torchrun", "train.py"],
        **fields,
    }


PYTORCHJOB_WORKER = pod(
    "mnist-worker-0",
    {
        "restartPolicy": "OnFailure",
        "containers": [
            trainer(
                "pytorch",
                env=[
                    {"name": "MASTER_ADDR", "value": "mnist-master-0"},
                    {"name": "MASTER_PORT", "value": "23456"},
                    {"name": "WORLD_SIZE", "value": "4"},
                    {"name": "RANK", "value": "1"},
                ],
                ports=[{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}],
                resources={"limits": {"nvidia.com/gpu": "8"}},
                volumeMounts=[{"name": "dshm", "mountPath": "/dev/shm"}],
            )
        ],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}],
    },
    labels={
        "training.kubeflow.org/job-name": "mnist",
        "training.kubeflow.org/replica-type": "worker",
        "training.kubeflow.org/replica-index": "0",
    },
)

JOBSET_POD = pod(
    "llm-workers-0-3-abcde",
    {
        "restartPolicy": "Never",
        "hostname": "llm-workers-0-3",
        "subdomain": "llm",
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "containers": [trainer(resources={"limits": {"nvidia.com/gpu": "4"}, "requests": {"cpu": "16"}})],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    {"batch.kubernetes.io/job-completion-index": "3", "jobset.sigs.k8s.io/jobset-name": "llm"},
    labels={"jobset.sigs.k8s.io/jobset-name": "llm", "batch.kubernetes.io/job-name": "llm-workers-0"},
)

VOLCANO_POD = pod(
    "ddp-worker-1",
    {
        "schedulerName": "volcano",
        "restartPolicy": "OnFailure",
        "containers": [trainer(securityContext={"runAsUser": 2000})],
    },
    {"scheduling.k8s.io/group-name": "ddp", "volcano.sh/task-spec": "worker"},
    labels={"volcano.sh/job-name": "ddp"},
)

RESTRICTED_POD = pod(
    "restricted",
    {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            trainer(securityContext={"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}})
        ],
    },
)

RESTRICTED_CONTAINER_LEVEL = pod(
    "restricted-per-container",
    {
        "restartPolicy": "Never",
        "containers": [
            trainer(securityContext={**RESTRICTED_CONTAINER_SC, "runAsUser": 1001, "runAsGroup": 3000}),
            trainer("evaluator", securityContext={**RESTRICTED_CONTAINER_SC, "runAsUser": 1001}),
        ],
    },
)

MULTI_CONTAINER = pod(
    "with-log-shipper",
    {
        "securityContext": {"runAsUser": 1000},
        "containers": [
            trainer(),
            {"name": "fluent-bit", "image": "fluent/fluent-bit:3.0", "securityContext": {"runAsUser": 0}},
        ],
    },
    {"expiry.io/containers": "trainer"},
)

INIT_AND_NATIVE_SIDECAR = pod(
    "with-init",
    {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": 1000},
        "initContainers": [
            {"name": "fetch-data", "image": "amazon/aws-cli", "args": ["s3", "sync", "s3://data", "/data"]},
            {"name": "proxy", "image": "envoyproxy/envoy:v1.30", "restartPolicy": "Always"},
        ],
        "containers": [trainer()],
    },
)

GPU_GUARANTEED = pod(
    "guaranteed",
    {
        "securityContext": {"runAsUser": 1000},
        "containers": [
            trainer(
                resources={
                    "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
                    "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
                }
            )
        ],
    },
)

ROOT_IMAGE_DEFAULT = pod("image-user", {"containers": [trainer()]})

USER_VOLUME_AND_PORT_CLASH = pod(
    "clashes",
    {
        "securityContext": {"runAsUser": 1000},
        "containers": [
            trainer(ports=[{"containerPort": 9464}], volumeMounts=[{"name": "expiry-run", "mountPath": "/x"}])
        ],
        "volumes": [{"name": "expiry-run", "emptyDir": {}}],
    },
)

TIMER_ENV_ALREADY_SET = pod(
    "env-preset",
    {
        "securityContext": {"runAsUser": 1000},
        "containers": [
            trainer(env=[{"name": "TORCHELASTIC_TIMER_FILE", "value": "/var/run/expiry/timer.fifo"}])
        ],
    },
)

INJECTED_CASES = {
    "pytorchjob-worker": PYTORCHJOB_WORKER,
    "jobset": JOBSET_POD,
    "volcano": VOLCANO_POD,
    "restricted": RESTRICTED_POD,
    "restricted-per-container": RESTRICTED_CONTAINER_LEVEL,
    "multi-container": MULTI_CONTAINER,
    "init-and-native-sidecar": INIT_AND_NATIVE_SIDECAR,
    "gpu-guaranteed": GPU_GUARANTEED,
    "image-user": ROOT_IMAGE_DEFAULT,
    "clashes": USER_VOLUME_AND_PORT_CLASH,
    "env-preset": TIMER_ENV_ALREADY_SET,
    "torch-file-timer-off": pod(  # only "1" starts torch's server (torchrun's own test)
        "ddp-0",
        {"containers": [trainer(env=[{"name": "TORCHELASTIC_ENABLE_FILE_TIMER", "value": "0"}])]},
    ),
    "stack-dumps-client": pod(
        "dumps", copy.deepcopy(RESTRICTED_POD["spec"]), {"expiry.io/stack-dumps": "client"}
    ),
    "options": pod(
        "options",
        copy.deepcopy(JOBSET_POD["spec"]),
        {
            "expiry.io/kill-signal": "SIGTERM",
            "expiry.io/escalate-after": "2.5",
            "expiry.io/sidecar-cpu": "50m",
            "expiry.io/sidecar-memory": "256Mi",
            "expiry.io/events": "false",
            "expiry.io/mode": "observe",
            "expiry.io/deadlines": "adaptive",
            "expiry.io/adaptive-factor": "3",
            "expiry.io/adaptive-min-samples": "50",
            "expiry.io/adaptive-floor": "2.5",
        },
    ),
}

SKIPPED_CASES = {
    "not-annotated": {
        **copy.deepcopy(RESTRICTED_POD),
        "metadata": {"name": "plain", "namespace": "training"},
    },
    "annotated-false": pod("off", copy.deepcopy(RESTRICTED_POD["spec"]), {"expiry.io/enabled": "false"}),
}


def _with(base: dict[str, Any], annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    result = copy.deepcopy(base)
    result["metadata"]["annotations"].update(annotations or {})
    result["spec"].update(spec)
    return result


# name -> (pod, words the denial message must contain)
DENIED_CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "host-pid": (_with(JOBSET_POD, hostPID=True), ("hostPID",)),
    "no-shared-pid-namespace": (_with(JOBSET_POD, shareProcessNamespace=False), ("shareProcessNamespace",)),
    "bad-signal": (
        _with(JOBSET_POD, {"expiry.io/kill-signal": "SIGFOO"}),
        ("expiry.io/kill-signal", "SIGTERM"),
    ),
    "bad-escalate": (
        _with(JOBSET_POD, {"expiry.io/escalate-after": "-3"}),
        ("expiry.io/escalate-after", "non-negative"),
    ),
    "bad-cpu": (_with(JOBSET_POD, {"expiry.io/sidecar-cpu": "fast"}), ("expiry.io/sidecar-cpu", "quantity")),
    "bad-memory": (
        _with(JOBSET_POD, {"expiry.io/sidecar-memory": "64MB"}),
        ("expiry.io/sidecar-memory", "64Mi"),
    ),
    "bad-stack-dumps": (
        _with(JOBSET_POD, {"expiry.io/stack-dumps": "yes"}),
        ("expiry.io/stack-dumps", "py-spy"),
    ),
    "bad-native": (
        _with(JOBSET_POD, {"expiry.io/native-sidecar": "maybe"}),
        ("expiry.io/native-sidecar", "auto"),
    ),
    "bad-events": (_with(JOBSET_POD, {"expiry.io/events": "ture"}), ("expiry.io/events", "true | True")),
    "bad-pod-condition": (
        _with(JOBSET_POD, {"expiry.io/pod-condition": " on"}),
        ("expiry.io/pod-condition", "false | False"),
    ),
    "bad-mode": (_with(JOBSET_POD, {"expiry.io/mode": "audit"}), ("expiry.io/mode", "enforce | observe")),
    "bad-deadlines": (
        _with(JOBSET_POD, {"expiry.io/deadlines": "learned"}),
        ("expiry.io/deadlines", "requested | adaptive"),
    ),
    "bad-adaptive-factor": (
        _with(JOBSET_POD, {"expiry.io/adaptive-factor": "0"}),
        ("expiry.io/adaptive-factor", "> 0"),
    ),
    "non-finite-adaptive-floor": (
        _with(JOBSET_POD, {"expiry.io/adaptive-floor": "inf"}),
        ("expiry.io/adaptive-floor", "finite"),
    ),
    "bad-adaptive-min-samples": (
        _with(JOBSET_POD, {"expiry.io/adaptive-min-samples": "0.5"}),
        ("expiry.io/adaptive-min-samples", "whole number"),
    ),
    "unknown-container": (
        _with(JOBSET_POD, {"expiry.io/containers": "nope"}),
        ("expiry.io/containers", "trainer"),
    ),
    "unknown-annotation": (_with(JOBSET_POD, {"expiry.io/kill-sigal": "SIGTERM"}), ("expiry.io/kill-sigal",)),
    "uids-disagree": (
        _with(
            JOBSET_POD,
            containers=[
                trainer(securityContext={"runAsUser": 1}),
                trainer("b", securityContext={"runAsUser": 2}),
            ],
        ),
        ("different users", "expiry.io/containers"),
    ),
    "non-root-unknown-uid": (
        _with(ROOT_IMAGE_DEFAULT, securityContext={"runAsNonRoot": True}),
        ("runAsUser", "runAsNonRoot"),
    ),
    "reserved-container-name": (
        _with(JOBSET_POD, containers=[trainer(), trainer("expiry-sidecar")]),
        ("expiry-sidecar", "reserved"),
    ),
    "timer-env-elsewhere": (
        _with(JOBSET_POD, containers=[trainer(env=[{"name": "TORCHELASTIC_TIMER_FILE", "value": "/tmp/f"}])]),
        ("TORCHELASTIC_TIMER_FILE",),
    ),
    "torch-file-timer-server": (
        _with(
            PYTORCHJOB_WORKER,
            containers=[trainer(env=[{"name": "TORCHELASTIC_ENABLE_FILE_TIMER", "value": "1"}])],
        ),
        ("container trainer", "TORCHELASTIC_ENABLE_FILE_TIMER=1", "FileTimerServer", "Remove the variable"),
    ),
    "mount-at-run-dir": (
        _with(
            JOBSET_POD,
            containers=[trainer(volumeMounts=[{"name": "mine", "mountPath": "/var/run/expiry"}])],
            volumes=[{"name": "mine", "emptyDir": {}}],
        ),
        ("/var/run/expiry",),
    ),
    "bad-record": (_with(JOBSET_POD, {"expiry.io/injection": "{not json"}), ("expiry.io/injection",)),
}
