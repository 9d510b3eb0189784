"""Scaling: the server's CPU time per request while 10, 1,000 or 100,000 other timers are armed.

A holder process arms the timers (deadlines an hour away); one writer then sends acquire/release
pairs (see :mod:`bench.blast`); the figure is the server's CPU time over the run divided by the
requests it received, so it includes whatever the server does per loop for the armed timers
(torch's watchdog scans every timer and probes every pid each 0.1 s, requests or not).
"""

from __future__ import annotations

from bench.blast import blast
from bench.context import Context, Row
from bench.holders import hold, release
from bench.table import compare, us

ARMED = (10, 1_000, 100_000)
ARMED_QUICK = (10, 100, 1_000)


def run(ctx: Context) -> list[Row]:
    requests = {"expiry": ctx.size(200_000, 2_000), "torch": ctx.size(20_000, 500)}
    rows = []
    with ctx.servers() as servers:
        for held in ARMED_QUICK if ctx.quick else ARMED:
            cost: dict[str, float | str] = {}
            for name, peer in servers.items():
                holder, full = hold(peer, held)
                try:
                    run = blast(peer, 1, requests[name])
                finally:
                    release(peer, holder)
                cost[name] = run.cpu / run.received if run.received else "nothing received"
                if run.accounting():
                    ctx.notes.append(f"Scaling, {name}, {held:,} armed: {run.accounting()}")
                if full:
                    ctx.notes.append(
                        f"Scaling, {name}: arming {held:,} timers met a full pipe {full:,} times"
                        " (BlockingIOError in the client; retried after 1 ms)"
                    )
            rows.append(compare(f"CPU per request, {held:,} timers armed", "µs", cost, us))
    return rows
