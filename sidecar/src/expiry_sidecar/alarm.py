"""A wake-up on time for the loop: a timerfd that the loop's epoll watches beside the FIFO.

The epoll timeout alone wakes the loop 1-2 ms after a deadline: epoll counts whole milliseconds, and
Python rounds the timeout up twice (``selectors`` rounds the seconds up to a millisecond, then
``select.epoll`` rounds that float, a hair above the millisecond, up again). A timerfd is a kernel
timer with nanosecond resolution whose descriptor turns readable when it expires, so the loop wakes
at the deadline itself; the epoll timeout stays, a millisecond or two behind, as the safety net.

Python 3.13 has ``os.timerfd_create``; on 3.11 the two calls come from the C library through ctypes.
Where that fails (no timerfd), :meth:`Alarm.open` returns None and the loop keeps the timeout alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import time
from collections.abc import Callable
from typing import Any

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
SAME = 1_000
"""Nanoseconds within which a new time is the one already set (no system call)."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Alarm:
    def __init__(self, fd: int, settime: Callable[..., Any]) -> None:
        self.fd = fd
        """Readable once the time set has come (until ``clear``)."""
        self._settime = settime
        self._at: int | None = None
        """CLOCK_MONOTONIC nanoseconds it is set for; None: not set (or it has rung)."""

    @classmethod
    def open(cls) -> Alarm | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return None
        fd = create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        return cls(fd, settime) if fd >= 0 else None

    def ring_in(self, seconds: float | None) -> None:
        """Turn readable ``seconds`` from now (None: never). Cheap when the time is already set:
        the loop calls it before every wait with the time to the same next deadline."""
        if seconds is None:
            if self._at is not None:
                self._set(0)
            return
        if seconds <= 0:  # the wait does not block
            return
        at = time.monotonic_ns() + math.ceil(seconds * 1e9)
        if self._at is None or abs(at - self._at) > SAME:
            self._set(at)

    def clear(self) -> None:
        """After it rang: make the descriptor unreadable again."""
        self._at = None
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)

    def _set(self, at: int) -> None:
        """Ring at CLOCK_MONOTONIC ``at`` nanoseconds (0: disarm)."""
        when = _Itimerspec(_Timespec(0, 0), _Timespec(*divmod(at, 1_000_000_000)))
        if self._settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(when), None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")
        self._at = at or None
