"""Kill latency with stack dumps: one worker alone, then 8 workers whose deadlines pass together.

Each worker is forked from the harness with ``EXPIRY_DUMP_DIR`` set, so expiry's client opens its
debug channel (and registers its faulthandler dump signal, the fallback); it arms one timer and
sleeps in Python. The sidecar runs with ``--stack-dumps``: before each kill it asks the worker for
its stack on the channel (the burst's first kill asks all of them), then signals. ``kill_dump``
measures the same from fresh processes, with a p99. The harness waits on a pidfd per worker and
reads ``time.time()`` at each death: lateness = death - deadline. For the 8 workers the figure is the
last one's lateness: with dumps taken one after another on the loop (as before) it would be about 8
single dumps; taken in parallel off the loop it is about one. torch's server takes no stack dumps.
"""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

from bench.children import Channel, Child
from bench.context import Context, Row
from bench.peers import ExpiryPeer
from bench.stats import median
from bench.table import compare, ms
from expiry.names import DUMP_DIR_ENV

WORKERS = 8
AFTER = 2.0
"""Seconds from forking the workers to their deadline: 8 forks arm within 0.5 s on an idle machine,
not always at a load average of 15."""
GIVE_UP = 15.0
NO_DUMPS = "n/a: takes no stack dumps"


def burst(peer: ExpiryPeer, dumps: Path, workers: int) -> list[float]:
    """Seconds from the common deadline to each worker's death."""
    deadline = time.time() + AFTER

    def worker(channel: Channel) -> None:
        os.environ[DUMP_DIR_ENV] = str(dumps)
        peer.client().acquire("bench/burst", deadline)
        channel.send("armed")
        time.sleep(3600)  # in Python, where faulthandler's dump finds it

    children = [Child(worker) for _ in range(workers)]
    try:
        for child in children:
            child.receive()
        if time.time() >= deadline:
            raise RuntimeError("the workers took longer to arm than the deadline allows; raise AFTER")
        pidfds = {os.pidfd_open(child.pid): child for child in children}
        died: list[float] = []
        try:
            while len(died) < workers:
                ready = select.select(list(pidfds), [], [], deadline + GIVE_UP - time.time())[0]
                if not ready:
                    raise RuntimeError(f"{workers - len(died)} worker(s) never killed")
                now = time.time()
                for fd in ready:
                    os.close(fd)
                    del pidfds[fd]
                    died.append(now - deadline)
        finally:
            for fd in pidfds:
                os.close(fd)
        for child in children:
            status = child.wait()
            if not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGKILL:
                raise RuntimeError(f"a worker ended with wait status {status}, not by SIGKILL")
        return died
    finally:
        for child in children:
            child.close()


def run(ctx: Context) -> list[Row]:
    rounds = ctx.size(5, 1)
    dumps = ctx.workdir / "dumps"
    single: list[float] = []
    last: list[float] = []
    with ExpiryPeer(ctx.workdir, "--stack-dumps", str(dumps)) as peer:
        for _ in range(rounds):
            single.extend(burst(peer, dumps, 1))
            last.append(max(burst(peer, dumps, WORKERS)))
        taken = peer.scrape()['expiry_stack_dumps_total{result="ok"}']
    expected = rounds * (1 + WORKERS)
    ctx.notes.append(
        f"Kill latency with stack dumps: {rounds} rounds of 1 worker, then {WORKERS} workers with one"
        f" deadline; the sidecar took {taken:.0f} of {expected} dumps (faulthandler). One after another"
        f" the {WORKERS} would take about {WORKERS} x the single figure"
        f" ({ms(WORKERS * median(single))} ms); in parallel, about one."
    )
    torch = dict.fromkeys((p for p in ctx.peers if p != "expiry"), NO_DUMPS)
    return [
        compare("kill latency with a stack dump, 1 worker", "ms", {"expiry": median(single), **torch}, ms),
        compare(
            f"kill latency with stack dumps, {WORKERS} workers at once (last)",
            "ms",
            {"expiry": median(last), **torch},
            ms,
            goal="<= 3 x 1 worker",
            met=lambda v: v <= 3 * median(single),
        ),
    ]
