"""Kill latency: from a timer's deadline to the worker being dead, seen from outside the server.

A forked worker arms one timer ``AFTER`` seconds ahead with the server's own client, reports the
wall-clock deadline it sent, and hangs: it execs ``sleep``, staying the same process (pid, start
time) in a small address space. Without that, its death would include the kernel tearing down a
copy of the harness's torch-sized address space (~5 ms here), a cost of the worker, not the server.
The harness waits on a pidfd for the worker's death and reads ``time.time()`` then: lateness =
death - deadline, on the same clock the deadline was written in. Trials alternate between the
servers. The sidecar's own ``expiry_kill_latency_seconds`` histogram is read afterwards as a
cross-check (it stops its clock when the signal is sent, so it reads lower). The floor of this
measurement is measured too (:func:`floor`): the harness signals such a worker itself and sees it dead
through the same pidfd, so what is the kernel's and the harness's own is not taken for the server's.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import time

from bench.children import Channel, Child
from bench.context import Context, Row
from bench.peers import ExpiryPeer, Peer
from bench.stats import median, percentile
from bench.table import compare, ms

AFTER = 0.2
SLEEP = shutil.which("sleep") or "/bin/sleep"
GIVE_UP = 10.0
"""A worker still alive this long after its deadline counts as missed (and is killed by the harness)."""


def trial(peer: Peer) -> float | None:
    """Seconds from deadline to death, or None if the server never killed the worker."""

    def worker(channel: Channel) -> None:
        client = peer.client()
        deadline = time.time() + AFTER
        client.acquire("bench/kill", deadline)
        channel.send(deadline)
        os.execv(SLEEP, ["sleep", "3600"])

    child = Child(worker)
    try:
        deadline = child.receive()
        pidfd = os.pidfd_open(child.pid)
        try:
            dead = select.select([pidfd], [], [], AFTER + GIVE_UP)[0]
            died = time.time()
        finally:
            os.close(pidfd)
        if not dead:
            return None
        status = child.wait()
        if not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGKILL:
            raise RuntimeError(f"the {peer.name} worker ended with wait status {status}, not by SIGKILL")
        return float(died - deadline)
    finally:
        child.close()


def floor(trials: int) -> float:
    """Median seconds from the harness's own SIGKILL to the worker's death seen on its pidfd."""

    def worker(channel: Channel) -> None:
        channel.send("ready")
        os.execv(SLEEP, ["sleep", "3600"])

    seen: list[float] = []
    for _ in range(trials):
        child = Child(worker)
        try:
            child.receive()
            time.sleep(AFTER / 4)  # the exec done: a worker asleep, as at its deadline
            pidfd = os.pidfd_open(child.pid)
            try:
                sent = time.time()
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                select.select([pidfd], [], [], GIVE_UP)
                seen.append(time.time() - sent)
            finally:
                os.close(pidfd)
            child.wait()
        finally:
            child.close()
    return median(seen)


def run(ctx: Context) -> list[Row]:
    trials = ctx.size(50, 3)
    lateness: dict[str, list[float]] = {name: [] for name in ctx.peers}
    missed = dict.fromkeys(ctx.peers, 0)
    with ctx.servers() as servers:
        for name in ctx.alternating(trials):
            late = trial(servers[name])
            if late is None:
                missed[name] += 1
            else:
                lateness[name].append(late)
        expiry = servers["expiry"]
        assert isinstance(expiry, ExpiryPeer)
        samples = expiry.scrape()
        own_count = samples["expiry_kill_latency_seconds_count"]
        own_mean = samples["expiry_kill_latency_seconds_sum"] / own_count if own_count else float("nan")
    harness = floor(ctx.size(30, 3))
    ctx.notes.append(
        f"Kill latency: {trials} trials per server, deadline {AFTER:g} s after arming. Cross-check: the"
        f" sidecar's own expiry_kill_latency_seconds histogram counted {own_count:.0f} kills, mean"
        f" {own_mean * 1e3:.2f} ms (deadline to signal sent; the harness adds the kernel's teardown"
        f" of the worker and its own wake-up). The floor of this measurement: the harness's own SIGKILL"
        f" to the death it sees, median {harness * 1e3:.2f} ms (the kernel's teardown and the harness's"
        " wake-up, in every figure above)."
        + "".join(f" {name}: {n} worker(s) never killed." for name, n in missed.items() if n)
    )
    return [
        compare(
            "kill latency, median",
            "ms",
            {n: median(v) for n, v in lateness.items()},
            ms,
            goal="<= 1.5 ms",
            met=lambda v: v <= 0.0015,
        ),
        compare(
            "kill latency, p99",
            "ms",
            {n: percentile(v, 99) for n, v in lateness.items()},
            ms,
            goal="<= 20 ms",
            met=lambda v: v <= 0.020,
        ),
    ]
