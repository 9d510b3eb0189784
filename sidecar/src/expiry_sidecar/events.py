"""Kubernetes Events for kills, so ``kubectl describe pod`` says which workers were killed and why,
and the operator's hang report can tell which rank started it.

The kills of one pod within ``BURST_WINDOW`` seconds of the first (a collective hang kills all of a
pod's workers at once) become ONE events.k8s.io/v1 Event on the sidecar's own pod, named by the
downward-API variables ``EXPIRY_POD_NAME`` and ``EXPIRY_POD_NAMESPACE`` (``EXPIRY_POD_UID`` too when
set; otherwise the pod's uid is read from the API once, if the service account may). Its reason is
``WorkerKilled``, ``WorkerKillFailed`` or, in observe mode, ``WorkerHangObserved``; its note is
for people (at most 1 KB); its annotation ``expiry.io/kills`` is for programs (the operator): a
compact JSON list, one object per worker, see :func:`kill_entry` and docs/sidecar.md. A later burst
with the same reason within ``SERIES_WINDOW`` seconds updates that Event as an events.k8s.io series
(PATCH: ``series.count``, ``series.lastObservedTime``, the new note and annotation) instead of
creating another object, as the Events API intends for repeated Events.

An Event never holds up a kill: ``after_kill`` only collects the report, and the writer thread
(:mod:`.apiwriter`, shared with the pod condition) posts it. Events are best effort: counted in
``expiry_events_total{result="recorded|failed"}``, failures said once per outage.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

from expiry import names
from expiry_sidecar import kills
from expiry_sidecar.apiwriter import ApiWriter, Client, PodRef
from expiry_sidecar.kubeclient import ApiError, Body
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import KillOrder, KillReport, Listener, signal_name

KILLED = names.KILLED_REASON
KILL_FAILED = names.KILL_FAILED_REASON
OBSERVED = names.OBSERVED_REASON
REPORTING_CONTROLLER = names.KILL_EVENT_CONTROLLER
KILLS_ANNOTATION = names.KILLS_ANNOTATION
TRUNCATED_ANNOTATION = names.KILLS_TRUNCATED_ANNOTATION
WHAT = "record a Kubernetes Event"
PERMISSION = "create and patch events (API group events.k8s.io)"
BURST_WINDOW = 1.0
"""Seconds after a pod's first kill during which further kills join its Event."""
SERIES_WINDOW = 600.0
"""Seconds after an Event during which a burst with the same reason extends its series."""
MAX_FIELD = 200
"""Command lines, scope ids and frames are cut to this many characters."""
MAX_NOTE = 1024
MAX_INSTANCE = 128
"""The API server's limits: bytes of ``note``, characters of ``reportingInstance``."""
MAX_KILLS_ANNOTATION = 32 * 1024
"""Bytes of the kills annotation (all annotations of an object: 256 KiB); workers past it are left
out and counted in the truncated annotation."""
EVENTS_PATH = "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
MERGE_PATCH = "application/merge-patch+json"

Ranks = tuple[int | None, int | None]


# -- what an Event says (pure) -----------------------------------------------------------------------


def reason_of(report: KillReport) -> str:
    if report.outcome is kills.Outcome.OBSERVED:
        return OBSERVED
    return KILLED if report.outcome is kills.Outcome.DELIVERED else KILL_FAILED


def kill_entry(report: KillReport, ranks: Ranks, node: str | None = None) -> Body:
    """One worker in the kills annotation (the contract the operator's hang report reads); ``node``:
    the pod's node (None: unknown)."""
    observed = report.outcome is kills.Outcome.OBSERVED
    return {
        "pid": report.worker.pid,
        "rank": ranks[0],
        "local_rank": ranks[1],
        "scope": "" if report.escalation else _cut(report.scope_id),
        "deadline": round(report.deadline, 3),
        "signal": None if observed else signal_name(report.signal),
        "outcome": report.outcome.value,
        "rule": "escalation" if report.escalation else report.rule,
        "frames": [_cut(frame) for frame in report.frames],
        "collective": _cut_collective(report.collective),
        "node": node,
    }


def _cut_collective(collective: dict[str, object] | None) -> Body | None:
    if collective is None:
        return None
    return {key: _cut(value) if isinstance(value, str) else value for key, value in collective.items()}


