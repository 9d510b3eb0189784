"""A process's start time, which together with its pid names one process for good.

Pids are reused; ``(pid, starttime)`` is not: ``starttime`` is field 22 of ``/proc/PID/stat``, the
moment the process started in clock ticks since boot.
"""

from __future__ import annotations


def starttime(pid: int | str = "self") -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and ')': split after
    # the last ')'. What follows starts at field 3, so field 22 is index 19.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])
