"""``expiry-operator run``: kopf with the webhook, plus the health and metrics endpoints."""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import kopf
import uvloop

from expiry_operator.endpoints import start_endpoints
from expiry_operator.handlers import HANDLER_ID, ClusterInfo, build_registry
from expiry_operator.settings import Settings
from expiry_operator.webhook import ExpiryWebhookServer

logger = logging.getLogger(__name__)


class _DropExpectedDenials(logging.Filter):
    """kopf logs every denial as an ERROR ("failed permanently"); handlers.py logs them as INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"Webhook {HANDLER_ID!r} failed permanently")


def run(settings: Settings, *, self_signed: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    per_object = logging.getLogger("kopf.objects")  # a line per admission and per pod event otherwise
    per_object.setLevel(logging.WARNING)
    per_object.addFilter(_DropExpectedDenials())
    if not self_signed:
        _run_loop(_operate(settings, Path(settings.webhook.cert_file), Path(settings.webhook.key_file)))
        return 0
    # Imported here: cryptography costs the long-running process ~9 MiB of RSS it needs only for this.
    from expiry_operator.certificates import write_self_signed

    with tempfile.TemporaryDirectory(prefix="expiry-operator-") as directory:
        cert, key = write_self_signed(Path(directory))
        logger.info("self-signed mode: the certificate (also the CA to trust) is %s", cert)
        _run_loop(_operate(settings, cert, key))
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop, as kopf's own CLI does when it is installed (it is an operator dependency)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def _operate(settings: Settings, cert: Path, key: Path) -> None:
    ready = asyncio.Event()

    def serving() -> None:
        # What exists by now (modules, kopf's registry and settings, ...) lives as long as the process;
        # frozen, it is no longer scanned by every full collection: those scans of ~80k objects took
        # ~55 ms each, stalled every admission in flight and were the p99 latency under load.
        gc.freeze()
        ready.set()

    cluster = ClusterInfo()
    operator_settings = kopf.OperatorSettings()
    operator_settings.admission.server = ExpiryWebhookServer(
        addr="0.0.0.0",
        port=settings.webhook.port,
        certfile=str(cert),
        pkeyfile=str(key),
        cluster=cluster,
        native_sidecar=settings.sidecar.native_sidecar,
        on_ready=serving,
        reload_interval=settings.webhook.cert_reload_interval,
    )
    operator_settings.posting.level = logging.WARNING  # our own Events only, not every handler log line
    runners = await start_endpoints(
        health_port=settings.health.port, metrics_port=settings.metrics.port, ready=ready
    )
    try:
        await kopf.operator(
            registry=build_registry(settings, cluster),
            settings=operator_settings,
            clusterwide=True,
            standalone=True,
        )
    finally:
        for runner in runners:
            await runner.cleanup()
