"""Everything the sidecar writes to the Kubernetes API goes through one writer: one client, one
bounded queue, one thread, one "said once per outage" rule.

Writers (Events, the pod condition) never block the loop or a kill: :meth:`ApiWriter.submit` queues a
piece of work and returns a future at once; when the queue is full, or the API cannot be reached at
all (no credentials, no pod name), the future fails at once. Urgent work (the pod
condition, which a kill waits for) goes before anything queued; other work may be delayed (the Events
of a burst of kills wait for the burst to end). Each request has a timeout; the client does not retry,
except after an answer 429 (too many requests), which the writer honours: it waits as long as the
API server's ``Retry-After`` asks (capped) before its next request, and tries that work again.

Failures are said once per outage, whatever failed: the first after a success (or after the start)
is logged with what to fix, the next are only counted by their writers, and the first success after
them is logged too.

The client is :mod:`.kubeclient` (the standard library's HTTP over one kept-alive connection);
credentials are the pod's service account (in-cluster config), or ``$KUBECONFIG`` when that is set
(:mod:`.kubecreds`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from expiry.names import POD_NAME_ENV, POD_NAMESPACE_ENV, POD_UID_ENV
from expiry_sidecar.kubeclient import ApiError, ApiUnavailable, Body, KubeClient

log = logging.getLogger("expiry.sidecar")

T = TypeVar("T")

QUEUE_SIZE = 100
FLUSH_TIMEOUT = 3.0
"""How long stopping the sidecar waits for queued writes."""
RETRY_AFTER_DEFAULT = 1.0
RETRY_AFTER_MAX = 30.0
ATTEMPTS_AFTER_429 = 3


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


class Client(Protocol):
    def request(self, method: str, path: str, body: Body | None = None, content_type: str = ...) -> Body:
        """Send one request; the answer's JSON body; raises ApiError on an error status."""


def describe_failure(exc: BaseException, permission: str, namespace: str) -> str:
    """What went wrong writing to the API, in words that say what to fix."""
    if isinstance(exc, ApiError):
        why = str(exc)
        if exc.status in (401, 403):
            why += f": the pod's service account needs RBAC permission to {permission}"
            why += f" in namespace {namespace}"
        return why
    return f"{type(exc).__name__}: {exc}"


def retry_after(exc: BaseException) -> float | None:
    """Seconds to wait before the next request after a 429 (None: not a 429)."""
    if not isinstance(exc, ApiError) or exc.status != 429:
        return None
    try:
        seconds = float(exc.retry_after or RETRY_AFTER_DEFAULT)
    except ValueError:
        seconds = RETRY_AFTER_DEFAULT
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


@dataclass(order=True)
class _Job:
    ready: float
    seq: int
    work: Callable[[Client], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)
    what: str = field(compare=False)
    permission: str = field(compare=False)
    attempts: int = field(default=0, compare=False)


