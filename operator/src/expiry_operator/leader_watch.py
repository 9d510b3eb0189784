"""The leader-only kopf handlers run as a second kopf operator, started and stopped with the Lease.

kopf has no switch to pause one operator's watches except its peering, which needs a CRD the chart
would have to own (KopfPeering), and its per-event ``when=`` filters still list and watch every pod
in every replica. So the leader-only handlers live in a registry of their own, and this module runs
a kopf operator for that registry only while this replica holds the Lease: a non-leader opens no
watch at all. The operator runs on its own thread and event loop, kopf's documented way of embedding
it (stopped by a ``stop_flag``): two kopf operators on one event loop would cancel each other's
tasks when one stops (kopf's ``run_tasks`` ends by cancelling every task of its loop).

Each term builds a fresh registry (``factory``): its handlers start from an empty memory, and a
``@kopf.on.cleanup`` handler in it can reset what the term exported (the gauges of a replica that no
longer watches must not keep stale values).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import kopf
import uvloop

from expiry_operator.leadership import Leadership

logger = logging.getLogger(__name__)
RegistryFactory = Callable[[], kopf.OperatorRegistry]


KOPF_RUNNING_LOGGER = "kopf._core.reactor.running"
"""The logger of kopf's notice below, by name only (tests/operator/test_kopf_api.py checks its words)."""


class _QuietThreadNotice(logging.Filter):
    """kopf warns that a non-main thread ignores OS signals: intended here (the main thread has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("OS signals are ignored")


class ThreadedOperator:
    """One kopf operator for ``registry`` on a thread of its own, until ``stop()``.

    ``on_end`` is called (from that thread) when it has ended, for whatever reason.
    """

    def __init__(
        self, registry: kopf.OperatorRegistry, settings: kopf.OperatorSettings, on_end: Callable[[], object]
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._on_end = on_end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="expiry-leader-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._thread.join()

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(
                    kopf.operator(
                        registry=self._registry,
                        settings=self._settings,
                        clusterwide=True,
                        standalone=True,
                        stop_flag=self._stop,
                    )
                )
        except Exception:
            logger.exception("the leader-only watches stopped with an error")
        finally:
            self._on_end()


async def run_while_leading(
    leadership: Leadership,
    factory: RegistryFactory,
    settings_factory: Callable[[], kopf.OperatorSettings],
    *,
    restart_delay: float = 2.0,
) -> None:
    """Run the leader-only operator whenever ``leadership`` says so; stop it when it does not.

    Started before the main kopf operator and it creates no task of its own: kopf, when it stops,
    cancels every task created after it started.
    """
    logging.getLogger(KOPF_RUNNING_LOGGER).addFilter(_QuietThreadNotice())
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    leadership.notify(wake)
    while True:
        await leadership.wait_leading()
        term = ThreadedOperator(factory(), settings_factory(), lambda: loop.call_soon_threadsafe(wake.set))
        term.start()
        try:
            while leadership.leading and term.running:
                wake.clear()
                if leadership.leading and term.running:
                    await wake.wait()
        finally:
            term.stop()
            await asyncio.to_thread(term.join)
        if leadership.leading:  # it ended on its own while we lead: start it again, not in a busy loop
            logger.error("the leader-only watches ended while leading; restarting in %.0f s", restart_delay)
            await asyncio.sleep(restart_delay)
