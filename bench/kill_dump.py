"""Kill latency with a pre-kill dump, one worker and a burst of 8: from the deadline to the death.

Each worker is a fresh Python process with expiry's client and ``EXPIRY_DUMP_DIR`` (so it answers on
its debug channel), hanging in ``Event.wait`` as a rank waiting in a collective does; the sidecar runs
with ``--stack-dumps``. Before the signal the sidecar asks every worker of the pod for its stacks and
flight recorder, in parallel, and waits for each answer's end (the worker closes the connection): no
settle wait. The harness waits on a pidfd for each death and reads ``time.time()`` then. The burst
figure is the last of 8 workers with one deadline: asking all 8 and signalling them.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from bench.context import Context, Row
from bench.peers import ExpiryPeer
from bench.stats import median, percentile
from bench.table import compare, ms

LEAD = 1.0
"""Seconds from starting the workers to their deadline, plus LEAD / 2 per worker: room for Python to
start on a loaded machine."""
GIVE_UP = 10.0
WORKER = """
import sys, threading, time
from expiry import FileTimerClient
FileTimerClient(sys.argv[1]).acquire("bench/dump", float(sys.argv[2]))
print("armed", flush=True)
threading.Event().wait()
"""


def burst(peer: ExpiryPeer, dumps: str, workers: int) -> list[float]:
    """Seconds from the deadline to each worker's death (one shared deadline)."""
    deadline = time.time() + LEAD * (1 + workers / 2)
    env = {**os.environ, "EXPIRY_DUMP_DIR": dumps}
    started = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(peer.fifo), repr(deadline)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for process in started:
            assert process.stdout is not None and process.stdout.readline() == "armed\n"
        if time.time() > deadline:
            raise RuntimeError("the workers took longer than the lead to start: raise LEAD")
        pidfds = {os.pidfd_open(process.pid): process for process in started}
        died: list[float] = []
        while pidfds:
            ready = select.select(list(pidfds), [], [], deadline + GIVE_UP - time.time())[0]
            if not ready:
                raise RuntimeError("a worker was never killed")
            now = time.time()
            for fd in ready:
                died.append(now - deadline)
                os.close(fd)
                pidfds.pop(fd).wait()
        return died
    finally:
        for process in started:
            process.kill()
            process.wait()


def run(ctx: Context) -> list[Row]:
    trials = ctx.size(40, 3)
    dumps = ctx.workdir / "dumps"
    single: list[float] = []
    last_of_8: list[float] = []
    peer = ExpiryPeer(ctx.workdir, "--stack-dumps", str(dumps))
    try:
        for _ in range(trials):
            single.extend(burst(peer, str(dumps), 1))
        for _ in range(ctx.size(15, 1)):
            last_of_8.append(max(burst(peer, str(dumps), 8)))
        samples = peer.scrape()
    finally:
        peer.stop()
    ok = samples.get('expiry_stack_dumps_total{result="ok"}', 0)
    kills = samples["expiry_kill_latency_seconds_count"]
    own = samples["expiry_kill_latency_seconds_sum"] / kills if kills else float("nan")
    ctx.notes.append(
        f"Kill with dump: {trials} single workers and {len(last_of_8)} bursts of 8; the sidecar dumped"
        f" {ok:.0f} workers (each answered on its"
        " debug channel). Cross-check: the sidecar's own expiry_kill_latency_seconds (deadline to signal"
        f" sent) has a mean of {own * 1e3:.2f} ms over {kills:.0f} kills."
    )
    return [
        compare(
            "kill latency with dump, median",
            "ms",
            {"expiry": median(single)},
            ms,
            goal="<= 20 ms",
            met=lambda v: v <= 0.020,
        ),
        compare("kill latency with dump, p99", "ms", {"expiry": percentile(single, 99)}, ms),
        compare("kill latency with dumps, last of 8 workers", "ms", {"expiry": median(last_of_8)}, ms),
    ]
