"""``expiry-operator run``: kopf with the webhook, plus the health and metrics endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import kopf
import uvloop

from expiry_operator import identity, logs
from expiry_operator.apiclient import ApiClient
from expiry_operator.drain import Drain
from expiry_operator.election import LeaseClient, elect
from expiry_operator.endpoints import start_endpoints
from expiry_operator.handlers import (
    HANDLER_ID,
    ClusterInfo,
    build_leader_registry,
    build_webhook_registry,
    has_leader_handlers,
)
from expiry_operator.leader_watch import run_while_leading
from expiry_operator.leadership import Elector, Leadership
from expiry_operator.logs import LogFormat, LogLevel
from expiry_operator.settings import Settings
from expiry_operator.webhook import ExpiryWebhookServer

logger = logging.getLogger(__name__)


class _DropExpectedDenials(logging.Filter):
    """kopf logs every denial as an ERROR ("failed permanently"); handlers.py logs them as INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"Webhook {HANDLER_ID!r} failed permanently")


def run(
    settings: Settings,
    *,
    self_signed: bool = False,
    log_format: LogFormat = "json",
    log_level: LogLevel = "info",
) -> int:
    logs.configure(log_format, log_level)
    per_object = logging.getLogger("kopf.objects")  # a line per admission and per pod event otherwise
    if log_level != "debug":
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
    drain = Drain(ready, asyncio.Event(), settings.shutdown.drain_seconds)

    def serving() -> None:
        # What exists by now (modules, kopf's registry and settings, ...) lives as long as the process;
        # frozen, it is no longer scanned by every full collection: those scans of ~80k objects took
        # ~55 ms each, stalled every admission in flight and were the p99 latency under load.
        gc.freeze()
        if not drain.stop.is_set() and not drain.draining:
            ready.set()

    cluster = ClusterInfo()
    operator_settings = _kopf_settings()
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
    runners = await start_endpoints(
        health_port=settings.health.port, metrics_port=settings.metrics.port, ready=ready
    )
    # Created before kopf starts: kopf cancels, when it stops, every task created after it started.
    leader_tasks = _start_leader_only(settings)
    try:
        # kopf.operator() without its signal handlers: SIGTERM drains (drain.py) instead of stopping.
        existing = asyncio.all_tasks()
        tasks = await kopf.spawn_tasks(
            registry=build_webhook_registry(settings, cluster),
            settings=operator_settings,
            clusterwide=True,
            standalone=True,
            stop_flag=drain.stop,
        )
        drain.install(asyncio.get_running_loop())
        await kopf.run_tasks(tasks, ignored=existing)
    finally:
        for task in leader_tasks:  # the watches first, then the Lease: never two watchers at once
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in runners:
            await runner.cleanup()


def _kopf_settings() -> kopf.OperatorSettings:
    operator_settings = kopf.OperatorSettings()
    operator_settings.posting.level = logging.WARNING  # our own Events only, not every handler log line
    return operator_settings


def _start_leader_only(settings: Settings) -> list[asyncio.Task[None]]:
    """The pod watches, in the replica holding the Lease (or always, with leader election off)."""
    if not has_leader_handlers(settings):
        return []
    leadership = Leadership()
    election = settings.leader_election
    registry = functools.partial(build_leader_registry, settings)
    tasks = [asyncio.create_task(run_while_leading(leadership, registry, _kopf_settings))]
    if not election.enabled:
        leadership.set(True)
        return tasks
    namespace = election.lease_namespace or identity.own_namespace()
    me = identity.own_identity()
    logger.info("leader election: lease %s/%s, identity %s", namespace, election.lease_name, me)
    client = LeaseClient(election.lease_name, namespace, ApiClient(timeout=election.timing.retry_period))
    tasks.append(asyncio.create_task(elect(client, Elector(me, election.timing), leadership)))
    return tasks
