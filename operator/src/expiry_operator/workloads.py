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
    kind = manifest.get("kind")
    name = f"{kind}/{(manifest.get('metadata') or {}).get('name', '')}"
    if kind == "Pod":
        yield PodSlot(where=name, holder=manifest, key=None)
    for path in _TEMPLATE_PATHS.get(str(kind), ()):
        yield from _slot_at(manifest, path, name)
    if kind == "PyTorchJob":  # Kubeflow training-operator: one template per replica type
        replicas = (manifest.get("spec") or {}).get("pytorchReplicaSpecs") or {}
        for replica in sorted(replicas):
            yield from _slot_at(manifest, ("spec", "pytorchReplicaSpecs", replica, "template"), name)
    if kind == "JobSet":  # jobset.x-k8s.io: each replicated job holds a Job template
        for index, job in enumerate((manifest.get("spec") or {}).get("replicatedJobs") or []):
            yield from _slot_at(job, ("template", "spec", "template"), f"{name} spec.replicatedJobs[{index}]")


def _slot_at(root: dict[str, Any], path: tuple[str, ...], name: str) -> Iterator[PodSlot]:
    holder: Any = root
    for key in path[:-1]:
        holder = holder.get(key) if isinstance(holder, dict) else None
    template = holder.get(path[-1]) if isinstance(holder, dict) else None
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        yield PodSlot(where=f"{name} {'.'.join(path)}", holder=holder, key=path[-1])
