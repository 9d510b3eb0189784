"""Worker processes, named for good by (pid, start time) and held through a pidfd.

A pid names a process only until the process exits and the kernel hands the number to another. So
the sidecar attaches to a worker when it first hears from it:

- a pidfd (Linux >= 5.3) refers to that very process: a signal sent through it can never reach a
  later process that reuses the pid, and it turns readable when the process exits, which is how
  the sidecar learns of exits without polling anything;
- the start time proves that the pid still belongs to the writer when its request is read.
  expiry's client sends its own start time; torch's sends none, so it is read from /proc on arrival.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

from expiry.procstat import starttime


class NotAttached(Exception):
    """The process that wrote the request is gone (``reason`` "gone") or is not the one now
    holding its pid (``reason`` "identity")."""

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"pid {pid}: {reason}")
        self.pid = pid
        self.reason = reason


@dataclass(eq=False)
class Worker:
    pid: int
    starttime: int
    pidfd: int | None
    """None on kernels without pidfd_open: then identity rests on the start time alone."""
    cmdline: str = ""
    """As it was when the sidecar attached: by the time a kill is reported /proc no longer has it."""
    dump_signal: int | None = None
    """The signal that makes the worker write its stacks, when its requests announced one."""

    def has_exited(self) -> bool:
        if self.pidfd is not None:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            return bool(poller.poll(0))
        return starttime(self.pid) != self.starttime

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def attach(pid: int, claimed_starttime: int | None = None) -> Worker:
    """Hold on to the process ``pid``, checking it started at ``claimed_starttime`` when given."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        raise NotAttached(pid, "gone") from None
    except OSError:  # ENOSYS: kernel older than 5.3; EINVAL/EPERM in odd sandboxes
        pidfd = None
    actual = starttime(pid)
    worker = Worker(pid, actual if actual is not None else -1, pidfd, _cmdline(pid))
    # The start time was read after the pidfd was opened: if the pidfd's process is still alive now,
    # the pid still named it when /proc was read, so the start time is that process's own.
    if actual is None or worker.has_exited():
        worker.close()
        raise NotAttached(pid, "gone")
    if claimed_starttime is not None and claimed_starttime != actual:
        worker.close()
        raise NotAttached(pid, "identity")
    return worker


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
