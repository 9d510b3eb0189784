"""Kills carried out off the loop: a bounded pool of threads, reports handed back through a pipe.

The loop orders a kill (:meth:`TimerServer._order`) and goes back to its deadlines at once; a pool
thread does the slow part (stack dump, pod condition, then the signal, see
:func:`~expiry_sidecar.server.carry_out`) and queues the report, writing a byte to a pipe the loop
watches; the loop then takes the reports (:meth:`KillPool.collect`) and does the bookkeeping. So
workers that expire together are dumped and signalled in parallel (up to ``THREADS`` at a time),
and a deadline due during a dump is kept on time. Threads are started on the first kills only.
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from expiry_sidecar.server import KillReport

THREADS = 32
"""Kills prepared at once; more wait for a free thread. A pod rarely has more than 8 workers."""


class KillPool:
    def __init__(self, threads: int = THREADS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="expiry-kill")
        self._done: queue.SimpleQueue[KillReport] = queue.SimpleQueue()
        self.fd, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        """Readable when reports are waiting: the loop watches it and calls collect()."""

    def dispatch(self, job: Callable[[], KillReport]) -> None:
        self._pool.submit(self._run, job)

    def _run(self, job: Callable[[], KillReport]) -> None:
        self._done.put(job())
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake, b"\0")

    def collect(self, on_report: Callable[[KillReport], None]) -> None:
        """On the loop: hand every report that is back to ``on_report``."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 512):
                pass
        while True:
            try:
                report = self._done.get_nowait()
            except queue.Empty:
                return
            on_report(report)

    def close(self, on_report: Callable[[KillReport], None]) -> None:
        """Wait for the kills under way (each is bounded), then collect their reports."""
        self._pool.shutdown(wait=True)
        self.collect(on_report)
        os.close(self.fd)
        os.close(self._wake)
