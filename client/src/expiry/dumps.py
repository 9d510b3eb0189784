"""Stack dumps on request: the worker writes its own Python stacks when the sidecar asks.

When ``$EXPIRY_DUMP_DIR`` is set (the operator sets it when the pod's stack dumps are on), the first
timer client of a process registers :func:`faulthandler.register` for :data:`DUMP_SIGNAL`, writing
every thread's stack to ``$EXPIRY_DUMP_DIR/<pid>.stack``, and its acquire requests announce the
signal (``dump_signal``). Before killing the worker, the sidecar sends that signal and collects the
file. faulthandler dumps from a C signal handler, without the GIL, so it works even while the worker
is stuck in C code (a collective, a deadlock), and the sidecar needs no ptrace capability.

The same registration starts the debug channel (:mod:`expiry.debug`): a thread that answers the
sidecar with the stacks and torch's flight recorder on ``$EXPIRY_DUMP_DIR/<pid>.sock``. The sidecar
asks there first; the signal is the fallback for a worker that cannot answer (one holding the GIL).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
from pathlib import Path
from typing import IO

from expiry import debug
from expiry.names import DUMP_DIR_ENV

log = logging.getLogger("expiry")

DUMP_SIGNAL = signal.SIGRTMIN + 6
"""A real-time signal: SIGUSR1/SIGUSR2 are taken by frameworks (Lightning's SLURM requeue, ...), and
glibc keeps the first real-time signals for itself. Its default action ends the process, so only a
process that announced it (having registered the handler) is ever sent it."""

_registered: tuple[int, IO[bytes]] | None = None
"""(pid, file) of the registration; a forked child registers again under its own pid."""


def enable() -> int | None:
    """Register the dump handler in this process if ``$EXPIRY_DUMP_DIR`` is set; the signal, or None."""
    global _registered
    directory = os.environ.get(DUMP_DIR_ENV)
    if not directory:
        return None
    pid = os.getpid()
    if _registered is not None and _registered[0] == pid:
        return DUMP_SIGNAL
    path = Path(directory) / f"{pid}.stack"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = path.open("ab", buffering=0)
        faulthandler.register(DUMP_SIGNAL, file=file, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("expiry: no stack dumps: cannot register a dump handler writing to %s: %s", path, exc)
        return None
    if _registered is not None:
        _registered[1].close()  # the parent's file, inherited across fork
    _registered = (pid, file)
    debug.start(directory)
    return DUMP_SIGNAL
