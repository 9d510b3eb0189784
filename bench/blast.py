"""Writer processes blasting acquire/release pairs at a server, with exact accounting.

Each writer is forked, makes its server's client, and waits; all are released at once. The clock
runs from that moment until the server has consumed everything the writers sent; then the
server's own request count must equal what the writers' clients say they sent. A request the
client failed to send (torch's client raises BlockingIOError when the pipe is full) is counted
as an error, with the first such error's text, and is not expected at the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench import procfs
from bench.children import Channel, Child
from bench.peers import Peer

EXACT_TIMEOUT = 30.0
POLL = 0.005


@dataclass
class Blast:
    seconds: float
    sent: int
    errors: int
    first_error: str
    received: int
    cpu: float
    """Server CPU seconds (all its threads) over the run."""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    @property
    def exact(self) -> bool:
        return self.received == self.sent

    def accounting(self) -> str:
        """What to print when the count is off or requests failed; "" when all is exact."""
        parts = []
        if not self.exact:
            parts.append(f"server counted {self.received:,} of {self.sent:,} sent")
        if self.errors:
            parts.append(f"{self.errors:,} requests failed in the client ({self.first_error})")
        return "; ".join(parts)


def writer(peer: Peer, number: int, pairs: int) -> Child:
    def body(channel: Channel) -> None:
        client = peer.client()
        scope = f"bench/writer-{number}"
        channel.send("ready")
        channel.wait_go()
        errors: list[OSError] = []
        acquire, release, expiration = client.acquire, client.release, time.time() + 3600
        for _ in range(pairs):
            try:
                acquire(scope, expiration)
            except OSError as exc:
                errors.append(exc)
            try:
                release(scope)
            except OSError as exc:
                errors.append(exc)
        first_error = f"{type(errors[0]).__name__}: {errors[0]}" if errors else ""
        channel.send({"sent": 2 * pairs - len(errors), "errors": len(errors), "first_error": first_error})

    return Child(body)


def blast(peer: Peer, writers: int, requests: int) -> Blast:
    """``writers`` processes sending ``requests`` requests in all (acquire/release pairs)."""
    pairs = max(1, requests // (2 * writers))
    base = peer.requests_seen()
    children = [writer(peer, number, pairs) for number in range(writers)]
    try:
        for child in children:
            child.receive()
        cpu = procfs.cpu_seconds(peer.pid)
        start = time.monotonic()
        for child in children:
            child.go()
        reports = []
        for child in children:
            reports.append(child.receive())
        sent = sum(r["sent"] for r in reports)
        while not peer.caught_up(base + sent):
            time.sleep(POLL)
        seconds = time.monotonic() - start
        cpu = procfs.cpu_seconds(peer.pid) - cpu
    finally:
        for child in children:
            child.close()
    received = _settled_count(peer, base + sent) - base
    return Blast(
        seconds,
        sent,
        sum(r["errors"] for r in reports),
        next((r["first_error"] for r in reports if r["first_error"]), ""),
        received,
        cpu,
    )


def _settled_count(peer: Peer, expected: int) -> int:
    """The server's count once it reaches ``expected``, or whatever it says after EXACT_TIMEOUT."""
    give_up = time.monotonic() + EXACT_TIMEOUT
    while True:
        seen = peer.requests_seen()
        if seen >= expected or time.monotonic() > give_up:
            return seen
        time.sleep(0.05)
