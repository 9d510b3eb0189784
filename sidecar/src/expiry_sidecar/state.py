"""Armed timers on disk, so that a restarted sidecar, even one that was SIGKILLed, keeps them.

The state file is a journal of JSON lines on the shared volume::

    {"expiry_state": 1, "boot_id": "5b1c..."}           header
    ["arm", pid, starttime, scope, deadline, signal, armed_at, requested]
                                                         CLOCK_MONOTONIC seconds (the last two may
                                                         be absent or null: unknown)
    ["release", pid, scope]
    ["forget", pid]
    ["blocks", 1, {scope: statistics, ...}]              learned block durations (blocks.py), by
                                                         scope; a later entry replaces a scope's
    ["blocks", 1, {...}, {"budget": {"kills": [t, ...], "spent_at": t}}]
                                                         and the false-kill budget (budget.py),
                                                         monotonic; the last one rules

- Appending costs one ``write()`` per loop turn, of only the net change: a scope armed and
  released within the same turn never reaches the disk. The kernel keeps what was written even if
  the process is killed the next instant; only a crash of the whole machine loses the tail, and
  that ends the pod (and its emptyDir) anyway.
- Block statistics are written the same way: each turn, the scopes whose statistics changed; the
  false-kill budget each turn it counted a kill, as a fourth element of a statistics entry: a sidecar
  older than it refuses that entry as statistics it cannot read (learns afresh) and keeps its timers,
  where an entry of a new kind would make it set the whole file aside.
  A statistics entry that does not parse (or is of another version) costs only the statistics: they
  are set aside as ``<file>.blocks-corrupt-<time>``, counted, and learned afresh; the timers stand.
- When the journal grows past a few times the live timers it is rewritten as a snapshot: a temp
  file, fsync, rename: atomic, so a reader sees the old file or the new one, never half of one.
- Monotonic deadlines are valid across processes of one boot; the header's boot id tells. A file
  from another boot, or one that does not parse (except a torn last line, which a kill mid-write
  leaves), is reported, set aside as ``<file>.corrupt-<time>`` and replaced: never fatal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from signal import NSIG
from typing import Any

from expiry.wire import PID_MAX
from expiry_sidecar.blocks import BlockStats, Learned
from expiry_sidecar.budget import FalseKillBudget
from expiry_sidecar.timers import Timer, TimerBook

log = logging.getLogger("expiry.sidecar")

VERSION = 1
BLOCKS_VERSION = 1
COMPACT_FACTOR = 4
COMPACT_SLACK = 4096


@dataclass(frozen=True)
class SavedTimer:
    pid: int
    starttime: int
    scope_id: str
    deadline: float
    signal: int
    armed_at: float = math.nan
    requested: float | None = None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class StateError(ValueError):
    pass


def parse(text: str, expected_boot: str) -> list[SavedTimer]:
    """The timers a journal leaves armed; raise StateError when it cannot be trusted."""
    return parse_journal(text, expected_boot)[0]


def parse_journal(text: str, expected_boot: str | None) -> tuple[list[SavedTimer], list[Any]]:
    """The timers a journal leaves armed and its statistics entries, unchecked, in order.

    ``expected_boot`` None: accept a file from any boot (its durations are still true; the
    advisor reads them).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # torn last line: the writer died mid-write; what came before stands
    if not lines:
        return [], []
    try:
        header = json.loads(lines[0])
    except (ValueError, RecursionError) as exc:
        raise StateError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("expiry_state") != VERSION:
        raise StateError(f"not an expiry state file (version {VERSION}): {lines[0][:80]!r}")
    if expected_boot is not None and header.get("boot_id") != expected_boot:
        raise StateError("written before the machine last booted: its monotonic deadlines mean nothing now")
    armed: dict[tuple[int, str], SavedTimer] = {}
    blocks: list[Any] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            op = json.loads(line)
            match op:
                case ["arm", int(pid), int(start), str(scope), float() | int() as deadline, int(sig), *more]:
                    _check_arm(pid, deadline, sig)
                    armed_at, requested = _times(more)
                    armed[(pid, scope)] = SavedTimer(
                        pid, start, scope, float(deadline), sig, armed_at, requested
                    )
                case ["blocks", *_]:
                    blocks.append(op)
                case ["release", int(pid), str(scope)]:
                    armed.pop((pid, scope), None)
                case ["forget", int(pid)]:
                    for key in [key for key in armed if key[0] == pid]:
                        del armed[key]
                case _:
                    raise StateError(f"line {number}: unknown entry {line[:80]!r}")
        except StateError:
            raise
        except (ValueError, OverflowError) as exc:  # OverflowError: an integer too large for a float
            raise StateError(f"line {number}: {exc}") from None
        except RecursionError:
            raise StateError(f"line {number}: nested too deeply") from None
    return list(armed.values()), blocks