class ApiWriter:
    def __init__(
        self,
        pod: PodRef | None,
        *,
        connect: Callable[[], Client] = KubeClient,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pod = pod
        self._connect = connect
        self._clock = clock
        self._queue_size = queue_size
        self._lock = threading.Condition()
        self._urgent: deque[_Job] = deque()
        self._later: list[_Job] = []
        """A heap by the time each job may run."""
        self._seq = itertools.count()
        self._stopping = False
        self._failing = False
        self._not_before = 0.0
        self._unavailable: str | None = None
        self._thread: threading.Thread | None = None
        if pod is None:
            self._off(
                f"{POD_NAME_ENV} and {POD_NAMESPACE_ENV} are not set (the operator sets them from the"
                " downward API)"
            )
        else:
            self._thread = threading.Thread(target=self._run, name="expiry-api", daemon=True)
            self._thread.start()

    def submit(
        self,
        what: str,
        permission: str,
        work: Callable[[Client], T],
        *,
        urgent: bool = False,
        delay: float = 0.0,
    ) -> Future[T]:
        """Queue ``work(client)``; never blocks. ``what`` ("record a Kubernetes Event") and
        ``permission`` ("create events ...") name it in the log when it fails."""
        future: Future[T] = Future()
        with self._lock:
            if self._unavailable is not None or self._stopping:
                future.set_exception(ApiUnavailable(self._unavailable or "the sidecar is stopping"))
                return future
            if len(self._urgent) + len(self._later) >= self._queue_size:
                full = ApiUnavailable(f"{self._queue_size} writes were already waiting; dropped one")
                future.set_exception(full)
                self._say_failed(what, str(full))
                return future
            job = _Job(self._clock() + delay, next(self._seq), work, future, what, permission)
            if urgent:
                self._urgent.append(job)
            else:
                heapq.heappush(self._later, job)
            self._lock.notify()
        return future

    def failed(self, what: str, why: str) -> None:
        """A writer's own failure (e.g. a wait that timed out), under the same said-once rule."""
        with self._lock:
            self._say_failed(what, why)

    def close(self) -> None:
        """Run what is due now (for up to FLUSH_TIMEOUT seconds, delayed work too), then stop."""
        with self._lock:
            self._stopping = True
            for job in self._later:
                job.ready = min(job.ready, self._clock())
            heapq.heapify(self._later)
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(FLUSH_TIMEOUT)

    # -- the writer thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        assert self.pod is not None
        try:
            client = self._connect()
        except ApiUnavailable as exc:
            self._off(str(exc))
            return
        log.info(
            "writing to the Kubernetes API", extra={"pod": self.pod.name, "namespace": self.pod.namespace}
        )
        while (job := self._next()) is not None:
            try:
                result = job.work(client)
            except Exception as exc:  # a background thread must outlive any client error
                self._handle_failure(job, exc)
                continue
            job.future.set_result(result)
            with self._lock:
                recovered, self._failing = self._failing, False
            if recovered:
                log.info("writing to the Kubernetes API again")

    def _next(self) -> _Job | None:
        """The next job that may run: urgent ones first, then the earliest due; None when stopped."""
        with self._lock:
            while True:
                now = self._clock()
                wait: float | None = self._not_before - now
                if wait is not None and wait <= 0:
                    if self._urgent:
                        return self._urgent.popleft()
                    if self._later and self._later[0].ready <= now:
                        return heapq.heappop(self._later)
                    if self._stopping:
                        return None
                    wait = self._later[0].ready - now if self._later else None
                self._lock.wait(wait)

    def _handle_failure(self, job: _Job, exc: Exception) -> None:
        assert self.pod is not None
        backoff = retry_after(exc)
        with self._lock:
            if backoff is not None:
                self._not_before = self._clock() + backoff
                if job.attempts + 1 < ATTEMPTS_AFTER_429 and not self._stopping:
                    job.attempts += 1
                    job.ready = self._not_before
                    heapq.heappush(self._later, job)
                    return
            self._say_failed(job.what, describe_failure(exc, job.permission, self.pod.namespace))
        job.future.set_exception(exc)

    def _say_failed(self, what: str, why: str) -> None:
        """Log a failure once per outage: the first one after a success (or after the start)."""
        first, self._failing = not self._failing, True
        if first:
            log.warning(
                "could not %s: %s; kills go on, and failures are counted in the metrics",
                what,
                why,
                extra={"reason": why},
            )

    def _off(self, why: str) -> None:
        """Nothing can be written: say so once, and fail everything queued or to come."""
        log.warning(
            "Kubernetes API writes (Events, the pod condition) are off: %s", why, extra={"reason": why}
        )
        with self._lock:
            self._unavailable = why
            jobs = list(self._urgent) + self._later
            self._urgent.clear()
            self._later.clear()
        for job in jobs:
            with contextlib.suppress(Exception):
                job.future.set_exception(ApiUnavailable(why))
