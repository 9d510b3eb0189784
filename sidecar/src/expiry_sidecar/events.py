"""Kubernetes Events for kills, so ``kubectl describe pod`` says which worker was killed and why.

Each kill (delivered or refused) becomes an Event on the sidecar's own pod, named by the
downward-API variables ``EXPIRY_POD_NAME`` and ``EXPIRY_POD_NAMESPACE`` (``EXPIRY_POD_UID`` too when
set; otherwise the pod's uid is read from the API once, if the service account may). Credentials are
the pod's service account (in-cluster config), or ``$KUBECONFIG`` when that is set.

An Event never holds up a kill: ``after_kill`` only builds the body and queues it (a bounded queue;
when it is full the Event is dropped); one background thread posts the queue with request timeouts.
Events are best effort: without credentials, when RBAC forbids them or while the API server is
down, the sidecar says so once in its log (once per outage, not once per kill), counts
``expiry_events_total{result="failed"}`` and carries on.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from expiry.names import POD_NAME_ENV, POD_NAMESPACE_ENV, POD_UID_ENV
from expiry_sidecar import kills
from expiry_sidecar.server import KillReport, Listener, signal_name

log = logging.getLogger("expiry.sidecar")

KILLED = "WorkerKilled"
KILL_FAILED = "WorkerKillFailed"
REPORTING_CONTROLLER = "expiry.io/sidecar"
ACTION = "Kill"
QUEUE_SIZE = 100
REQUEST_TIMEOUT = (3.0, 5.0)
"""(connect, read) seconds for each API request."""
FLUSH_TIMEOUT = 3.0
"""How long stopping the sidecar waits for queued Events to be posted."""
MAX_FIELD = 200
"""Command lines and scope ids are cut to this many characters in a note."""
MAX_NOTE = 1024
MAX_INSTANCE = 128
"""The API server's limits: bytes of ``note``, characters of ``reportingInstance``."""

Body = dict[str, Any]
Result = str  # "recorded" | "failed"


@dataclass(frozen=True)
class PodRef:
    name: str
    namespace: str
    uid: str | None = None

    @classmethod
    def from_environment(cls) -> PodRef | None:
        name, namespace = os.environ.get(POD_NAME_ENV), os.environ.get(POD_NAMESPACE_ENV)
        if not name or not namespace:
            return None
        return cls(name, namespace, os.environ.get(POD_UID_ENV) or None)


class EventsUnavailable(Exception):
    """Events cannot be recorded at all (no client library, no credentials): said once, at start."""


class Poster(Protocol):
    def pod_uid(self, pod: PodRef) -> str | None: ...

    def post(self, namespace: str, body: Body) -> None: ...


# -- what an Event says (pure) -----------------------------------------------------------------------


def kill_event(pod: PodRef, report: KillReport, now: datetime) -> Body:
    """The events.k8s.io/v1 Event for one kill.

    ``kubectl describe pod`` lists it: both API groups serve the same Events, ``regarding`` is the
    core ``involvedObject``, and describe finds Events by the pod's name, namespace and uid.
    """
    when = now.astimezone(UTC)
    if when.microsecond == 0:
        # The client writes a datetime without a fraction when it has none, and the API server's
        # MicroTime insists on six digits.
        when = when.replace(microsecond=1)
    regarding: Body = {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace}
    if pod.uid:
        regarding["uid"] = pod.uid
    suffix = f".{int(when.timestamp() * 1e6):x}{report.worker.pid:x}"
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": pod.name[: 253 - len(suffix)] + suffix, "namespace": pod.namespace},
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "regarding": regarding,
        "type": "Warning",
        "reason": KILLED if report.outcome is kills.Outcome.DELIVERED else KILL_FAILED,
        "action": ACTION,
        "note": kill_message(report).encode()[:MAX_NOTE].decode(errors="ignore"),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": pod.name[:MAX_INSTANCE],
    }


def notice_event(pod: PodRef, reason: str, note: str, now: datetime) -> Body:
    """A Warning Event on the pod about something other than a kill (e.g. a competing timer server)."""
    when = now.astimezone(UTC).replace(microsecond=now.microsecond or 1)  # MicroTime: six digits
    regarding: Body = {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace}
    if pod.uid:
        regarding["uid"] = pod.uid
    suffix = f".{int(when.timestamp() * 1e6):x}"
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": pod.name[: 253 - len(suffix)] + suffix, "namespace": pod.namespace},
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "regarding": regarding,
        "type": "Warning",
        "reason": reason,
        "action": "Detect",
        "note": note.encode()[:MAX_NOTE].decode(errors="ignore"),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": pod.name[:MAX_INSTANCE],
    }


def kill_message(report: KillReport) -> str:
    worker, sig = report.worker, signal_name(report.signal)
    who = f"pid {worker.pid} ({_cut(worker.cmdline) or 'command line unknown'})"
    if report.escalation:
        why = "still alive after an earlier signal"
    else:
        why = f"timer {_cut(report.scope_id)!r} expired {max(0.0, report.lateness):.3f}s ago"
    if report.outcome is kills.Outcome.DELIVERED:
        return f"sent {sig} to {who}: {why}"
    return f"could not send {sig} to {who} ({report.outcome.value}): {why}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 3] + "..."


