"""Starts one container's process inside a pod run by tests/support/podrunner.py, as runc would.

Run through ``nsenter`` into the pod's PID and mount namespaces, as root, with a JSON spec: changes
root into the container's root file system, then drops to what the container may have (in runc's
order): the capability bounding set, the supplementary groups, the gid, the uid, the remaining
capability sets, ``no_new_privs``; then execs the command with exactly the container's environment,
so the process keeps this pid (the container's main process).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAPABILITY_VERSION_3 = 0x20080522


class CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def main() -> None:
    spec = json.loads(sys.argv[1])
    libc = ctypes.CDLL("libc.so.6", use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)}")

    keep: list[int] = spec["capabilities"]
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    os.chroot(spec["root"])
    os.chdir(spec["workingDir"])
    for cap in range(last_cap + 1):
        if cap not in keep:
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    if keep:
        check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keeping capabilities across setuid")
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    mask = sum(1 << cap for cap in keep)
    header = CapHeader(CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)(
        CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
        CapData(mask >> 32, mask >> 32, 0),
    )
    check(libc.capset(ctypes.byref(header), data), "setting capabilities")
    # No ambient capabilities, as containerd and CRI-O start containers: a non-root command loses its
    # permitted and effective capabilities at exec (kubernetes/kubernetes#56374); root keeps its own.
    if spec["noNewPrivs"]:
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    argv: list[str] = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    main()
