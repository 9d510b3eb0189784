"""Sustained throughput: requests per second a server consumes from 1, 4 and 16 writer processes.

Each run sends a fixed number of acquire/release pairs (see :mod:`bench.blast`); the figure is the
median rate over alternating runs, requests sent / (first write -> server has consumed the last).
"""

from __future__ import annotations

from bench.blast import Blast, blast
from bench.context import Context, Row
from bench.stats import median
from bench.table import compare, count

WRITERS = (1, 4, 16)
GOAL = 200_000


def run(ctx: Context) -> list[Row]:
    rounds = ctx.size(3, 1)
    requests = {"expiry": ctx.size(600_000, 4_000), "torch": ctx.size(60_000, 1_000)}
    rows = []
    with ctx.servers() as servers:
        for writers in WRITERS:
            runs: dict[str, list[Blast]] = {name: [] for name in ctx.peers}
            for name in ctx.alternating(rounds):
                runs[name].append(blast(servers[name], writers, requests[name]))
            values: dict[str, float | str] = {}
            for name, done in runs.items():
                values[name] = median([b.rate for b in done])
                problems = [b.accounting() for b in done if b.accounting()]
                if problems:
                    ctx.notes.append(f"Throughput, {name}, {writers} writer(s): " + " | ".join(problems))
                if not all(b.exact for b in done):
                    values[name] = f"{count(median([b.rate for b in done]))} (count off: see notes)"
            rows.append(
                compare(
                    f"throughput, {writers} writer{'s' if writers > 1 else ''}",
                    "requests/s",
                    values,
                    count,
                    higher_is_better=True,
                    goal=f">= {GOAL:,}",
                    met=lambda v: v >= GOAL,
                )
            )
    return rows
