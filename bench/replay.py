"""A worker that replays a trace through expiry's real client: ``python -m bench.replay FILE START``.

FILE holds JSON ``[[scope, seconds or null, requested], ...]`` in real seconds (already scaled).
For each block from START on, it prints ``INDEX MONOTONIC`` (CLOCK_MONOTONIC just before the
acquire) and runs the block: ``with expires(after=requested, scope=scope): sleep(seconds)``; a
null is the hang. The harness learns from the last line printed which block a kill ended.

The harness side, :func:`until_death`, runs one such worker until it dies (bench.detection and
bench.restarts both replay through it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from expiry import expires

ROOT = Path(__file__).parent.parent


@dataclass(frozen=True)
class Death:
    """How a replaying worker ended."""

    status: int
    """Its exit status (0: every block ran; -9: SIGKILLed)."""
    index: int
    """The last block it started."""
    seconds: float
    """Real seconds from that block's start to the worker's death."""


def until_death(path: Path, start: int, fifo: Path, hang: Callable[[int], bool], give_up: float) -> Death:
    """Run a worker replaying ``path`` from block ``start`` against ``fifo`` until it ends. Once it
    starts a block for which ``hang`` is true, it is given ``give_up`` seconds to be killed, then
    SIGTERMed (a missed hang)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.replay", str(path), str(start)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={"TORCHELASTIC_TIMER_FILE": str(fifo), "PATH": "/usr/bin:/bin"},
    )
    assert worker.stdout is not None
    index, at = start, time.monotonic()
    for line in worker.stdout:  # until the worker dies (or, given up on, is stopped below)
        number, when = line.split()
        index, at = int(number), float(when)
        if hang(index):
            _give_up_after(worker, give_up)
    died = time.monotonic()
    return Death(worker.wait(), index, died - at)


def _give_up_after(worker: subprocess.Popen[str], seconds: float) -> None:
    """SIGTERM the worker if the sidecar has not killed it after ``seconds`` (it then counts as missed)."""
    timer = threading.Timer(seconds, lambda: worker.poll() is None and worker.terminate())
    timer.daemon = True
    timer.start()


def main() -> None:
    path, start = sys.argv[1], int(sys.argv[2])
    with open(path) as file:
        blocks = json.load(file)
    for index in range(start, len(blocks)):
        scope, seconds, requested = blocks[index]
        print(index, time.monotonic(), flush=True)
        with expires(after=requested, scope=scope):
            if seconds is None:
                threading.Event().wait()
            time.sleep(seconds)


if __name__ == "__main__":
    main()
