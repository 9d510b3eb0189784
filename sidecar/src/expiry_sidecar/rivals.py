"""Other processes reading the timer FIFO: a second timer server, found and named.

A FIFO with two readers splits what is written to it between them at random: an acquire read by
one server and its release by the other becomes a kill of a worker that finished its block, or a
hang no one kills. torchrun does exactly this when ``TORCHELASTIC_ENABLE_FILE_TIMER=1`` (in a
manifest the operator never saw, or in a launch script): its agent starts torch's own
FileTimerServer on ``TORCHELASTIC_TIMER_FILE``, the sidecar's FIFO, at every restart.

The sidecar takes the FIFO's path back whenever it is replaced (see ``daemon.Sidecar._check_fifo``);
this module finds, among the processes the sidecar sees (the pod's, with a shared process namespace),
any other one holding the sidecar's FIFO, or a FIFO that replaced it, open for reading: a log line
naming its pid and command, the gauge ``expiry_fifo_competing_readers``, and a callback (the
Kubernetes Event) for each newcomer. One scan reads the fd links of each process and stats only
those that name a file: a few milliseconds for a pod (25 ms for 130 processes of a loaded host), so
scans run on a thread of their own, never on the loop that keeps deadlines.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from expiry.names import TORCH_FILE_TIMER_ENV

log = logging.getLogger("expiry.sidecar")

Inode = tuple[int, int]
"""(st_dev, st_ino): a file's identity, whatever name it has or had."""
PROC = Path("/proc")
MAX_SUSPECTS = 8
HINT = (
    f"two readers split the timer requests between them; torchrun does this with {TORCH_FILE_TIMER_ENV}=1"
    " (torch's FileTimerServer on TORCHELASTIC_TIMER_FILE): unset it, the sidecar is the timer server"
)


@dataclass(frozen=True)
class Reader:
    pid: int
    cmdline: str


def all_pids(proc: Path = PROC) -> list[int]:
    """Every process this one sees: in a pod with a shared process namespace, the pod's."""
    return [int(name) for name in os.listdir(proc) if name.isdigit()]


def readers(inodes: Collection[Inode], pids: Iterable[int], proc: Path = PROC) -> list[Reader]:
    """The processes among ``pids`` (this one excepted) holding one of ``inodes`` open for reading."""
    own = os.getpid()
    return [
        Reader(pid, _cmdline(proc / str(pid)))
        for pid in pids
        if pid != own and _reads_any(proc / str(pid), inodes)
    ]


def _reads_any(process: Path, inodes: Collection[Inode]) -> bool:
    try:
        entries = os.scandir(process / "fd")
    except OSError:  # exited, or not ours to look at
        return False
    with entries:
        for entry in entries:
            try:
                if not os.readlink(entry.path).startswith("/"):  # pipe:[..], socket:[..], anon_inode:..
                    continue
                found = os.stat(entry.path)
                if (found.st_dev, found.st_ino) in inodes and _readable(process / "fdinfo" / entry.name):
                    return True
            except OSError:  # closed meanwhile
                continue
    return False


def _readable(fdinfo: Path) -> bool:
    for line in fdinfo.read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8) & os.O_ACCMODE != os.O_WRONLY
    return False


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


MIN_GAP = 2.0
"""Seconds between two scans that ``soon()`` asked for."""


class RivalWatch:
    """Keeps ``count`` (the gauge) current and reports each reader when it appears."""

    def __init__(
        self,
        own_fifo: Inode,
        *,
        pids: Callable[[], Iterable[int]] = all_pids,
        on_new: Callable[[Reader], None] = lambda reader: None,
    ) -> None:
        self.own_fifo = own_fifo
        """The FIFO the sidecar reads now (set by the loop's thread when it takes a new one)."""
        self._pids = pids
        self._on_new = on_new
        self._suspects: deque[Inode] = deque(maxlen=MAX_SUSPECTS)
        self._reported: set[int] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.count = 0

    def start(self, interval: float, settle: float, *, gap: float = MIN_GAP) -> None:
        """Scan every ``interval`` seconds, and ``settle`` seconds after a ``soon()``, but never
        twice within ``gap`` seconds (torch's client opens the FIFO for every request)."""
        self._thread = threading.Thread(
            target=self._run, args=(interval, settle, gap), name="expiry-rivals", daemon=True
        )
        self._thread.start()

    def soon(self) -> None:
        """Scan again shortly (a FIFO just replaced ours, or someone opened ours: a reader may show)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self, interval: float, settle: float, gap: float) -> None:
        last = -gap
        while True:
            if self._wake.wait(interval):
                self._stop.wait(max(settle, last + gap - time.monotonic()))
                self._wake.clear()  # the soon()s of the wait are answered by this scan
            if self._stopping:
                return
            last = time.monotonic()
            try:
                self.check()
            except Exception:  # a background thread must outlive any surprise of /proc
                log.exception("could not scan for other readers of the timer FIFO")

    def suspect(self, inode: Inode) -> None:
        """A FIFO that took the place of ours: whoever reads it is a rival too."""
        self._suspects.append(inode)

    def check(self) -> None:
        found = readers({self.own_fifo, *self._suspects}, self._pids())
        self.count = len(found)
        for reader in found:
            if reader.pid not in self._reported:
                log.error(
                    "another process reads the timer FIFO: %s",
                    HINT,
                    extra={"pid": reader.pid, "cmdline": reader.cmdline},
                )
                self._on_new(reader)
        self._reported = {reader.pid for reader in found}


class RivalGauge(Collector):
    def __init__(self, watch: RivalWatch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "expiry_fifo_competing_readers",
            "Other processes holding the timer FIFO (or a FIFO put in its place) open for reading",
            value=self.watch.count,
        )


def event_note(reader: Reader) -> str:
    """The Kubernetes Event's text for a rival reader."""
    return f"pid {reader.pid} ({reader.cmdline[:200] or 'command line unknown'}) reads the timer FIFO: {HINT}"
