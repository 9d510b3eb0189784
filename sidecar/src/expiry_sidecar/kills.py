"""Delivering a signal to exactly one worker, and saying plainly why when it cannot be done."""

from __future__ import annotations

import enum
import logging
import os
import signal

from expiry_sidecar.processes import Worker

log = logging.getLogger("expiry.sidecar")

CAP_KILL = 5


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    PROTECTED = "protected"
    """The sidecar itself or PID 1 (the pod's pause process, or an init): never signalled."""
    GONE = "gone"
    PERMISSION = "permission"
    IDENTITY = "identity"
    ERROR = "error"
    OBSERVED = "observed"
    """Observe mode: the signal was not sent, by design."""


def is_protected(pid: int) -> bool:
    return pid in (1, os.getpid())


def send(worker: Worker, sig: int) -> Outcome:
    """Signal ``worker`` (that very process, never a reuser of its pid, never a process group)."""
    if is_protected(worker.pid):
        return Outcome.PROTECTED
    try:
        if worker.pidfd is not None:
            signal.pidfd_send_signal(worker.pidfd, sig)
        elif worker.has_exited():
            return Outcome.GONE
        else:
            os.kill(worker.pid, sig)
    except ProcessLookupError:
        return Outcome.GONE
    except PermissionError:
        log.error(permission_hint(worker.pid), extra={"pid": worker.pid, "reason": "permission"})
        return Outcome.PERMISSION
    except OSError as exc:
        log.error("signalling pid %d failed: %s", worker.pid, exc, extra={"pid": worker.pid})
        return Outcome.ERROR
    return Outcome.DELIVERED


def permission_hint(pid: int) -> str:
    """Why the kernel refused (EPERM), and what the sidecar lacks."""
    import psutil  # only on this rare path: it costs the sidecar ~1 MB to load

    try:
        owner: int | str = psutil.Process(pid).uids().real
    except psutil.Error:
        owner = "unknown"
    me = os.geteuid()
    return (
        f"the kernel refused to signal pid {pid} (EPERM): it runs as uid {owner}, the sidecar as uid {me}"
        f" {'with' if has_cap_kill() else 'without'} CAP_KILL; run the sidecar as uid {owner} (the"
        " operator copies the trainer's runAsUser) or grant it CAP_KILL"
    )


def has_cap_kill() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_KILL & 1)
    except OSError:
        pass
    return False
