"""Which DeadlineProfile a pod's sidecar starts from and writes to: one per workload. No I/O.

The workload is the one the hang report groups kills by (owners.py: TrainJob, JobSet, Kubeflow
training job, Job, else the pod's controller). The profile is named after it (``<kind>-<name>``,
lower case) in the pod's namespace and owned by it when its uid is known, so Kubernetes' garbage
collector deletes the profile with the workload: nothing has to run for it, and a workload
created again under the same name (another uid) starts afresh, as a new experiment should. A pod
with no workload (standing alone) gets no profile: no later pod would read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from expiry_operator.owners import workload_of

MAX_NAME = 253


@dataclasses.dataclass(frozen=True)
class DeadlineProfileRef:
    name: str
    owner: str | None
    """The sidecar's --profile-owner (JSON); None when the workload's uid is not known at admission."""


def profile_for(pod: Mapping[str, Any]) -> DeadlineProfileRef | None:
    workload = workload_of(pod)
    if workload.kind == "Pod" or not workload.name or not workload.kind:
        return None
    name = f"{workload.kind.lower()}-{workload.name}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME - 11].rstrip('-.')}-{digest}"
    owner = None
    if workload.uid:
        owner = json.dumps(
            {
                "apiVersion": workload.api_version,
                "kind": workload.kind,
                "name": workload.name,
                "uid": workload.uid,
            },
            separators=(",", ":"),
        )
    return DeadlineProfileRef(name, owner)
