"""Where the pods are in a manifest: a Pod itself, or the pod templates of a workload.

Used by ``expiry-operator inject`` to preview what admission would make of the pods a workload
creates. Kinds without a known pod template pass through unchanged, as with ``istioctl kube-inject``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

_TEMPLATE = ("spec", "template")
_TEMPLATE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (_TEMPLATE,),
    "StatefulSet": (_TEMPLATE,),
    "DaemonSet": (_TEMPLATE,),
    "ReplicaSet": (_TEMPLATE,),
    "ReplicationController": (_TEMPLATE,),
    "Job": (_TEMPLATE,),
    "CronJob": (("spec", "jobTemplate", "spec", "template"),),
}


@dataclasses.dataclass
class PodSlot:
    """A pod (or pod template) inside a manifest, with a way to put the admitted version back."""

    where: str  # e.g. "PyTorchJob/mnist spec.pytorchReplicaSpecs.Worker.template"
    holder: dict[str, Any]  # the dict that holds the template under ``key`` (the manifest itself for a Pod)
    key: str | None

    def as_pod(self) -> dict[str, Any]:
        if self.key is None:
            return self.holder
        template = self.holder[self.key]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": template.get("metadata") or {},
            "spec": template["spec"],
        }

    def put(self, pod: dict[str, Any]) -> None:
        if self.key is None:
            self.holder.clear()
            self.holder.update(pod)
        else:
            self.holder[self.key] = {"metadata": pod["metadata"], "spec": pod["spec"]}


def pod_slots(manifest: dict[str, Any]) -> Iterator[PodSlot]:
    """The pods of ``manifest``; what is not where a pod template belongs (of any type) is no slot."""
    kind = manifest.get("kind")
    name = f"{kind}/{_at(manifest, 'metadata', 'name') or ''}"
    if kind == "Pod":
        yield PodSlot(where=name, holder=manifest, key=None)
    for path in _TEMPLATE_PATHS.get(str(kind), ()):
        yield from _slot_at(manifest, path, name)
    if kind == "PyTorchJob":  # Kubeflow training-operator: one template per replica type
        replicas = _at(manifest, "spec", "pytorchReplicaSpecs")
        for replica in sorted(replicas, key=str) if isinstance(replicas, dict) else ():
            yield from _slot_at(manifest, ("spec", "pytorchReplicaSpecs", replica, "template"), name)
    if kind == "JobSet":  # jobset.x-k8s.io: each replicated job holds a Job template
        jobs = _at(manifest, "spec", "replicatedJobs")
        for index, job in enumerate(jobs if isinstance(jobs, list) else ()):
            yield from _slot_at(job, ("template", "spec", "template"), f"{name} spec.replicatedJobs[{index}]")


def _at(root: object, *path: str) -> Any:
    """``root[path[0]][path[1]]...``, or None where the path leaves the objects."""
    value: Any = root
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _slot_at(root: object, path: tuple[str, ...], name: str) -> Iterator[PodSlot]:
    holder = _at(root, *path[:-1])
    template = _at(holder, path[-1])
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        yield PodSlot(where=f"{name} {'.'.join(path)}", holder=holder, key=path[-1])
