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
import re
import select
from dataclasses import dataclass

from expiry import names
from expiry.procstat import starttime

ENVIRON_MAX = 1 << 20
"""Bytes of a worker's environment read at most (the kernel's own limit on it is far larger)."""
_CONTAINER_PREFIX = f"{names.CONTAINER_ENV}=".encode()
_CONTAINER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A container name as Kubernetes allows it (an RFC 1123 label): anything else is not the operator's."""


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
    container: str = ""
    """The worker's container, from its environment (names.CONTAINER_ENV, set by the operator); "" when
    unset or unreadable (another user, no ptrace access): its blocks are then learned per scope alone."""

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
    worker = Worker(
        pid, actual if actual is not None else -1, pidfd, _cmdline(pid), container=_container(pid)
    )
    # The start time was read after the pidfd was opened: if the pidfd's process is still alive now,
    # the pid still named it when /proc was read, so the start time is that process's own.
    if actual is None or worker.has_exited():
        worker.close()
        raise NotAttached(pid, "gone")
    if claimed_starttime is not None and claimed_starttime != actual:
        worker.close()
        raise NotAttached(pid, "identity")
    return worker


def _container(pid: int) -> str:
    """The value of names.CONTAINER_ENV in the process's initial environment ("" when absent)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read(ENVIRON_MAX)
    except OSError:  # EACCES: the worker runs as another user, or the sidecar may not ptrace-read it
        return ""
    for item in environ.split(b"\0"):
        if item.startswith(_CONTAINER_PREFIX):
            name = item[len(_CONTAINER_PREFIX) :].decode(errors="replace")
            return name if _CONTAINER_NAME.fullmatch(name) else ""
    return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
