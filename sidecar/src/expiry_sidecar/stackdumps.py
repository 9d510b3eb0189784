"""Stack dumps before a kill: what the stuck worker was doing, in the log and on the shared volume.

Just before the signal goes out, the worker's Python stacks are captured in one of two ways:

- faulthandler (the worker announced a ``dump_signal``, as expiry's client does when
  ``$EXPIRY_DUMP_DIR`` is set, see :mod:`expiry.dumps`): the sidecar sends that signal and the worker
  itself appends every thread's stack to ``DIR/<pid>.stack`` from a C signal handler, so this works
  while it is stuck in C code and needs no capability. The sidecar waits until the file stops
  growing, for at most ``wait`` seconds (1).
- py-spy (any other worker, e.g. torch's own client), when ``py-spy`` is installed and the sidecar
  may ptrace the worker (CAP_SYS_PTRACE): ``py-spy dump --pid``, for at most ``py_spy_timeout``
  seconds (5).

The stack goes to the log (one JSON line, the text cut to ``LOG_LIMIT`` characters) and in full to
``DIR/<pid>-<UTC time>.stack``; its innermost frames go to the kill's Event;
``expiry_stack_dumps_total{result="ok|failed"}`` counts them. The kill waits for the dump, off the
loop (see :mod:`.killer`): workers expiring together are dumped in parallel, and no other deadline
waits for a dump. Escalations (SIGKILL after a softer signal) are not dumped again.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from expiry_sidecar import kills
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import KillOrder, Listener

log = logging.getLogger("expiry.sidecar")

WAIT = 1.0
"""Longest wait for a faulthandler dump to appear and stop growing. It delays only this worker's
kill (dumps run off the loop, in parallel), so it can leave a loaded machine room."""
SETTLE = 0.05
"""A dump that has not grown for this long is complete. faulthandler writes all stacks in one burst
of small writes from its signal handler; a pause within it is a preemption, which 50 ms outlasts on
a loaded machine."""
POLL = 0.005
PY_SPY_TIMEOUT = 5.0
LOG_LIMIT = 12_000
"""Characters of stack in the log line: container runtimes split lines past 16 KiB."""
FRAMES = 5
"""Innermost frames of the main thread that go to the kill's Event."""

_FAULTHANDLER_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>.*)$')
_PY_SPY_FRAME = re.compile(r"^\s+(?P<func>.+?) \((?P<file>[^()]*):(?P<line>\d+)\)$")


class DumpFailed(Exception):
    pass


def find_py_spy() -> str | None:
    """``py-spy`` on the PATH, or next to the sidecar's interpreter (a virtualenv's bin)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def wait_for_dump(path: Path, start: int, wait: float) -> str:
    """What is appended to ``path`` past byte ``start`` once it stops growing (within ``wait`` s)."""
    give_up = time.monotonic() + wait
    size, grew_at = start, time.monotonic()
    while True:
        now = time.monotonic()
        current = _size(path)
        if current != size:
            size, grew_at = current, now
        elif size > start and now - grew_at >= SETTLE:
            break
        if now >= give_up:
            if size > start:
                break  # still growing: keep what there is
            raise DumpFailed(f"the worker wrote nothing to {path} within {wait:g}s")
        time.sleep(POLL)
    with path.open("rb") as file:
        file.seek(start)
        return file.read(size - start).decode(errors="replace")


def faulthandler_dump(worker: Worker, path: Path, wait: float) -> str:
    assert worker.dump_signal is not None
    start = _size(path)
    outcome = kills.send(worker, worker.dump_signal)
    if outcome is not kills.Outcome.DELIVERED:
        raise DumpFailed(f"the dump signal was not delivered ({outcome.value})")
    return wait_for_dump(path, start, wait)


def py_spy_dump(py_spy: str, pid: int, timeout: float) -> str:
    try:
        done = subprocess.run(
            [py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise DumpFailed(f"py-spy took longer than {timeout:g}s") from None
    except OSError as exc:
        raise DumpFailed(f"py-spy could not run: {exc}") from None
    if done.returncode != 0:
        error = next((line for line in done.stderr.splitlines() if line.strip()), "no message")
        hint = (
            " (the sidecar needs CAP_SYS_PTRACE: annotate the pod expiry.io/stack-dumps: py-spy)"
            if "ermission" in error
            else ""
        )
        raise DumpFailed(f"py-spy failed: {error.strip()}{hint}")
    return done.stdout


def innermost_frames(stack: str, limit: int = FRAMES) -> list[str]:
    """The main thread's innermost ``limit`` frames as "file:line in func", innermost last.

    faulthandler lists threads newest first (the main thread is the last block); py-spy names it
    "MainThread". Both list each thread's frames innermost first.
    """
    blocks: list[tuple[str, list[str]]] = []
    for line in stack.splitlines():
        frame = _FAULTHANDLER_FRAME.match(line) or _PY_SPY_FRAME.match(line)
        if frame and blocks:
            blocks[-1][1].append(f"{frame['file']}:{frame['line']} in {frame['func']}")
        elif line.startswith(("Thread ", "Current thread ")):
            blocks.append((line, []))
    if not blocks:
        return []
    main = next((frames for header, frames in blocks if '"MainThread"' in header), None)
    if main is None:
        main = blocks[-1][1]
    return main[:limit][::-1]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class StackDumper(Listener):
    def __init__(
        self,
        directory: Path,
        *,
        wait: float = WAIT,
        py_spy: str | None = None,
        py_spy_timeout: float = PY_SPY_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.wait = wait
        self.py_spy = py_spy
        self.py_spy_timeout = py_spy_timeout
        self.results: Counter[str] = Counter()
        self._lock = threading.Lock()
        """Kills are prepared in parallel threads."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("stack dumps will fail: cannot create %s: %s", directory, exc)
        with contextlib.suppress(OSError):  # trainers may run as another uid: let them write, as in /tmp
            directory.chmod(0o1777)

    def before_kill(self, order: KillOrder) -> None:
        if order.escalation:
            return
        worker = order.worker
        fields: dict[str, object] = {"pid": worker.pid, "scope": order.scope_id}
        try:
            mechanism, stack = self._capture(worker)
        except DumpFailed as exc:
            self._count("failed")
            log.warning("no stack dump of pid %d: %s", worker.pid, exc, extra={**fields, "reason": str(exc)})
            return
        self._count("ok")
        order.frames.extend(innermost_frames(stack))
        fields.update(mechanism=mechanism, file=self._save(worker.pid, stack))
        if len(stack) > LOG_LIMIT:
            fields.update(stack=stack[:LOG_LIMIT], stack_truncated=True)
        else:
            fields.update(stack=stack)
        log.warning("stack of the stuck worker", extra=fields)

    def _count(self, result: str) -> None:
        with self._lock:
            self.results[result] += 1

    def _capture(self, worker: Worker) -> tuple[str, str]:
        if worker.dump_signal is not None:
            return "faulthandler", faulthandler_dump(
                worker, self.directory / f"{worker.pid}.stack", self.wait
            )
        if self.py_spy is not None:
            return "py-spy", py_spy_dump(self.py_spy, worker.pid, self.py_spy_timeout)
        raise DumpFailed(
            "the worker announced no dump signal (expiry's client does when EXPIRY_DUMP_DIR is set)"
            " and py-spy is not installed"
        )

    def _save(self, pid: int, stack: str) -> str | None:
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        path = self.directory / f"{pid}-{stamp}.stack"
        try:
            path.write_text(stack)
        except OSError as exc:
            log.warning("could not save the stack dump to %s: %s", path, exc, extra={"pid": pid})
            return None
        return str(path)
