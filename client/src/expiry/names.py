"""Names and paths that the client, the sidecar, the operator and the chart agree on.

They are contracts (see docs/architecture.md): change one only together with every part that uses it.
"""

from typing import Final

TIMER_FILE_ENV: Final = "TORCHELASTIC_TIMER_FILE"
"""torch's own variable, so code written for torchrun's timer finds the FIFO unchanged."""

TORCH_FILE_TIMER_ENV: Final = "TORCHELASTIC_ENABLE_FILE_TIMER"
"""``1`` makes torchrun's agent run torch's own FileTimerServer on ``TORCHELASTIC_TIMER_FILE``: a
second server on the sidecar's FIFO. The operator denies it, ``expiry-sidecar run`` refuses it, and
the sidecar reports a process that does it anyway (see docs/torchrun.md)."""

RUN_DIR: Final = "/var/run/expiry"
FIFO_PATH: Final = f"{RUN_DIR}/timer.fifo"
STATE_PATH: Final = f"{RUN_DIR}/sidecar-state.json"
DUMP_DIR: Final = f"{RUN_DIR}/dumps"
DUMP_DIR_ENV: Final = "EXPIRY_DUMP_DIR"
"""Set in trainers when stack dumps are on: the client then registers a faulthandler dump there."""

FLIGHT_RECORDER_ENV: Final = "TORCH_FR_BUFFER_SIZE"
"""torch's own variable: entries of its flight recorder (0: off). The operator sets it in trainers
with stack dumps on, unless they set it, so the pre-kill dump names each worker's collective."""
FLIGHT_RECORDER_ENTRIES: Final = 2000
"""The value the operator sets, torch 2.13's own default (docs/performance.md: ~7 us a collective)."""

CONTAINER_ENV: Final = "EXPIRY_CONTAINER"
"""Set by the operator in each trainer container to that container's name. The sidecar reads it from a
worker's environment (``/proc/<pid>/environ``, inherited by every process the container starts) when it
first hears from the worker, and keeps what it learns per container and scope."""

POD_NAME_ENV: Final = "EXPIRY_POD_NAME"
POD_NAMESPACE_ENV: Final = "EXPIRY_POD_NAMESPACE"
POD_UID_ENV: Final = "EXPIRY_POD_UID"
"""The sidecar's own pod, from the downward API (metadata.name, .namespace, .uid): where its Events go."""
NODE_NAME_ENV: Final = "EXPIRY_NODE_NAME"
"""The node the sidecar's pod runs on (downward API spec.nodeName): each kill names it, so the hang
report says where the rank behind runs."""
ENV_PREFIX: Final = "EXPIRY_"
"""Every variable above starts with it: the operator refuses extra sidecar env under it (sidecar.env)."""

SIDECAR_CONTAINER: Final = "expiry-sidecar"
# Where the kubelet mounts a pod's service account token, CA and namespace (the sidecar reads it; the
# operator gives the injected sidecar the trainers' mount of it).
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
VOLUME_NAME: Final = "expiry-run"
METRICS_PORT: Final = 9464
METRICS_PORT_NAME: Final = "expiry-metrics"

ANNOTATION_PREFIX: Final = "expiry.io/"
ENABLED_ANNOTATION: Final = "expiry.io/enabled"
STATUS_ANNOTATION: Final = "expiry.io/status"
INJECTED_LABEL: Final = "expiry.io/injected"
INJECTED: Final = "injected"

KILL_EVENT_CONTROLLER: Final = "expiry.io/sidecar"
"""``reportingController`` of the sidecar's Events; the operator's hang report reads those."""
KILLED_REASON: Final = "WorkerKilled"
KILL_FAILED_REASON: Final = "WorkerKillFailed"
OBSERVED_REASON: Final = "WorkerHangObserved"
"""The reasons of kill Events: signal delivered, refused or failed, or observe mode (no signal)."""
KILLS_ANNOTATION: Final = "expiry.io/kills"
"""On a kill Event: the burst's workers as a compact JSON list (docs/sidecar.md has the keys)."""
KILLS_TRUNCATED_ANNOTATION: Final = "expiry.io/kills-truncated"
"""On a kill Event: how many workers the list left out for size (only when any were)."""

BUDGET_SPENT_REASON: Final = "AdaptiveDeadlinesSuspended"
"""The reason of the sidecar's Event when its pod spent the false-kill budget (requested deadlines
from then on)."""

PROFILE_GROUP: Final = "expiry.io"
PROFILE_VERSION: Final = "v1alpha1"
PROFILE_KIND: Final = "DeadlineProfile"
PROFILE_PLURAL: Final = "deadlineprofiles"
"""The DeadlineProfile custom resource: what one workload's sidecars learned (its CRD ships in the
chart, charts/expiry/templates/crd-deadlineprofiles.yaml)."""
