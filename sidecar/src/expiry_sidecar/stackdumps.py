"""Stack dumps before a kill: what the stuck worker was doing, in the log and on the shared volume.

Just before the signal goes out, the worker's Python stacks are captured in one of three ways:

- the debug channel (expiry's client, with ``$EXPIRY_DUMP_DIR`` set, answers on
  ``DIR/<pid>.sock``, see :mod:`expiry.debug` and :mod:`.askworker`): its stacks and, when torch has
  one, its flight recorder, whose latest collective goes into the kill (``collective``). The first
  kill of a burst asks every worker of the pod that has a channel, in parallel, and waits for all of
  their answers (each bounded, ``askworker.TIMEOUT``) before its signal: so each worker's collective
  is read before any worker of the burst is signalled (a signalled peer would end the collective the
  others wait in). Kills within ``BURST`` seconds of the first use those answers. The answer is
  complete when the worker closes the connection: no settle wait.
- faulthandler, when the worker did not answer (it announced a ``dump_signal``, as expiry's client
  does when ``$EXPIRY_DUMP_DIR`` is set, see :mod:`expiry.dumps`): the sidecar sends that signal and
  the worker itself appends every thread's stack to ``DIR/<pid>.stack`` from a C signal handler, so
  this works while it is stuck in C code and needs no capability. The sidecar waits until the file
  stops growing, for at most ``wait`` seconds (1).
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
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path

from expiry_sidecar import askworker, collectives, kills
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
BURST = 1.0
"""Seconds after a burst's first kill during which later kills use the answers it collected (the
kill Events' burst window too)."""
ASKERS = 16
"""Workers asked at once: a pod rarely has more than 8."""
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
        self.peers: Callable[[], Iterable[Worker]] = lambda: ()
        """Every worker the sidecar watches (the daemon sets it): asked at a burst's first kill."""
        self._lock = threading.Lock()
        """Kills are prepared in parallel threads."""
        self._askers = ThreadPoolExecutor(ASKERS, thread_name_prefix="expiry-ask")
        self._burst_at: float | None = None
        self._asked: dict[int, tuple[int, Future[dict[str, object]]]] = {}
        """In the current burst: pid -> (start time, its answer)."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("stack dumps will fail: cannot create %s: %s", directory, exc)
        with contextlib.suppress(OSError):  # trainers may run as another uid: let them write, as in /tmp
            directory.chmod(0o1777)

    def slow(self, order: KillOrder) -> bool:
        return not order.escalation

    def before_kill(self, order: KillOrder) -> None:
        if order.escalation:
            return
        worker = order.worker
        fields: dict[str, object] = {"pid": worker.pid, "scope": order.scope_id}
        try:
            mechanism, stack, recorder = self._capture(order)
        except DumpFailed as exc:
            self._count("failed")
            log.warning("no stack dump of pid %d: %s", worker.pid, exc, extra={**fields, "reason": str(exc)})
            return
        self._count("ok")
        order.frames.extend(innermost_frames(stack))
        collective = collectives.latest(recorder)
        if collective is not None:
            order.collective.update(collective)
        fields.update(mechanism=mechanism, collective=collective, file=self._save(worker.pid, stack))
        if len(stack) > LOG_LIMIT:
            fields.update(stack=stack[:LOG_LIMIT], stack_truncated=True)
        else:
            fields.update(stack=stack)
        log.warning("stack of the stuck worker", extra=fields)

    def _count(self, result: str) -> None:
        with self._lock:
            self.results[result] += 1

    def _capture(self, order: KillOrder) -> tuple[str, str, object]:
        """(mechanism, stack, flight-recorder dump or None); the ranks the worker told go to ``order``."""
        worker = order.worker
        answer = self._answer(worker)
        if answer is not None:
            order.told_ranks.update(askworker.told_ranks(answer))
            return "debug-channel", str(answer["stack"]), answer.get("flight_recorder")
        if worker.dump_signal is not None:
            path = self.directory / f"{worker.pid}.stack"
            return "faulthandler", faulthandler_dump(worker, path, self.wait), None
        if self.py_spy is not None:
            return "py-spy", py_spy_dump(self.py_spy, worker.pid, self.py_spy_timeout), None
        raise DumpFailed(
            "the worker announced no dump signal (expiry's client does when EXPIRY_DUMP_DIR is set)"
            " and py-spy is not installed"
        )

    def _answer(self, worker: Worker) -> dict[str, object] | None:
        """The worker's answer on its debug channel, asked with the rest of its burst; None: fall back."""
        with self._lock:
            now = time.monotonic()
            if self._burst_at is None or now - self._burst_at > BURST:
                self._burst_at, self._asked = now, {}
            if worker.pid not in self._asked:  # the burst's first kill, or a worker new to it
                for each in (*self.peers(), worker):
                    path = askworker.channel(self.directory, each.pid)
                    if each.pid not in self._asked and path is not None:
                        asked = self._askers.submit(askworker.ask, path, each.starttime)
                        self._asked[each.pid] = (each.starttime, asked)
            burst = [asked for _, asked in self._asked.values()]
            mine = self._asked.get(worker.pid)
        wait_all(burst)  # every answer of the burst before any signal (each within askworker.TIMEOUT)
        if mine is None or mine[0] != worker.starttime:
            return None
        try:
            return mine[1].result()
        except askworker.NoAnswer as exc:
            log.info(
                "pid %d did not answer on its debug channel: %s", worker.pid, exc, extra={"pid": worker.pid}
            )
            return None

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
