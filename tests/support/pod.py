"""A stand-in for a pod with ``shareProcessNamespace: true``: a fresh PID namespace.

Its PID 1 behaves like the pause container (it reaps orphans and does nothing else); processes are
started into the namespace with ``nsenter``, so they see each other, and only each other, under
their namespace pids, exactly as the sidecar and the trainers of one pod do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PAUSE = "import signal\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\nwhile True:\n    signal.pause()\n"


REUSE_PID = """
import subprocess, sys
with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # the next pid handed out is this + 1
    f.write(str(int(sys.argv[1]) - 1))
code = "import os, time; print(os.getpid(), flush=True); time.sleep(3600)"
subprocess.Popen([sys.executable, "-c", code]).wait()
"""


def can_make_pods() -> str | None:
    """Why pods cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root for unshare --pid"
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return "needs unshare and nsenter (util-linux)"
    return None


class Pod:
    """``volumes``: directories that get an empty tmpfs (mode 1777, as an emptyDir) seen only in the
    pod; ``path:size=16k`` limits its size."""

    def __init__(self, workdir: Path, volumes: Sequence[str] = ()) -> None:
        self.workdir = workdir
        mounts = "".join(
            f"mkdir -p {path} && mount -t tmpfs -o mode=1777{',' + size if size else ''} volume {path} && "
            for path, _, size in (v.partition(":") for v in volumes)
        )
        self._unshare = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                f'{mounts}exec "$0" -c "$1"',
                sys.executable,
                PAUSE,
            ],
            start_new_session=True,
            stderr=subprocess.DEVNULL,  # unshare complains of the SIGKILL that ends the pod
        )
        self.init_host_pid = self._wait_for_init()
        self._init_pidfd = os.pidfd_open(self.init_host_pid)
        """PID 1 is signalled through it: never a process that took its pid after it died."""
        self.processes: list[subprocess.Popen[str]] = []

    def _wait_for_init(self) -> int:
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        for _ in range(500):
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
            time.sleep(0.01)
        raise RuntimeError("the pod's PID 1 did not start")

    def start(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[str]:
        """Start ``argv`` in the pod; the Popen is nsenter's, which exits as the process does."""
        cmd = ["nsenter", f"--target={self.init_host_pid}", "--pid", "--mount", "--", *argv]
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("text", True)
        process = subprocess.Popen(cmd, **popen)
        self.processes.append(process)
        return process

    def python(self, *args: str, **popen: Any) -> subprocess.Popen[str]:
        return self.start([sys.executable, *args], **popen)

    def reuse_pid(self, pid: int) -> subprocess.Popen[str]:
        """Start a sleeping innocent process that gets ``pid`` (free again, after its owner died)."""
        innocent = self.python("-c", REUSE_PID, str(pid))
        assert innocent.stdout is not None
        assert int(innocent.stdout.readline()) == pid, "could not reuse the pid"
        return innocent

    def close(self) -> None:
        """End the pod: when its PID 1 dies the kernel kills everything left in the namespace."""
        if self._init_pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
            os.close(self._init_pidfd)
            self._init_pidfd = -1
        self._unshare.wait(timeout=10)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            for stream in (process.stdin, process.stdout):
                if stream:
                    stream.close()
