"""A process holding many armed timers (far in the future) on a server, for as long as it lives."""

from __future__ import annotations

import signal
import time

from bench.children import Channel, Child
from bench.peers import Peer

HORIZON = 3600.0


def hold(peer: Peer, timers: int) -> tuple[Child, int]:
    """Arm ``timers`` timers from a new process; returns it once the server holds them all, and how
    often the client found the pipe full (retried after 1 ms: this is setup, not a measurement)."""

    def body(channel: Channel) -> None:
        client = peer.client()
        expiration = time.time() + HORIZON
        full = 0
        for number in range(timers):
            while True:
                try:
                    client.acquire(f"bench/held-{number}", expiration)
                    break
                except BlockingIOError:
                    full += 1
                    time.sleep(0.001)
        channel.send(full)
        while True:
            signal.pause()

    child = Child(body)
    full: int = child.receive()
    peer.wait_armed(timers)
    return child, full


def release(peer: Peer, holder: Child) -> None:
    """End the holder and wait until the server has dropped its timers."""
    holder.close()
    deadline = time.monotonic() + 120
    while peer.counts()[1] and time.monotonic() < deadline:
        time.sleep(0.05)
