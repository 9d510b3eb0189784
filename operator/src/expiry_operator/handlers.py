"""The kopf handlers: the mutating webhook ``expiry-inject``, and the watches ``watchers`` adds."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import kopf

from expiry_operator import metrics, patch_relay, watchers
from expiry_operator.injection import Denied, Injected, admit
from expiry_operator.settings import Settings

HANDLER_ID = "expiry-inject"  # the webhook path is /expiry-inject: the chart points there
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ClusterInfo:
    """Learned from the API server once the operator has logged in (see webhook.ExpiryWebhookServer)."""

    native_sidecars: bool = False
    known: bool = False


def build_registry(settings: Settings, cluster: ClusterInfo) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # kopf's own minimal logins: in a pod, the service account; elsewhere, $KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

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

    watchers.register(registry, settings)
    return registry


def _pod_name(body: Any) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name') or metadata.get('generateName', '')}"
