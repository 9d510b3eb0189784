"""What every figure gets (the run's settings, a place for servers) and what it gives back (rows)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers import PEERS, Peer


@dataclass
class Row:
    figure: str
    unit: str
    results: dict[str, str]
    """peer name -> the figure as printed (or why there is none)."""
    ratio: str = ""
    """How many times better expiry does than torch, when both have a number."""
    goal: str = ""
    met: bool | None = None


@dataclass
class Context:
    workdir: Path
    quick: bool
    peers: list[str]
    """The servers to measure: "expiry", and "torch" when torch is installed."""
    notes: list[str] = field(default_factory=list)
    """Cross-checks and caveats printed under the table."""

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @contextlib.contextmanager
    def server(self, name: str) -> Iterator[Peer]:
        """A fresh server of kind ``name`` for the duration of the block."""
        peer = PEERS[name](self.workdir)
        try:
            yield peer
        finally:
            peer.stop()

    @contextlib.contextmanager
    def servers(self) -> Iterator[dict[str, Peer]]:
        with contextlib.ExitStack() as stack:
            yield {name: stack.enter_context(self.server(name)) for name in self.peers}

    def alternating(self, rounds: int) -> Iterator[str]:
        """expiry, torch, expiry, torch, ...: ``rounds`` runs of each, interleaved so drift hits both."""
        for _ in range(rounds):
            yield from self.peers
