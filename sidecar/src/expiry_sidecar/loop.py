"""The event loop: sleeps until a request arrives, a worker exits or the next deadline passes.

One ``epoll`` waits on the FIFO, on a pidfd per watched worker, on a wake-up pipe for signals and on
an alarm (:mod:`.alarm`, a timerfd) set to the next deadline, which wakes it on time; its timeout,
the same time rounded up to whole milliseconds, is the safety net (none when no timer is armed), so
an idle server does not wake at all. Reads drain the FIFO in 64 KiB chunks, at most ``MAX_READS_PER_TURN`` per
turn, so deadlines are checked between chunks even under a flood.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from expiry_sidecar.alarm import Alarm
from expiry_sidecar.fifo import FifoReader
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import TimerServer

log = logging.getLogger("expiry.sidecar")

MAX_READS_PER_TURN = 16


@dataclass(frozen=True)
class _FdWatch:
    on_ready: Callable[[], None]
    once: bool


class ServeLoop:
    def __init__(self, reader: FifoReader) -> None:
        self.reader = reader
        self._selector = selectors.DefaultSelector()
        self._selector.register(reader.fd, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._alarm = Alarm.open()
        if self._alarm is not None:
            self._selector.register(self._alarm.fd, selectors.EVENT_READ, None)
        self._stopping = False
        self._stop_status = 0
        self.periodic: list[tuple[float, Callable[[], None]]] = []
        """(interval, check) pairs run every ``interval`` seconds; only optional features use them."""
        self._later: list[tuple[float, Callable[[], None]]] = []
        """(monotonic time, call) pairs: one-off calls (see ``call_later``)."""
        self.on_exit: dict[int, Callable[[], None]] = {}
        """Extra pidfds to watch (e.g. the command in local mode) -> what to do when they turn readable."""

    def replace_reader(self, reader: FifoReader) -> FifoReader:
        """Read ``reader`` from now on; returns the old one, still open, for a last drain."""
        old, self.reader = self.reader, reader
        self._selector.unregister(old.fd)
        self._selector.register(reader.fd, selectors.EVENT_READ, None)
        return old

    def watch(self, worker: Worker) -> None:
        if worker.pidfd is not None:
            self._selector.register(worker.pidfd, selectors.EVENT_READ, worker)

    def unwatch(self, worker: Worker) -> None:
        if worker.pidfd is not None:
            self._selector.unregister(worker.pidfd)

    def watch_fd(self, fd: int, on_ready: Callable[[], None], *, once: bool = True) -> None:
        """Call ``on_ready`` when ``fd`` turns readable: the first time only (e.g. the pidfd of the
        command in local mode), or, with ``once=False``, every time (``on_ready`` must drain it)."""
        self._selector.register(fd, selectors.EVENT_READ, _FdWatch(on_ready, once))

    def call_later(self, delay: float, call: Callable[[], None]) -> None:
        """Call ``call`` once, on the loop, ``delay`` seconds from now (only from the loop's thread)."""
        self._later.append((time.monotonic() + delay, call))

    def stop(self, status: int = 0) -> None:
        """Ask the loop to end after this turn (safe from signal handlers)."""
        self._stopping = True
        self._stop_status = status
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"\0")

    def stop_on_signals(self, *signums: int) -> None:
        for signum in signums:
            signal.signal(signum, lambda signum, frame: self.stop())

    def run(self, server: TimerServer, ready: Callable[[], None] = lambda: None) -> int:
        ready()
        next_periodic = {check: 0.0 for _, check in self.periodic}
        while not self._stopping:
            with server.lock:
                timeout = server.seconds_to_next_deadline()
                now = server.clock.monotonic()
                for interval, check in self.periodic:
                    if next_periodic[check] <= now:
                        check()
                        next_periodic[check] = now + interval
                    wait = next_periodic[check] - now
                    timeout = wait if timeout is None else min(timeout, wait)
                timeout = self._run_due_calls(timeout)
            if self._alarm is not None:
                self._alarm.ring_in(timeout)
            events = self._selector.select(timeout)
            with server.lock:  # one turn: readers in other threads (scrapes) see it whole
                for key, _ in events:
                    self._dispatch(server, key)
                server.expire_due()
                server.book.flush()
        return self._stop_status

    def _run_due_calls(self, timeout: float | None) -> float | None:
        """Run the one-off calls that are due; returns ``timeout`` shortened to the next one's time."""
        now = time.monotonic()
        due = [call for when, call in self._later if when <= now]
        self._later = [(when, call) for when, call in self._later if when > now]
        for call in due:
            call()
        for when, _ in self._later:
            timeout = when - now if timeout is None else min(timeout, when - now)
        return timeout

    def _dispatch(self, server: TimerServer, key: selectors.SelectorKey) -> None:
        if key.fd == self.reader.fd:
            for _ in range(MAX_READS_PER_TURN):
                chunk = self.reader.read()
                if not chunk:
                    break
                server.receive(chunk)
        elif key.fd == self._wake_r:
            while True:
                try:
                    if not os.read(self._wake_r, 512):
                        break
                except BlockingIOError:
                    break
        elif self._alarm is not None and key.fd == self._alarm.fd:
            self._alarm.clear()
        elif isinstance(key.data, Worker):
            server.worker_exited(key.data.pid)
        elif isinstance(key.data, _FdWatch):
            if key.data.once:
                self._selector.unregister(key.fd)
            key.data.on_ready()

    def close(self) -> None:
        self._selector.close()
        if self._alarm is not None:
            self._alarm.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
