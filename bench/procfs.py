"""What the kernel says about a process: CPU time, context switches (wake-ups), resident memory."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all of ``pid``'s threads (fields 14 and 15 of /proc/PID/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches, summed over every thread.

    A thread that sleeps and is woken counts one voluntary switch, so the rate of these is the rate
    of wake-ups. /proc/PID/status alone reports only the main thread: each task is read.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread exited meanwhile
            continue
        for line in status.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS: the process's resident memory (RssAnon: the part that is its own, not mapped files)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no {field} for pid {pid}")