def _check_arm(pid: int, deadline: float, sig: int) -> None:
    """The bounds a request from the FIFO has (wire.py): a file is no way around them."""
    if not 0 < pid <= PID_MAX:
        raise ValueError(f"pid {pid} outside 1..{PID_MAX}")
    if not math.isfinite(deadline):
        raise ValueError(f"deadline {deadline} is not a finite number")
    if not -NSIG < sig < NSIG:
        raise ValueError(f"signal {sig} outside {1 - NSIG}..{NSIG - 1}")


def _times(more: list[Any]) -> tuple[float, float | None]:
    match more:
        case []:
            return math.nan, None
        case [float() | int() | None as armed_at, float() | int() | None as requested]:
            return (math.nan if armed_at is None else float(armed_at)), (
                None if requested is None else float(requested)
            )
    raise ValueError(f"bad arm times {more!r}")


def apply_blocks(entries: list[Any], stats: BlockStats) -> None:
    """Replay statistics entries into ``stats`` (a budget beside them aside: :func:`apply_budget`);
    ValueError when one is malformed or foreign."""
    for entry in entries:
        match entry:
            case ["blocks", int(version), dict(scopes), *more] if (
                version == BLOCKS_VERSION and len(more) <= 1
            ):
                stats.load(scopes)
            case ["blocks", int(version), *_] if version != BLOCKS_VERSION:
                raise ValueError(
                    f"statistics of another version ({version}, this sidecar reads {BLOCKS_VERSION})"
                )
            case _:
                raise ValueError(f"not a statistics entry: {str(entry)[:80]!r}")


def apply_budget(entries: list[Any], budget: FalseKillBudget) -> None:
    """Take the last budget the statistics entries carry into ``budget``; ValueError when malformed."""
    for entry in reversed(entries):
        match entry:
            case ["blocks", _, _, dict(extra)] if "budget" in extra:
                budget.load(extra["budget"])
                return
            case ["blocks", _, _, dict()]:
                continue
            case ["blocks", _, _, extra]:
                raise ValueError(f"not a budget: {str(extra)[:80]!r}")


def blocks_line(scopes: dict[str, Any], budget: FalseKillBudget | None = None) -> str:
    """A statistics entry: the scopes given, and the false-kill budget when given."""
    entry: list[Any] = ["blocks", BLOCKS_VERSION, scopes]
    if budget is not None:
        entry.append({"budget": budget.take()})
    return json.dumps(entry)


def read_blocks(path: Path) -> BlockStats:
    """The statistics a state file holds, from any boot (for the advisor); ValueError/OSError if unusable."""
    _, entries = parse_journal(journal_text(path.read_bytes()), None)
    stats = BlockStats()
    apply_blocks(entries, stats)
    return stats