def kills_annotations(entries: Sequence[Body]) -> dict[str, str]:
    """The kills annotation, as many workers as fit, and how many did not (when any)."""
    kept: list[str] = []
    size = 2
    for entry in entries:
        text = json.dumps(entry, separators=(",", ":"))
        if size + len(text.encode()) + 1 > MAX_KILLS_ANNOTATION:
            break
        kept.append(text)
        size += len(text.encode()) + 1
    annotations = {KILLS_ANNOTATION: "[" + ",".join(kept) + "]"}
    if len(kept) < len(entries):
        annotations[TRUNCATED_ANNOTATION] = str(len(entries) - len(kept))
    return annotations


def micro_time(now: datetime) -> str:
    """MicroTime as the API server insists on it: six digits of fraction, in UTC."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pod_event(pod: PodRef, reason: str, action: str, note: str, now: datetime, *, tag: str = "") -> Body:
    """A Warning events.k8s.io/v1 Event on the sidecar's pod, named ``<pod>.<time><tag>`` (hex).

    ``kubectl describe pod`` lists it: both API groups serve the same Events, ``regarding`` is the
    core ``involvedObject``, and describe finds Events by the pod's name, namespace and uid.
    """
    regarding: Body = {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace}
    if pod.uid:
        regarding["uid"] = pod.uid
    suffix = f".{int(now.timestamp() * 1e6):x}{tag}"
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": pod.name[: 253 - len(suffix)] + suffix, "namespace": pod.namespace},
        "eventTime": micro_time(now),
        "regarding": regarding,
        "type": "Warning",
        "reason": reason,
        "action": action,
        "note": note.encode()[:MAX_NOTE].decode(errors="ignore"),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": pod.name[:MAX_INSTANCE],
    }


def burst_event(
    pod: PodRef, burst: Sequence[tuple[KillReport, Ranks]], now: datetime, node: str | None = None
) -> Body:
    """The Event for a burst of kills in one pod (all with one reason), the kills annotated."""
    first = burst[0][0]
    action = "Observe" if first.outcome is kills.Outcome.OBSERVED else "Kill"
    note = "; ".join(kill_message(report) for report, _ in burst)
    event = pod_event(pod, reason_of(first), action, note, now, tag=f"{first.worker.pid:x}")
    event["metadata"]["annotations"] = kills_annotations([kill_entry(r, ranks, node) for r, ranks in burst])
    return event


def series_patch(event: Body, count: int, now: datetime) -> Body:
    """A JSON merge patch turning an earlier Event into a series that now includes ``event``."""
    annotations: dict[str, str | None] = {TRUNCATED_ANNOTATION: None, **event["metadata"]["annotations"]}
    return {
        "metadata": {"annotations": annotations},
        "series": {"count": count, "lastObservedTime": micro_time(now)},
        "note": event["note"],
    }


def kill_message(report: KillReport) -> str:
    worker, sig = report.worker, signal_name(report.signal)
    who = f"pid {worker.pid} ({_cut(worker.cmdline) or 'command line unknown'})"
    if report.escalation:
        why = "still alive after an earlier signal"
    else:
        why = f"timer {_cut(report.scope_id)!r} expired {max(0.0, report.lateness):.3f}s ago"
    if report.outcome is kills.Outcome.OBSERVED:
        return f"would have sent {sig} to {who} (observe mode): {why}"
    if report.outcome is kills.Outcome.DELIVERED:
        return f"sent {sig} to {who}: {why}"
    return f"could not send {sig} to {who} ({report.outcome.value}): {why}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 3] + "..."


def ranks_from_environ(environ: bytes) -> Ranks:
    """``RANK`` and ``LOCAL_RANK`` from a /proc/PID/environ (None when unset or not a number)."""
    found: dict[bytes, int | None] = {}
    for item in environ.split(b"\0"):
        name, _, value = item.partition(b"=")
        if name in (b"RANK", b"LOCAL_RANK"):
            found[name] = int(value) if value.strip().isdigit() else None
    return found.get(b"RANK"), found.get(b"LOCAL_RANK")


def read_ranks(pid: int) -> Ranks:
    """The worker's ranks, read before it is killed (a dead process's environ is empty)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            return ranks_from_environ(file.read())
    except OSError:
        return None, None


# -- the listener --------------------------------------------------------------------------------------


@dataclass
class _Series:
    name: str
    count: int
    last: float


