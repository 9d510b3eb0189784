"""One write end of the timer FIFO, kept open between requests.

- Opening uses ``O_NONBLOCK``: it fails at once with ENXIO while no server reads the FIFO and with
  ENOENT before the FIFO exists. Both are retried, backing off from 10 ms to 250 ms, for
  ``connect_timeout`` seconds; then :class:`ServerUnavailable` is raised.
- A full pipe (EAGAIN, the server is behind) is waited out with ``poll()`` for up to ``full_timeout``
  seconds instead of failing.
- A reader that went away (EPIPE: the server restarted) drops the connection; the next write reopens
  it, first replaying the lines ``replay()`` returns (the caller's armed timers), then writing its own.
- ``keep_open=False`` closes the pipe after every write, as torch's client does. torch's own
  ``FileTimerServer`` needs that: it reads with a blocking ``readline()`` that returns only at a
  newline or end-of-file, so a writer that stays open stalls its watchdog loop.
- Python ignores SIGPIPE, so a lost reader is an exception, never the trainer's death, unless the
  program itself restored SIGPIPE's default action.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("expiry")

_RETRIABLE_OPEN = frozenset({errno.ENXIO, errno.ENOENT})


class ServerUnavailable(BrokenPipeError):
    """No timer server read the FIFO within the connect timeout.

    A BrokenPipeError, as torch's FileTimerClient raises in that case, so handlers written for it work.
    """


class PipeWriter:
    def __init__(
        self,
        path: str,
        *,
        connect_timeout: float = 5.0,
        full_timeout: float = 30.0,
        replay: Callable[[], Iterable[bytes]] | None = None,
        keep_open: bool = True,
    ) -> None:
        self.path = path
        self.keep_open = keep_open
        self.connect_timeout = connect_timeout
        self.full_timeout = full_timeout
        self._replay = replay
        self._fd: int | None = None
        self._lost = False
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        """Write ``line`` (at most PIPE_BUF bytes, so atomically) to the server."""
        with self._lock:
            while True:
                if self._fd is None:
                    self._connect()
                try:
                    self._write_once(line)
                except BrokenPipeError:
                    self._disconnect(lost=True)
                    log.warning("expiry: timer server at %s went away; reconnecting", self.path)
                    continue
                if not self.keep_open:
                    self._disconnect(lost=False)
                return

    def close(self) -> None:
        with self._lock:
            self._disconnect(lost=False)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held at fork); the fd is shared."""
        self._lock = threading.Lock()

    def _connect(self) -> None:
        self._fd = self._open()
        if self._lost:
            self._lost = False
            log.warning("expiry: reconnected to the timer server at %s; re-arming timers", self.path)
            if self._replay is not None:
                for line in self._replay():
                    self._write_once(line)

    def _open(self) -> int:
        give_up = time.monotonic() + self.connect_timeout
        pause = 0.01
        while True:
            try:
                return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in _RETRIABLE_OPEN:
                    raise
                left = give_up - time.monotonic()
                if left <= 0:
                    why = "does not exist" if exc.errno == errno.ENOENT else "has no reader"
                    raise ServerUnavailable(
                        f"no expiry timer server at {self.path}: the FIFO {why} after"
                        f" {self.connect_timeout:g}s of retries (is the expiry-sidecar running?)"
                    ) from exc
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.25)

    def _write_once(self, line: bytes) -> None:
        assert self._fd is not None
        give_up: float | None = None
        while True:
            try:
                written = os.write(self._fd, line)
            except BlockingIOError:
                now = time.monotonic()
                give_up = give_up or now + self.full_timeout
                if now >= give_up:
                    raise TimeoutError(
                        f"the timer FIFO {self.path} stayed full for {self.full_timeout:g}s:"
                        " the expiry-sidecar is not reading"
                    ) from None
                poller = select.poll()
                poller.register(self._fd, select.POLLOUT)
                poller.poll(min(50.0, (give_up - now) * 1000))
                continue
            if written != len(line):  # impossible for a pipe write of <= PIPE_BUF bytes
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            return

    def _disconnect(self, *, lost: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._lost = self._lost or lost
