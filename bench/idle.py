"""Idle cost: a server's CPU use and wake-ups per second while nothing happens, with 0 and 10,000
timers armed (deadlines an hour away).

Before measuring, one client arms and releases a timer, so each server is past its start-up (torch's
watchdog thread blocks in ``open()`` until the first client). Wake-ups are context switches of all
the server's threads (/proc/PID/task/*/status); CPU is utime + stime (/proc/PID/stat).
"""

from __future__ import annotations

import time

from bench import procfs
from bench.children import Channel, Child
from bench.context import Context, Row
from bench.holders import hold
from bench.peers import Peer
from bench.stats import median
from bench.table import compare

ARMED = 10_000


def touch(peer: Peer) -> None:
    """One acquire and release from a process that then exits; waits until the server saw both."""
    base = peer.requests_seen()

    def body(channel: Channel) -> None:
        client = peer.client()
        client.acquire("bench/touch", time.time() + 60)
        client.release("bench/touch")

    child = Child(body)
    child.wait()
    child.close()
    while peer.requests_seen() < base + 2:
        time.sleep(0.01)


def window(peer: Peer, seconds: float) -> tuple[float, float]:
    """(wake-ups per second, CPU %) over ``seconds`` of doing nothing."""
    switches, cpu = procfs.context_switches(peer.pid), procfs.cpu_seconds(peer.pid)
    time.sleep(seconds)
    switches = procfs.context_switches(peer.pid) - switches
    cpu = procfs.cpu_seconds(peer.pid) - cpu
    return switches / seconds, 100 * cpu / seconds


def run(ctx: Context) -> list[Row]:
    rounds, seconds, settle = ctx.size(2, 1), ctx.size(5, 1), 0.5 if ctx.quick else 2.0
    rows = []
    with ctx.servers() as servers:
        holders = []
        for armed in (0, ARMED):
            for peer in servers.values():
                if armed:
                    holders.append(hold(peer, ctx.size(armed, 100))[0])
                else:
                    touch(peer)
            time.sleep(settle)
            wakeups: dict[str, list[float]] = {name: [] for name in ctx.peers}
            cpu: dict[str, list[float]] = {name: [] for name in ctx.peers}
            for name in ctx.alternating(rounds):
                rate, percent = window(servers[name], seconds)
                wakeups[name].append(rate)
                cpu[name].append(percent)
            label = f"{armed:,} timers armed"
            rows.append(
                compare(
                    f"idle wake-ups, {label}",
                    "per s",
                    {n: median(v) for n, v in wakeups.items()},
                    lambda v: f"{v:.3g}",
                    goal="<= 1",
                    met=lambda v: v <= 1,
                )
            )
            rows.append(
                compare(
                    f"idle CPU, {label}",
                    "% of a core",
                    {n: median(v) for n, v in cpu.items()},
                    lambda v: f"{v:.2g}",
                )
            )
        for holder in holders:
            holder.close()
    return rows