def describe_failure(exc: BaseException, pod: PodRef) -> str:
    """What went wrong posting an Event, in words that say what to fix."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        why = f"the API server answered {status} {getattr(exc, 'reason', '') or ''}".rstrip()
        if status in (401, 403):
            why += (
                f": the pod's service account needs RBAC permission to create events (API group"
                f" events.k8s.io) in namespace {pod.namespace}"
            )
        return why
    return f"{type(exc).__name__}: {exc}"


# -- the kubernetes client (I/O) ---------------------------------------------------------------------


class KubernetesPoster:
    """Posts with the ``kubernetes`` client: in-cluster credentials, or ``$KUBECONFIG`` when set."""

    def __init__(self) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise EventsUnavailable(
                "the kubernetes package is not installed (pip install 'expiry-sidecar[events]')"
            ) from None
        configuration = client.Configuration()
        try:
            if os.environ.get("KUBECONFIG"):
                config.load_kube_config(client_configuration=configuration, persist_config=False)  # type: ignore[no-untyped-call]
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise EventsUnavailable(f"no Kubernetes credentials: {exc}") from None
        configuration.retries = False  # best effort: the next Event is the retry
        self._client = client
        self._api_client = client.ApiClient(configuration)
        # Any: the client takes plain dicts for bodies, and raw responses, which its stubs deny.
        # EventsV1Api, not CoreV1Api: the core API's module alone costs the process 20 MB.
        self._events: Any = client.EventsV1Api(self._api_client)

    def pod_uid(self, pod: PodRef) -> str | None:
        """Only needed when the operator did not pass the uid (EXPIRY_POD_UID)."""
        core: Any = self._client.CoreV1Api(self._api_client)
        response = core.read_namespaced_pod(
            pod.name, pod.namespace, _request_timeout=REQUEST_TIMEOUT, _preload_content=False
        )
        uid = json.loads(response.data).get("metadata", {}).get("uid")
        return uid if isinstance(uid, str) and uid else None

    def post(self, namespace: str, body: Body) -> None:
        self._events.create_namespaced_event(
            namespace, body, _request_timeout=REQUEST_TIMEOUT, _preload_content=False
        )


# -- the listener --------------------------------------------------------------------------------------


class EventRecorder(Listener):
    def __init__(
        self,
        pod: PodRef | None,
        *,
        connect: Callable[[], Poster] = KubernetesPoster,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.results: Counter[Result] = Counter()
        self._pod = pod
        self._connect = connect
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: queue.Queue[Body | None] = queue.Queue(maxsize=queue_size)
        self._failing = False
        self._uid_settled = pod is None or pod.uid is not None
        self._thread: threading.Thread | None = None
        if pod is None:
            log.warning(
                "Kubernetes Events are off: %s and %s are not set (the operator sets them from the"
                " downward API)",
                POD_NAME_ENV,
                POD_NAMESPACE_ENV,
            )
        else:
            self._thread = threading.Thread(target=self._run, name="expiry-events", daemon=True)
            self._thread.start()

    def after_kill(self, report: KillReport) -> None:
        if self._pod is None or self._thread is None or not self._thread.is_alive():
            self._count("failed")
            return
        self._enqueue(kill_event(self._pod, report, datetime.fromtimestamp(self._clock(), UTC)))

    def notice(self, reason: str, note: str) -> None:
        """Queue an Event that is not about a kill, on the same queue and client."""
        if self._pod is None or self._thread is None or not self._thread.is_alive():
            self._count("failed")
            return
        self._enqueue(notice_event(self._pod, reason, note, datetime.fromtimestamp(self._clock(), UTC)))

    def _enqueue(self, body: Body) -> None:
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self._count("failed")
            self._failed(f"{self._queue.maxsize} Events were already waiting to be posted; dropped one")

    def close(self) -> None:
        """Post what is queued (for up to FLUSH_TIMEOUT seconds), then stop."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=FLUSH_TIMEOUT)
        except queue.Full:
            return
        self._thread.join(FLUSH_TIMEOUT)

    def _run(self) -> None:
        assert self._pod is not None
        try:
            poster = self._connect()
        except EventsUnavailable as exc:
            log.warning("Kubernetes Events are off: %s", exc, extra={"reason": str(exc)})
            self._drain()
            return
        log.info(
            "recording Kubernetes Events", extra={"pod": self._pod.name, "namespace": self._pod.namespace}
        )
        while (body := self._queue.get()) is not None:
            try:
                self._settle_uid(poster, body)
                poster.post(self._pod.namespace, body)
            except Exception as exc:  # a background thread must outlive any client error
                self._count("failed")
                self._failed(describe_failure(exc, self._pod))
                continue
            self._count("recorded")
            with self._lock:
                recovered, self._failing = self._failing, False
            if recovered:
                log.info("recording Kubernetes Events again")

    def _drain(self) -> None:
        """Without a client, count what is queued and what comes as failed until stopped."""
        while self._queue.get() is not None:
            self._count("failed")

    def _settle_uid(self, poster: Poster, body: Body) -> None:
        """Fill in the pod's uid, read once from the API unless the environment gave it."""
        assert self._pod is not None
        if not self._uid_settled:
            try:
                uid = poster.pod_uid(self._pod)
            except Exception as exc:
                status = getattr(exc, "status", None)
                self._uid_settled = status in (401, 403, 404)  # will not improve: go without a uid
                if self._uid_settled:
                    log.info("Events will not name the pod's uid: %s", describe_failure(exc, self._pod))
                return
            self._pod = PodRef(self._pod.name, self._pod.namespace, uid)
            self._uid_settled = True
        if self._pod.uid:
            body["regarding"]["uid"] = self._pod.uid

    def _count(self, result: Result) -> None:
        with self._lock:
            self.results[result] += 1

    def _failed(self, why: str) -> None:
        """Log a failure once per outage: the first one after a success (or after the start)."""
        with self._lock:
            first, self._failing = not self._failing, True
        if not first:
            return
        log.warning(
            "could not record a Kubernetes Event: %s; kills go on, and failures are counted in"
            ' expiry_events_total{result="failed"}',
            why,
            extra={"reason": why},
        )
