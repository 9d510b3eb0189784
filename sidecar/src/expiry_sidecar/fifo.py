"""The server's end of the timer FIFO.

The FIFO is opened for reading without blocking, and the server also holds a write end of its own:
while any writer is open a FIFO never reads as end-of-file, so the loop never spins on EOF between
clients, and clients can open the FIFO the moment the server is up. The pipe buffer is enlarged
(up to the system's pipe-max-size) so a burst from many clients waits in the kernel, not in them.

The FIFO's name is watched with inotify, so a FIFO someone else puts in its place (torch's
FileTimerServer does, see ``rivals``) is known at once, before any worker can write to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from inotify_simple import INotify, flags

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


def claim_fifo(path: Path) -> None:
    """Put a new FIFO at ``path`` in one step (a rename), replacing whatever is there."""
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)
    os.mkfifo(fresh, 0o666)
    os.chmod(fresh, 0o666)
    os.replace(fresh, path)


def fifo_at(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the FIFO at ``path``; None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if stat.S_ISFIFO(found.st_mode) else None


def wake_readers(path: Path) -> None:
    """Open ``path`` for writing and close it: a reader blocked opening it gets its descriptor.

    A server that opens its FIFO for reading waits until a writer comes; until then it holds no
    descriptor that would show who it is.
    """
    with contextlib.suppress(OSError):  # no reader at all (ENXIO), or gone
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))


class NameWatch:
    """An inotify descriptor that turns readable when the FIFO's name is removed, made or renamed,
    and when the FIFO is opened or a reader closes it (a client connecting, another reader coming or
    going)."""

    def __init__(self, path: Path) -> None:
        self._name = path.name
        self._inotify = INotify(nonblocking=True)
        try:
            mask = (
                flags.CREATE
                | flags.DELETE
                | flags.MOVED_FROM
                | flags.MOVED_TO
                | flags.OPEN
                | flags.CLOSE_NOWRITE
            )
            self._inotify.add_watch(path.parent, mask)
        except OSError:
            self._inotify.close()
            raise
        self.fd: int = self._inotify.fileno()

    def changes(self) -> tuple[bool, bool]:
        """Consume the pending events: (the FIFO's name changed, who holds it open changed)."""
        renamed = held = False
        for event in self._inotify.read(timeout=0):
            if event.name == self._name:
                if event.mask & (flags.OPEN | flags.CLOSE_NOWRITE):
                    held = True
                else:
                    renamed = True
        return renamed, held

    def close(self) -> None:
        self._inotify.close()


class FifoReader:
    def __init__(self, path: str | Path, *, claim: bool = False) -> None:
        """``claim``: make a new FIFO even if there is one (another server's)."""
        self.path = Path(path)
        if claim:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            claim_fifo(self.path)
        else:
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

    @property
    def inode(self) -> tuple[int, int]:
        found = os.fstat(self.fd)
        return (found.st_dev, found.st_ino)

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