class EventRecorder(Listener):
    def __init__(
        self,
        writer: ApiWriter,
        *,
        ranks: Callable[[int], Ranks] = read_ranks,
        clock: Callable[[], float] = time.time,
        node: str | None = None,
    ) -> None:
        self.results: Counter[str] = Counter()
        self.node = node
        """The pod's node, in every kill of the annotation (None: unknown)."""
        self._writer = writer
        self._read_ranks = ranks
        self._clock = clock
        self._lock = threading.Lock()
        self._ranks: dict[Worker, Ranks] = {}
        self._burst: list[tuple[KillReport, Ranks]] | None = None
        """The open burst: kills waiting for their Event (None: none waiting)."""
        self._series: dict[str, _Series] = {}
        """By reason: the last Event written, which a repeat extends (the writer thread's own)."""
        self._uid_settled = writer.pod is None or writer.pod.uid is not None

    def before_kill(self, order: KillOrder) -> None:
        ranks = self._read_ranks(order.worker.pid)
        if ranks == (None, None):  # an environment it may not read: what the worker told, if it did
            ranks = order.told_ranks.get("rank"), order.told_ranks.get("local_rank")
        with self._lock:
            self._ranks[order.worker] = ranks

    def after_kill(self, report: KillReport) -> None:
        with self._lock:
            ranks = self._ranks.pop(report.worker, (None, None))
            if self._burst is not None:
                self._burst.append((report, ranks))
                return
            burst = self._burst = [(report, ranks)]
        written = self._writer.submit(
            WHAT, PERMISSION, lambda client: self._write(client, burst), delay=BURST_WINDOW
        )
        written.add_done_callback(lambda future: self._done(future, burst))

    def notice(self, reason: str, note: str) -> None:
        """Record an Event that is not about a kill, through the same writer (never blocks)."""

        def write(client: Client) -> int:
            pod = self._settle_uid(client)
            event = pod_event(pod, reason, "Detect", note, datetime.fromtimestamp(self._clock(), UTC))
            client.request("POST", EVENTS_PATH.format(namespace=pod.namespace), event)
            return 1

        self._writer.submit(WHAT, PERMISSION, write).add_done_callback(self._counted)

    def _counted(self, future: Future[int]) -> None:
        with self._lock:
            if future.exception() is None:
                self.results["recorded"] += future.result()
            else:
                self.results["failed"] += 1

    def _done(self, future: Future[int], burst: list[tuple[KillReport, Ranks]]) -> None:
        with self._lock:
            if self._burst is burst:  # failed before it ran (no API, queue full): close the burst
                self._burst = None
            if future.exception() is None:
                self.results["recorded"] += future.result()
            else:
                self.results["failed"] += 1

    def _write(self, client: Client, burst: list[tuple[KillReport, Ranks]]) -> int:
        """On the writer thread: the burst's Events (one per reason; usually one). How many."""
        with self._lock:
            if self._burst is burst:  # later kills start a burst of their own (a retry finds it closed)
                self._burst = None
        pod = self._settle_uid(client)
        by_reason: dict[str, list[tuple[KillReport, Ranks]]] = {}
        for item in burst:
            by_reason.setdefault(reason_of(item[0]), []).append(item)
        for reason, items in by_reason.items():
            now = self._clock()
            event = burst_event(pod, items, datetime.fromtimestamp(now, UTC), self.node)
            path = EVENTS_PATH.format(namespace=pod.namespace)
            series = self._series.get(reason)
            if series is not None and now - series.last < SERIES_WINDOW:
                patch = series_patch(event, series.count + 1, datetime.fromtimestamp(now, UTC))
                try:
                    client.request("PATCH", f"{path}/{series.name}", patch, MERGE_PATCH)
                except ApiError as exc:
                    if exc.status != 404:  # gone (Events expire): start a new one
                        raise
                else:
                    series.count, series.last = series.count + 1, now
                    continue
            client.request("POST", path, event)
            self._series[reason] = _Series(event["metadata"]["name"], 1, now)
        return len(by_reason)

    def _settle_uid(self, client: Client) -> PodRef:
        """The pod, with its uid read once from the API unless the environment gave it."""
        pod = self._writer.pod
        assert pod is not None
        if self._uid_settled:
            return pod
        try:
            answer = client.request("GET", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}")
        except ApiError as exc:
            self._uid_settled = exc.status in (401, 403, 404)  # will not improve: go without a uid
            return pod
        except Exception:
            return pod
        uid = answer.get("metadata", {}).get("uid")
        self._uid_settled = True
        if isinstance(uid, str) and uid:
            pod = self._writer.pod = PodRef(pod.name, pod.namespace, uid)
        return pod
