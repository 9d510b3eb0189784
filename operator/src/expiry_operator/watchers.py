"""The operator's watches, as kopf handlers: the unprotected-pod report and the hang report.

Kept apart from the admission webhook so that they can be switched off (``unprotectedPods.watch``,
``hangReports.enabled``) or gated, e.g. to run on one replica only, without touching admission. The
bookkeeping is pure (``unprotected``, ``kill_events``, ``owners``, ``incidents``, ``hang_report``);
this module feeds it watch events and writes what it decides to the API and the metrics.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any

import kopf

from expiry import names
from expiry_operator import metrics
from expiry_operator.apiclient import ApiClient
from expiry_operator.hang_report import DETAILS_ANNOTATION, EVENT_REASON, HangReport, report
from expiry_operator.incidents import IncidentTracker
from expiry_operator.kill_events import is_kill_event, parse_kill_event
from expiry_operator.owners import Workload, api_path, workload_of
from expiry_operator.settings import HangReportSettings, Settings
from expiry_operator.unprotected import EVENT_REASON as UNPROTECTED_REASON
from expiry_operator.unprotected import UnprotectedPods, warning

logger = logging.getLogger(__name__)
REPORTING_COMPONENT = "expiry.io/operator"


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    """Add the watches that ``settings`` turns on to ``registry``."""
    api = ApiClient()  # used on the loop of the operator that runs ``registry`` only

    @kopf.on.cleanup(registry=registry)
    async def close_client(**_: Any) -> None:
        await api.close()

    if settings.unprotected_pods.watch:
        _watch_unprotected(registry, api)
    if settings.hang_reports.enabled:
        _watch_hangs(registry, HangWatch(settings.hang_reports, api))


def _watch_unprotected(registry: kopf.OperatorRegistry, api: ApiClient) -> None:
    unprotected = UnprotectedPods()

    @kopf.on.event("pods", id="unprotected-pods", registry=registry)
    async def watch_pods(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        found = unprotected.observe(event.get("type"), body)
        for namespace, count in unprotected.counts().items():
            metrics.unprotected_pods.labels(pod_namespace=namespace).set(count)
        if found:
            message = warning(body)
            logger.warning("unprotected pod %s: %s", _name(body), message)
            pod = Workload(
                "v1", "Pod", body.metadata.namespace or "", body.metadata.name or "", body.metadata.uid or ""
            )
            try:
                await post_event(api, pod, UNPROTECTED_REASON, message)
            except Exception as e:
                logger.error("cannot post the %s Event for pod %s: %s", UNPROTECTED_REASON, _name(body), e)


def _watch_hangs(registry: kopf.OperatorRegistry, watch: HangWatch) -> None:
    @kopf.on.event("pods", id="hang-report-owners", labels={names.INJECTED_LABEL: "true"}, registry=registry)
    async def injected_pods(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        watch.pod_changed(event.get("type"), body)

    @kopf.on.event(
        "events.k8s.io",
        "v1",
        "events",
        id="hang-report-kills",
        when=lambda body, **_: is_kill_event(body),
        registry=registry,
    )
    async def kill_events(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        await watch.kill_event(event.get("type"), body)


class HangWatch:
    """Kill Events in, one ``HangDetected`` Event per workload and incident out."""

    def __init__(self, settings: HangReportSettings, api: ApiClient) -> None:
        self.tracker = IncidentTracker(window=settings.window, max_span=settings.max_span)
        self.horizon = settings.window + settings.max_span
        self.owners: dict[tuple[str, str], Workload] = {}  # injected pods: (namespace, name) -> workload
        self._seen: dict[str, tuple[str, float]] = {}  # kill Event uid -> (its kills, when seen)
        self._flusher: asyncio.Task[None] | None = None
        self._api = api

    def pod_changed(self, event_type: str | None, pod: kopf.Body) -> None:
        key = (str(pod.metadata.namespace or ""), str(pod.metadata.name or ""))
        if event_type == "DELETED":
            self.owners.pop(key, None)
        else:
            self.owners[key] = workload_of(pod)

    async def kill_event(self, event_type: str | None, body: kopf.Body) -> None:
        event = parse_kill_event(body)
        if event is None or event_type == "DELETED":
            return
        if event.time is not None and time.time() - event.time > self.horizon:
            return  # an old Event, listed again when the operator (re)started: reported back then
        if self._seen.get(event.uid, ("", 0.0))[0] == event.digest:
            return  # the same kills again (a resend, or a change to something else in the Event)
        self._seen[event.uid] = (event.digest, time.monotonic())
        workload = self.owners.get((event.namespace, event.pod)) or await self._owner_from_api(
            event.namespace, event.pod, event.pod_uid
        )
        self.tracker.add(workload, event, time.monotonic())
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="expiry hang reports")

    async def _flush(self) -> None:
        while (due := self.tracker.next_due()) is not None:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            for incident in list(self.tracker.pop_due(time.monotonic())):
                try:
                    await self._post(report(incident))
                except Exception:
                    logger.exception("cannot post the hang report for %s", incident.workload)
        forget_before = time.monotonic() - self.horizon
        self._seen = {uid: seen for uid, seen in self._seen.items() if seen[1] >= forget_before}

    async def _post(self, hang: HangReport) -> None:
        workload = hang.incident.workload
        metrics.hang_incidents.labels(pod_namespace=workload.namespace, kind=workload.kind).inc()
        if not workload.uid:
            workload = await self._with_uid(workload)
        message = hang.message()
        logger.warning("hang in %s %s/%s: %s", workload.kind, workload.namespace, workload.name, message)
        await post_event(
            self._api, workload, EVENT_REASON, message, {DETAILS_ANNOTATION: hang.details_json()}
        )

    async def _owner_from_api(self, namespace: str, pod: str, uid: str) -> Workload:
        """A pod the watch has not shown yet (e.g. just after a restart): read it once."""
        try:
            body = await self._api.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
        except Exception as e:
            logger.info(
                "cannot read pod %s/%s for its workload (%s); reporting on the pod", namespace, pod, e
            )
            return Workload("v1", "Pod", namespace, pod, uid)
        workload = workload_of(body)
        self.owners[(namespace, pod)] = workload
        return workload

    async def _with_uid(self, workload: Workload) -> Workload:
        """A workload named by a label only: its uid, so ``kubectl describe`` lists the Event."""
        path = api_path(workload)
        if path is None:
            return workload
        try:
            body = await self._api.get(path)
        except Exception as e:
            logger.info(
                "cannot read %s %s/%s for its uid (%s)", workload.kind, workload.namespace, workload.name, e
            )
            return workload
        uid = str((body.get("metadata") or {}).get("uid") or "")
        return Workload(workload.api_version, workload.kind, workload.namespace, workload.name, uid)


async def post_event(
    api: ApiClient,
    about: Workload,
    reason: str,
    message: str,
    annotations: dict[str, str] | None = None,
) -> None:
    """Write one Warning Event (core v1) on ``about``, named as client-go names them (unique per call)."""
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
    await api.post(
        f"/api/v1/namespaces/{about.namespace}/events",
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{about.name}.{time.time_ns():x}",
                "namespace": about.namespace,
                "annotations": annotations or {},
            },
            "involvedObject": about.reference(),
            "type": "Warning",
            "reason": reason,
            "message": message,
            "action": "Report",
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", "expiry-operator"),
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "count": 1,
        },
    )


def _name(body: Any) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name') or metadata.get('generateName', '')}"
