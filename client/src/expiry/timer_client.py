"""``FileTimerClient``: arms and releases timers on the server; torch's class, made cheap and robust.

Same constructor and methods as ``torch.distributed.elastic.timer.FileTimerClient``, so either can be
passed wherever the other is expected. The differences are what happens underneath:

- the FIFO stays open between requests instead of being opened and closed for every one (except
  when torchrun's own FileTimerServer is the reader, which needs a writer that closes);
- a full pipe is waited out, a restarted server is reconnected to, and the timers this process has
  armed are re-armed on the new server (see :mod:`expiry.pipe`);
- requests carry the writer's start time, so the server never mistakes a later process that
  reuses the pid for the worker;
- with ``$EXPIRY_DUMP_DIR`` set, acquires announce a stack-dump signal (see :mod:`expiry.dumps`).
"""

from __future__ import annotations

import os
import signal as _signal
import threading
from collections.abc import Iterator

from expiry import dumps, procstat
from expiry.names import TORCH_FILE_TIMER_ENV
from expiry.pipe import PipeWriter
from expiry.wire import Request, encode


class FileTimerClient:
    def __init__(
        self,
        file_path: str,
        signal: int = _signal.SIGKILL,
        *,
        connect_timeout: float = 5.0,
        full_timeout: float = 30.0,
        keep_open: bool | None = None,
    ) -> None:
        """``keep_open`` (default: True unless ``TORCHELASTIC_ENABLE_FILE_TIMER`` is set, i.e. the
        server is torchrun's own FileTimerServer) keeps the FIFO open between requests."""
        if keep_open is None:
            keep_open = not os.environ.get(TORCH_FILE_TIMER_ENV)
        self._file_path = file_path
        self.signal = int(signal)
        self._pipe = PipeWriter(
            file_path,
            connect_timeout=connect_timeout,
            full_timeout=full_timeout,
            replay=self._armed_lines,
            keep_open=keep_open,
        )
        self._pid = os.getpid()
        self._starttime = procstat.starttime()
        self._dump_signal = dumps.enable()
        self._armed: dict[str, bytes] = {}
        """scope -> the acquire line last sent for it, replayed after a reconnect."""
        self._armed_lock = threading.Lock()

    @property
    def file_path(self) -> str:
        return self._file_path

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Arm (or re-arm) ``scope_id`` to expire at ``expiration_time``, wall-clock epoch seconds."""
        line = encode(self._request(scope_id, expiration_time, self.signal))
        with self._armed_lock:
            self._armed[scope_id] = line
        self._pipe.write(line)

    def release(self, scope_id: str) -> None:
        """Disarm ``scope_id``; releasing a scope that is not armed is harmless."""
        line = encode(self._request(scope_id, -1, 0))
        with self._armed_lock:
            self._armed.pop(scope_id, None)
        self._pipe.write(line)

    def close(self) -> None:
        self._pipe.close()

    def _request(self, scope_id: str, expiration_time: float, signal: int) -> Request:
        if os.getpid() != self._pid:
            self._after_fork()
        dump_signal = self._dump_signal if expiration_time >= 0 else None
        return Request(self._pid, scope_id, expiration_time, signal, self._starttime, dump_signal)

    def _after_fork(self) -> None:
        """A forked child is a new worker: its own pid and start time, none of the parent's timers."""
        self._pid = os.getpid()
        self._starttime = procstat.starttime()
        self._dump_signal = dumps.enable()
        self._armed_lock = threading.Lock()
        self._armed = {}
        self._pipe.after_fork()

    def _armed_lines(self) -> Iterator[bytes]:
        with self._armed_lock:
            lines = list(self._armed.values())
        yield from lines
