"""The server's end of the timer FIFO.

The FIFO is opened for reading without blocking, and the server also holds a write end of its own:
while any writer is open a FIFO never reads as end-of-file, so the loop never spins on EOF between
clients, and clients can open the FIFO the moment the server is up. The pipe buffer is enlarged
(up to the system's pipe-max-size) so a burst from many clients waits in the kernel, not in them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
READ_SIZE = 1 << 16


def ensure_fifo(path: str | Path) -> None:
    """Create the FIFO (and its directory) unless it exists; refuse a path that is something else."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        os.mkfifo(path, 0o666)
        os.chmod(path, 0o666)  # writable by trainers of any uid sharing the volume, whatever the umask
        return
    if not stat.S_ISFIFO(mode):
        raise FileExistsError(
            errno.EEXIST, "exists and is not a FIFO; remove it or choose another --fifo", str(path)
        )


class FifoReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        ensure_fifo(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._keepalive = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # pipe-max-size may be lower; the default 64 KiB then
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, min(PIPE_SIZE, _pipe_max_size()))

    def read(self) -> bytes:
        """What is in the pipe now, up to READ_SIZE bytes; b"" when empty."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return b""

    def still_linked(self) -> bool:
        """False once the FIFO was deleted or replaced: clients can no longer find this one."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            return False

    def close(self) -> None:
        os.close(self._keepalive)
        os.close(self.fd)


def _pipe_max_size() -> int:
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        return PIPE_SIZE
