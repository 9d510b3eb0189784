"""Which workload a pod belongs to, from its labels and owner references. No I/O.

The outermost workload that a well-known label names wins (TrainJob over the JobSet it runs, JobSet
over its Jobs, a Kubeflow training job, a Job); the pod's controller reference supplies the kind and
uid when it is that same object. A pod with none of those labels belongs to its controller (a
ReplicaSet, a StatefulSet, ...), or stands alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """What groups kills: the object (a Job deleted and created again under its name is another)."""
        return (self.namespace, self.api_version.split("/")[0], self.kind, self.name, self.uid)

    def reference(self) -> dict[str, str]:
        """An ObjectReference, as an Event's involvedObject."""
        reference = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        }
        if self.uid:
            reference["uid"] = self.uid
        return reference


@dataclasses.dataclass(frozen=True)
class _Label:
    label: str
    api_version: str
    kind: str
    plural: str
    uid_label: str = ""


WORKLOAD_LABELS = (
    _Label("trainer.kubeflow.org/trainjob-name", "trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs"),
    _Label(
        "jobset.sigs.k8s.io/jobset-name",
        "jobset.x-k8s.io/v1alpha2",
        "JobSet",
        "jobsets",
        uid_label="jobset.sigs.k8s.io/jobset-uid",
    ),
    _Label("training.kubeflow.org/job-name", "kubeflow.org/v1", "PyTorchJob", "pytorchjobs"),
    _Label(
        "batch.kubernetes.io/job-name",
        "batch/v1",
        "Job",
        "jobs",
        uid_label="batch.kubernetes.io/controller-uid",
    ),
    _Label("job-name", "batch/v1", "Job", "jobs", uid_label="controller-uid"),
)
PLURALS = {(label.api_version.split("/")[0], label.kind): label.plural for label in WORKLOAD_LABELS}


def workload_of(pod: Mapping[str, Any]) -> Workload:
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    labels: Mapping[str, str] = metadata.get("labels") or {}
    controller = _controller(metadata.get("ownerReferences") or [])
    for known in WORKLOAD_LABELS:
        name = labels.get(known.label)
        if not name:
            continue
        if controller is not None and _same_family(controller, known):
            return _from_reference(controller, namespace)
        uid = labels.get(known.uid_label, "") if known.uid_label else ""
        return Workload(known.api_version, known.kind, namespace, name, uid)
    if controller is not None:
        return _from_reference(controller, namespace)
    return Workload("v1", "Pod", namespace, str(metadata.get("name") or ""), str(metadata.get("uid") or ""))


def api_path(workload: Workload) -> str | None:
    """The object's URL path on the API server, for the kinds this module names; None otherwise."""
    group, _, version = workload.api_version.rpartition("/")
    plural = PLURALS.get((workload.api_version.split("/")[0], workload.kind))
    if workload.kind == "Pod":
        plural = "pods"
    if plural is None:
        return None
    root = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{root}/namespaces/{workload.namespace}/{plural}/{workload.name}"


def _controller(references: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for reference in references:
        if reference.get("controller"):
            return reference
    return references[0] if references else None


def _same_family(reference: Mapping[str, Any], known: _Label) -> bool:
    group = str(reference.get("apiVersion", "")).split("/")[0]
    if known.kind == "PyTorchJob":  # the label is shared by every Kubeflow training job kind
        return group == "kubeflow.org"
    return group == known.api_version.split("/")[0] and reference.get("kind") == known.kind


def _from_reference(reference: Mapping[str, Any], namespace: str) -> Workload:
    return Workload(
        str(reference.get("apiVersion") or ""),
        str(reference.get("kind") or ""),
        namespace,
        str(reference.get("name") or ""),
        str(reference.get("uid") or ""),
    )
