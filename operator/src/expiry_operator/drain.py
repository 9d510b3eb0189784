"""Shutdown with a drain: on SIGTERM, stop being ready but keep answering admission for a while.

A replica that stops at once fails the admission reviews the API server still sends it while its
endpoint is being removed (the webhook then fails open and an opted-in pod starts unprotected). On
SIGTERM the operator instead turns /readyz to 503 (the Service stops routing to it), keeps serving the
webhook for ``drain_seconds``, and only then stops. A second SIGTERM, or SIGINT (Ctrl+C in a
terminal), stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal

logger = logging.getLogger(__name__)


class Drain:
    """Owns the ``ready`` flag the endpoints report and the ``stop`` flag the kopf operator waits for."""

    def __init__(self, ready: asyncio.Event, stop: asyncio.Event, drain_seconds: float) -> None:
        self.ready, self.stop = ready, stop
        self.drain_seconds = drain_seconds
        self.draining = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take SIGTERM and SIGINT over (from kopf, whose handlers stop at once): call after kopf spawned."""
        loop.add_signal_handler(signal.SIGTERM, self.signalled, signal.SIGTERM, loop)
        loop.add_signal_handler(signal.SIGINT, self.signalled, signal.SIGINT, loop)

    def signalled(self, signum: signal.Signals, loop: asyncio.AbstractEventLoop) -> None:
        if signum is signal.SIGINT or self.draining or self.drain_seconds <= 0:
            logger.info("%s: stopping now", signum.name)
            self.ready.clear()
            self.stop.set()
            return
        self.draining = True
        self.ready.clear()
        logger.info(
            "%s: draining: not ready, still answering admission for %g s, then stopping",
            signum.name,
            self.drain_seconds,
        )
        loop.call_later(self.drain_seconds, self._drained)

    def _drained(self) -> None:
        logger.info("drained: stopping")
        self.stop.set()
