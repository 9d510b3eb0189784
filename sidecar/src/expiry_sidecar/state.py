"""Armed timers on disk, so that a restarted sidecar, even one that was SIGKILLed, keeps them.

The state file is a journal of JSON lines on the shared volume::

    {"expiry_state": 1, "boot_id": "5b1c..."}           header
    ["arm", pid, starttime, scope, deadline, signal]     deadline: CLOCK_MONOTONIC seconds
    ["release", pid, scope]
    ["forget", pid]

- Appending costs one ``write()`` per loop turn, of only the net change: a scope armed and
  released within the same turn never reaches the disk. The kernel keeps what was written even if
  the process is killed the next instant; only a crash of the whole machine loses the tail, and
  that ends the pod (and its emptyDir) anyway.
- When the journal grows past a few times the live timers it is rewritten as a snapshot: a temp
  file, fsync, rename: atomic, so a reader sees the old file or the new one, never half of one.
- Monotonic deadlines are valid across processes of one boot; the header's boot id tells. A file
  from another boot, or one that does not parse (except a torn last line, which a kill mid-write
  leaves), is reported, set aside as ``<file>.corrupt-<time>`` and replaced: never fatal.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from expiry_sidecar.timers import Timer, TimerBook

log = logging.getLogger("expiry.sidecar")

VERSION = 1
COMPACT_FACTOR = 4
COMPACT_SLACK = 4096


@dataclass(frozen=True)
class SavedTimer:
    pid: int
    starttime: int
    scope_id: str
    deadline: float
    signal: int


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class StateError(ValueError):
    pass


def parse(text: str, expected_boot: str) -> list[SavedTimer]:
    """The timers a journal leaves armed; raise StateError when it cannot be trusted."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # torn last line: the writer died mid-write; what came before stands
    if not lines:
        return []
    try:
        header = json.loads(lines[0])
    except ValueError as exc:
        raise StateError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("expiry_state") != VERSION:
        raise StateError(f"not an expiry state file (version {VERSION}): {lines[0][:80]!r}")
    if header.get("boot_id") != expected_boot:
        raise StateError("written before the machine last booted: its monotonic deadlines mean nothing now")
    armed: dict[tuple[int, str], SavedTimer] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            op = json.loads(line)
            match op:
                case ["arm", int(pid), int(start), str(scope), float() | int() as deadline, int(sig)]:
                    armed[(pid, scope)] = SavedTimer(pid, start, scope, float(deadline), sig)
                case ["release", int(pid), str(scope)]:
                    armed.pop((pid, scope), None)
                case ["forget", int(pid)]:
                    for key in [key for key in armed if key[0] == pid]:
                        del armed[key]
                case _:
                    raise StateError(f"line {number}: unknown entry {line[:80]!r}")
        except ValueError as exc:
            raise StateError(f"line {number}: {exc}") from None
    return list(armed.values())


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.boot = boot_id()
        self.errors = 0
        self._fd: int | None = None
        self._lines = 0

    def load(self) -> list[SavedTimer]:
        """What the previous sidecar left armed; a bad file is set aside and reported."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            return self._set_aside(str(exc))
        try:
            return parse(text, self.boot)
        except StateError as exc:
            return self._set_aside(str(exc))

    def _set_aside(self, why: str) -> list[SavedTimer]:
        self.errors += 1
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            self.path.rename(aside)
        except OSError:
            aside = self.path
        log.error("state file unusable, starting without it: %s", why, extra={"state_file": str(aside)})
        return []

    def rewrite(self, timers: Iterator[Timer], starttime_of: Callable[[int], int]) -> None:
        """Replace the journal by a snapshot of ``timers``, atomically."""
        header = json.dumps({"expiry_state": VERSION, "boot_id": self.boot})
        body = [header] + [_arm(t, starttime_of(t.pid)) for t in timers]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as out:
            out.write("\n".join(body) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._lines = len(body)

    @property
    def lines(self) -> int:
        """How many lines the journal holds."""
        return self._lines

    def append(self, lines: list[str]) -> None:
        """Append journal lines in one write (a short write, on a full volume, is an error)."""
        assert self._fd is not None, "rewrite() first"
        data = ("\n".join(lines) + "\n").encode()
        if os.write(self._fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write")
        self._lines += len(lines)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _arm(timer: Timer, starttime: int) -> str:
    return json.dumps(["arm", timer.pid, starttime, timer.scope_id, timer.deadline, timer.signal])


class JournaledBook(TimerBook):
    """A TimerBook that records its changes in a StateFile, flushed once per loop turn.

    A write that fails (the volume is full, or gone) never stops the sidecar: the timers stay armed
    in memory, the failure is logged once and counted, and every ``RETRY_INTERVAL`` seconds a full
    snapshot is tried until one succeeds, which brings the file up to date again.
    """

    RETRY_INTERVAL = 5.0

    def __init__(
        self,
        state: StateFile,
        starttime_of: Callable[[int], int],
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.state = state
        self.starttime_of = starttime_of
        self.on_error = on_error
        self.clock = clock
        self._pending: dict[tuple[int, str], Timer | None] = {}
        self._forgotten: set[int] = set()
        self._failed_at: float | None = None
        """When the last write failed; None while the file is up to date."""

    def snapshot(self) -> None:
        """Replace the journal by what is armed now (the old file stands until the rename)."""
        self._pending.clear()
        self._forgotten.clear()
        self._write(lambda: self.state.rewrite(iter(self), self.starttime_of))

    def arm(self, pid: int, scope_id: str, deadline: float, signal: int) -> Timer:
        timer = self._pending[(pid, scope_id)] = super().arm(pid, scope_id, deadline, signal)
        return timer

    def release(self, pid: int, scope_id: str) -> bool:
        released = super().release(pid, scope_id)
        self._pending[(pid, scope_id)] = None
        return released

    def forget(self, pid: int) -> list[Timer]:
        timers = super().forget(pid)
        for key in [key for key in self._pending if key[0] == pid]:
            del self._pending[key]
        self._forgotten.add(pid)
        return timers

    def flush(self) -> None:
        """Write this turn's net changes; rewrite the journal as a snapshot when it grew too long."""
        if not (self._pending or self._forgotten):
            return
        if self._failed_at is not None:  # the journal missed changes: only a snapshot can mend it
            if self.clock() - self._failed_at >= self.RETRY_INTERVAL:
                self.snapshot()
            else:
                self._pending.clear()
                self._forgotten.clear()
            return
        lines: list[str] = [json.dumps(["forget", pid]) for pid in self._forgotten]
        for (pid, scope), timer in self._pending.items():
            if timer is None:
                lines.append(json.dumps(["release", pid, scope]))
            else:
                lines.append(_arm(timer, self.starttime_of(pid)))
        self._pending.clear()
        self._forgotten.clear()
        self._write(lambda: self.state.append(lines))
        if self._failed_at is None and self.state.lines > COMPACT_FACTOR * len(self) + COMPACT_SLACK:
            self.snapshot()

    def _write(self, write: Callable[[], object]) -> None:
        try:
            write()
        except OSError as exc:
            if self._failed_at is None:
                log.error(
                    "cannot write the state file (%s): timers stay armed in memory; retrying every %gs",
                    exc,
                    self.RETRY_INTERVAL,
                    extra={"state_file": str(self.state.path)},
                )
                self.on_error()
            self._failed_at = self.clock()
        else:
            if self._failed_at is not None:
                log.info("the state file is written again", extra={"state_file": str(self.state.path)})
            self._failed_at = None