def journal_text(data: bytes) -> str:
    """The journal's text; a torn last line may end inside a UTF-8 sequence, so only the complete
    lines must decode (StateError otherwise)."""
    complete = data.rfind(b"\n") + 1
    try:
        return data[:complete].decode() + data[complete:].decode(errors="replace")
    except UnicodeDecodeError as exc:
        raise StateError(f"not UTF-8 text at byte {exc.start}") from None


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.boot = boot_id()
        self.errors = 0
        self._fd: int | None = None
        self._lines = 0
        self._blocks: list[Any] = []

    def load(self) -> list[SavedTimer]:
        """What the previous sidecar left armed; a bad file is set aside and reported."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            return self._set_aside(str(exc))
        try:
            timers, self._blocks = parse_journal(journal_text(data), self.boot)
        except StateError as exc:
            return self._set_aside(str(exc))
        return timers

    def load_blocks(self, stats: BlockStats, budget: FalseKillBudget | None = None) -> None:
        """Fill ``stats`` (and ``budget``) with what the loaded file had learned; bad statistics are set
        aside alone; a bad budget is reported and counted afresh."""
        if budget is not None:
            try:
                apply_budget(self._blocks, budget)
            except ValueError as exc:
                self.errors += 1
                log.error("state file's false-kill budget unusable, counting afresh: %s", exc)
        try:
            apply_blocks(self._blocks, stats)
        except ValueError as exc:
            self.errors += 1
            stats.clear()
            aside = self.path.with_name(f"{self.path.name}.blocks-corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                aside.write_text("".join(json.dumps(entry) + "\n" for entry in self._blocks))
            log.error(
                "state file's block statistics unusable, learning afresh: %s",
                exc,
                extra={"state_file": str(aside)},
            )
        self._blocks = []

    def _set_aside(self, why: str) -> list[SavedTimer]:
        self.errors += 1
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            self.path.rename(aside)
        except OSError:
            aside = self.path
        log.error("state file unusable, starting without it: %s", why, extra={"state_file": str(aside)})
        return []

    def rewrite(
        self, timers: Iterator[Timer], starttime_of: Callable[[int], int], extra: Sequence[str] = ()
    ) -> None:
        """Replace the journal by a snapshot of ``timers`` (and ``extra`` lines), atomically."""
        header = json.dumps({"expiry_state": VERSION, "boot_id": self.boot})
        body = [header] + [_arm(t, starttime_of(t.pid)) for t in timers] + list(extra)
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
    armed_at = None if math.isnan(timer.armed_at) else timer.armed_at
    return json.dumps(
        ["arm", timer.pid, starttime, timer.scope_id, timer.deadline, timer.signal, armed_at, timer.requested]
    )


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
        *,
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        blocks: BlockStats | None = None,
        budget: FalseKillBudget | None = None,
    ) -> None:
        super().__init__()
        self.state = state
        self.blocks = blocks
        """Block statistics to keep in the file too (their changed scopes, each turn)."""
        self.budget = budget
        """The false-kill budget to keep in the file too (each turn it changed)."""
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
        extra = []
        # The budget only once it counted something: a pod without adaptive kills keeps files older
        # sidecars read whole.
        budget = self.budget if self.budget is not None and self.budget.counted else None
        if self.blocks is not None:
            self.blocks.dirty.clear()
            extra.append(blocks_line(self.blocks.export(), budget))
        elif budget is not None:
            extra.append(blocks_line({}, budget))
        self._write(lambda: self.state.rewrite(iter(self), self.starttime_of, extra))

    def arm(
        self,
        pid: int,
        scope_id: str,
        deadline: float,
        signal: int,
        *,
        armed_at: float = math.nan,
        requested: float | None = None,
        learned: Learned | None = None,
    ) -> Timer:
        timer = self._pending[(pid, scope_id)] = super().arm(
            pid, scope_id, deadline, signal, armed_at=armed_at, requested=requested, learned=learned
        )
        return timer

    def release(self, pid: int, scope_id: str) -> Timer | None:
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
        changed_blocks = self.blocks is not None and bool(self.blocks.dirty)
        changed_budget = self.budget is not None and self.budget.changed
        if not (self._pending or self._forgotten or changed_blocks or changed_budget):
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
        if changed_blocks or changed_budget:
            scopes = self.blocks.take_dirty() if self.blocks is not None and changed_blocks else {}
            lines.append(blocks_line(scopes, self.budget if changed_budget else None))
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
