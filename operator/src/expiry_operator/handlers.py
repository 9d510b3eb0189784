"""The kopf handlers, in two registries.

* ``build_webhook_registry``: the mutating webhook ``expiry-inject``, served by every replica.
* ``build_leader_registry``: the watches (the unprotected-pod report and the hang report, see
  ``watchers``), run by the replica that holds the Lease only (see ``leader_watch``). A new
  leader-only handler goes there.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import kopf

from expiry_operator import apiclient, metrics, patch_relay, watchers
from expiry_operator.injection import Denied, Injected, admit
from expiry_operator.settings import Settings

HANDLER_ID = "expiry-inject"  # the webhook path is /expiry-inject: the chart points there
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ClusterInfo:
    """Learned from the API server before the webhook serves (see webhook.ExpiryWebhookServer)."""

    native_sidecars: bool = False
    known: bool = False


def _login(registry: kopf.OperatorRegistry) -> None:
    kopf.on.login(registry=registry)(apiclient.login)  # the credentials our own client uses too


def build_webhook_registry(settings: Settings, cluster: ClusterInfo) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    _login(registry)

    @kopf.on.mutate("pods", id=HANDLER_ID, operations=["CREATE"], registry=registry)
    async def inject(body: kopf.Body, **_: Any) -> None:
        # The patch goes to the response through patch_relay, not kopf's ``patch`` (see there why).
        try:
            outcome = admit(dict(body), settings.sidecar, native_sidecars_supported=cluster.native_sidecars)
        except Exception:
            metrics.admissions.labels(result="error").inc()
            logger.exception("injection failed for pod %s", _pod_name(body))
            raise kopf.AdmissionError(
                "expiry: internal error while injecting; see the operator's log", code=500
            ) from None
        if isinstance(outcome, Denied):
            metrics.admissions.labels(result="denied").inc()
            logger.info("denied pod %s: %s", _pod_name(body), outcome.message)
            raise kopf.AdmissionError(outcome.message, code=outcome.code)
        if isinstance(outcome, Injected) and outcome.changed:
            patch_relay.supply(outcome.patch)
            metrics.admissions.labels(result="injected").inc()
        else:
            metrics.admissions.labels(result="skipped").inc()

    return registry


def has_leader_handlers(settings: Settings) -> bool:
    """Whether any leader-only handler is configured (if not, no Lease and no watch at all)."""
    return settings.unprotected_pods.watch or settings.hang_reports.enabled


def build_leader_registry(settings: Settings) -> kopf.OperatorRegistry:
    """A fresh registry per leadership term: the watches run by the Lease holder only."""
    registry = kopf.OperatorRegistry()
    _login(registry)
    watchers.register(registry, settings)

    @kopf.on.cleanup(registry=registry)
    async def forget_pods(**_: Any) -> None:
        # No longer the leader (or exiting): the leader's gauge is the one to read, not a stale copy.
        metrics.unprotected_pods.clear()

    return registry


def _pod_name(body: Any) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name') or metadata.get('generateName', '')}"
