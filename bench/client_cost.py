"""Client cost: wall time of one ``with expires(after=60): pass`` block in the trainer's process.

Each server's own client and its own ``expires``, writing to its real server (torch's ``expires``
finds its default scope with ``inspect.stack()``; expiry's reads one frame). Runs of the two
alternate; each figure is the median over the runs of (run time / blocks). Errors the client
raises (torch's, when its server falls behind and the pipe fills) are counted, not hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from bench.context import Context, Row
from bench.peers import Client
from bench.stats import median
from bench.table import compare, us

Block = Callable[[Client, str | None], AbstractContextManager[None]]


def expires_of(name: str) -> Block:
    if name == "torch":
        from torch.distributed.elastic.timer.api import expires as theirs

        return lambda client, scope: theirs(after=60, scope=scope, client=client)  # type: ignore[arg-type]
    from expiry import expires

    return lambda client, scope: expires(after=60, scope=scope, client=client)


def per_block(expires: Block, client: Client, scope: str | None, blocks: int) -> tuple[float, int]:
    """(seconds per block, errors raised)."""
    errors = 0
    start = time.perf_counter()
    for _ in range(blocks):
        try:
            with expires(client, scope):
                pass
        except OSError:
            errors += 1
    return (time.perf_counter() - start) / blocks, errors


def run(ctx: Context) -> list[Row]:
    rounds = ctx.size(5, 1)
    blocks = {"expiry": ctx.size(20_000, 500), "torch": ctx.size(2_000, 50)}
    cost: dict[tuple[str, str | None], list[float]] = {}
    errors: dict[str, int] = dict.fromkeys(ctx.peers, 0)
    with ctx.servers() as servers:
        clients = {name: peer.client() for name, peer in servers.items()}
        for name in ctx.alternating(rounds):
            for scope in (None, "bench/step"):
                seconds, failed = per_block(expires_of(name), clients[name], scope, blocks[name])
                cost.setdefault((name, scope), []).append(seconds)
                errors[name] += failed
    if any(errors.values()):
        ctx.notes.append(
            "Client cost: blocks that raised (counted in the time): "
            + ", ".join(f"{name} {n}" for name, n in errors.items())
        )
    return [
        compare(
            f"client cost per block, {label} scope",
            "µs",
            {name: median(cost[name, scope]) for name in ctx.peers},
            us,
            goal=goal,
            min_ratio=min_ratio,
        )
        for label, scope, goal, min_ratio in (
            ("default", None, ">= 20x cheaper", 20.0),
            ("explicit", "bench/step", "", None),
        )
    ]
