"""The pod condition (``--pod-condition``): a hang kill Kubernetes can tell from a crash.

Before the signal, the sidecar patches its own pod's status with the condition
``type: expiry.io/WorkerHung, status: "True", reason: DeadlineExceeded`` (message: pid, scope,
deadline), so a Job's ``podFailurePolicy`` (``onPodConditions``) or a JobSet failure policy can treat
a hang kill differently from an OOM kill (both end in exit code 137). The patch is a strategic merge
patch on ``pods/status``: conditions merge by type, so the kubelet's own conditions stay.

The patch is queued on the loop as the kill is ordered (urgent: before any queued Event) and the
kill waits for it, off the loop, at most ``WAIT`` seconds from the order; a slow or absent API
server delays a kill by no more than that. Results are counted in
``expiry_pod_conditions_total{result="patched|failed|timeout"}``; failures are said once per outage
(shared with Events, see :mod:`.apiwriter`). Observe mode and escalations never patch.

The condition says what is true now: once the pod's workers are healthy again it is set back to
``status: "False", reason: WorkersRecovered``. Healthy again means a block armed after the latest
hang kill was ordered has completed, in a worker other than the one killed: a successor (torchrun's
restarted worker, another rank) got through a whole block, so training moves. A timer alone (no kill
for a while) would clear the condition of a pod whose successors hang before their first block, and
a condition cleared too early makes a hang read as an ordinary failure. The patch is queued as
urgent, behind any hang patch already queued, so a later hang is never overwritten by an earlier
recovery; a hang at the end (no block completes after it) leaves the condition "True".
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime

from expiry_sidecar.apiwriter import ApiWriter, PodRef
from expiry_sidecar.kubeclient import Body
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import KillOrder, Listener, signal_name

log = logging.getLogger("expiry.sidecar")

CONDITION_TYPE = "expiry.io/WorkerHung"
REASON = "DeadlineExceeded"
RECOVERED_REASON = "WorkersRecovered"
WAIT = 1.0
"""Longest a kill waits for its condition, from the moment it was ordered."""
WHAT = "patch the pod's condition"
PERMISSION = "patch pods/status"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MAX_FIELD = 200
RESULTS = ("patched", "failed", "timeout")


def condition_patch(order: KillOrder, now: datetime) -> Body:
    """The strategic merge patch for ``pods/status`` that marks the pod as hung."""
    scope = order.scope_id if len(order.scope_id) <= MAX_FIELD else order.scope_id[: MAX_FIELD - 3] + "..."
    deadline = datetime.fromtimestamp(order.deadline_wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    message = (
        f"pid {order.worker.pid} ran past its deadline in scope {scope!r} (deadline {deadline},"
        f" rule {order.rule}); expiry-sidecar sends it {signal_name(order.signal)}"
    )
    return _patch("True", REASON, message, now)


def recovered_patch(killed: int, successor: int, now: datetime) -> Body:
    """The strategic merge patch for ``pods/status`` that says the pod's workers are healthy again."""
    message = (
        f"pid {successor} completed a block started after the hang kill of pid {killed};"
        " the pod's workers are healthy again"
    )
    return _patch("False", RECOVERED_REASON, message, now)


def _patch(status: str, reason: str, message: str, now: datetime) -> Body:
    return {
        "status": {
            "conditions": [
                {
                    "type": CONDITION_TYPE,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ]
        }
    }


def status_path(pod: PodRef) -> str:
    return f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status"


class PodCondition(Listener):
    def __init__(
        self,
        writer: ApiWriter,
        *,
        wait: float = WAIT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.results: Counter[str] = Counter()
        self._writer = writer
        self._wait = wait
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._pending: dict[Worker, Future[Body]] = {}
        self._hang: KillOrder | None = None
        """The latest kill that marked the pod, until a successor completes a block (loop only)."""

    def ordered(self, order: KillOrder) -> None:
        if not order.condition:
            return
        self._hang = order
        patched = self._patch(condition_patch(order, datetime.fromtimestamp(self._wall(), UTC)))
        with self._lock:
            self._pending[order.worker] = patched

    def block_completed(self, pid: int, armed_at: float) -> None:
        hang = self._hang
        if hang is None or pid == hang.worker.pid or armed_at < hang.ordered_at:
            return
        self._hang = None
        body = recovered_patch(hang.worker.pid, pid, datetime.fromtimestamp(self._wall(), UTC))
        self._patch(body).add_done_callback(self._said_recovered)

    def _patch(self, body: Body) -> Future[Body]:
        """Queue a status patch, urgent: patches reach the API server in the order they were decided."""
        pod = self._writer.pod
        return self._writer.submit(
            WHAT,
            PERMISSION,
            lambda client: client.request(
                "PATCH", status_path(pod) if pod else "", body, STRATEGIC_MERGE_PATCH
            ),
            urgent=True,
        )

    @staticmethod
    def _said_recovered(patched: Future[Body]) -> None:
        if patched.exception() is None:  # a failure was said by the writer (once per outage)
            log.info("the pod's workers are healthy again: set condition %s to False", CONDITION_TYPE)

    def slow(self, order: KillOrder) -> bool:
        return order.condition

    def before_kill(self, order: KillOrder) -> None:
        with self._lock:
            patched = self._pending.pop(order.worker, None)
        if patched is None:
            return
        remaining = order.ordered_at + self._wait - self._clock()
        try:
            patched.result(timeout=max(0.0, remaining))
        except concurrent.futures.TimeoutError:
            result = "timeout"
            self._writer.failed(WHAT, f"no answer within {self._wait:g}s; the kill went ahead without it")
        except Exception:  # the writer said why (once per outage)
            result = "failed"
        else:
            result = "patched"
        with self._lock:
            self.results[result] += 1
