"""GPU time lost per hang: how long after a hang each deadline rule kills, and what it kills wrongly.

    .venv/bin/python -m bench.detection [--quick]

Each trace of :mod:`bench.traces` (training seconds) is replayed time-scaled (1 training second =
``SCALE`` real seconds) by a real worker (:mod:`bench.replay`, expiry's client) under a real
``expiry-sidecar serve``, once per rule:

- requested: the deadline the code asks for (1800 s), which is all torch's FileTimerServer offers;
- adaptive 3x / 5x / 10x: ``--deadlines adaptive`` (warm-up 20 blocks, floor 60 s, capped by the
  requested deadline);
- nvidia-resiliency-ext's rule, emulated through the same sidecar: 5 x the longest interval after a
  warm-up (20), no floor; heartbeats are one stream, so every block is one scope, except the first
  interval, which their separate initial timeout covers; before warm-up their default timeout (45 min).

A worker killed in a healthy block is a false kill: it is counted and the worker restarted at the
next block (as an elastic agent would, without the lost progress). The hang's delay is from its
acquire to the worker's death seen here, in training seconds, and as a multiple of the longest
healthy block of the hang's scope as the rule sees scopes (one stream without its first interval,
for nvidia-resiliency-ext's).

Worker restarts at the killed block and pod replacements, with DeadlineProfiles: :mod:`bench.restarts`
(its table is printed after this one, and added to the runner's notes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from bench.context import Context, Row
from bench.replay import until_death
from bench.traces import Block, Trace, all_traces
from tests.support.sidecar import free_port, serve_command

FLOOR = 60.0
WARM_UP = 20
NVRX_INITIAL_TIMEOUT = 3600.0
NVRX_TIMEOUT = 2700.0
"""nvidia-resiliency-ext's defaults: initial_rank_heartbeat_timeout, rank_heartbeat_timeout."""


@dataclass(frozen=True)
class Rule:
    name: str
    flags: tuple[str, ...]
    """Sidecar flags, with FLOOR still in training seconds (scaled when run)."""
    one_stream: bool = False


RULES = [
    Rule("requested (torch's server)", ("--deadlines", "requested")),
    *(
        Rule(f"adaptive {factor}x", ("--deadlines", "adaptive", "--adaptive-factor", str(factor)))
        for factor in (3, 5, 10)
    ),
    Rule(
        "nvidia-resiliency-ext (5x, one stream)", ("--deadlines", "adaptive", "--adaptive-factor", "5"), True
    ),
]


@dataclass(frozen=True)
class Outcome:
    delay: float | None
    """Training seconds from the hang's acquire to the worker's death (None: never killed)."""
    false_kills: int


def as_one_stream(trace: Trace) -> Trace:
    """Heartbeats: one scope, the first interval apart, nvidia-resiliency-ext's default timeouts."""
    blocks = [
        Block(
            "initial" if n == 0 else "heartbeat", b.seconds, NVRX_INITIAL_TIMEOUT if n == 0 else NVRX_TIMEOUT
        )
        for n, b in enumerate(trace.blocks)
    ]
    return replace(trace, blocks=blocks)


def run(trace: Trace, rule: Rule, scale: float, workdir: Path) -> Outcome:
    if rule.one_stream:
        trace = as_one_stream(trace)
    floor = 1e-6 if rule.one_stream else FLOOR * scale
    flags = [*rule.flags, "--adaptive-min-samples", str(WARM_UP), "--adaptive-floor", repr(floor)]
    fifo, port = workdir / "timer.fifo", free_port()
    with (workdir / "sidecar.log").open("a") as log:
        sidecar = subprocess.Popen(
            [*serve_command(fifo, port, *flags), "--log-level", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(port)
        blocks = workdir / "blocks.json"
        scaled = [
            [b.scope, None if b.seconds is None else b.seconds * scale, b.requested * scale]
            for b in trace.blocks
        ]
        blocks.write_text(json.dumps(scaled))
        return _replay(blocks, len(scaled) - 1, trace.hang.requested * scale, scale, fifo)
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=10)


def _replay(blocks: Path, hang: int, hang_requested: float, scale: float, fifo: Path) -> Outcome:
    start, false_kills = 0, 0
    while True:
        death = until_death(blocks, start, fifo, lambda index: index == hang, hang_requested + 30.0)
        if death.status == 0:
            raise RuntimeError("the replay ended without its hang")
        if death.index == hang:
            return Outcome(None if death.status != -9 else death.seconds / scale, false_kills)
        false_kills += 1
        start = death.index + 1


def _wait_ready(port: int) -> None:
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError("the sidecar never became ready")


def longest(trace: Trace, rule: Rule) -> float:
    """The longest healthy block of the hang's scope, as ``rule`` sees scopes."""
    seen = as_one_stream(trace) if rule.one_stream else trace
    return seen.longest_healthy(seen.hang.scope)


def measure(traces: list[Trace], scale: float, workdir: Path) -> dict[tuple[str, str], Outcome]:
    results = {}
    for trace in traces:
        for rule in RULES:
            results[(trace.name, rule.name)] = run(trace, rule, scale, workdir)
    return results


def cell(outcome: Outcome, longest: float) -> str:
    if outcome.delay is None:
        text = "never killed"
    else:
        text = f"{_seconds(outcome.delay)} ({outcome.delay / longest:.3g}x longest)"
    if outcome.false_kills:
        text += f", **{outcome.false_kills} false kill{'s' if outcome.false_kills > 1 else ''}**"
    return text


def table(traces: list[Trace], results: dict[tuple[str, str], Outcome]) -> str:
    header = ["trace (hang in)", "longest healthy block of the scope", *(rule.name for rule in RULES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trace in traces:
        cells = [cell(results[(trace.name, rule.name)], longest(trace, rule)) for rule in RULES]
        own = _seconds(longest(trace, RULES[0]))
        lines.append(f"| {trace.name} ({trace.hang.scope}) | {own} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value:,.0f} s" if value >= 10 else f"{value:.2g} s"


def settings(quick: bool) -> tuple[list[Trace], float]:
    """The traces and the scale: 150 steps at 5 ms a training second; --quick: 2 traces of 45 steps
    at 2 ms (a 2 s step is then 4 ms, where the machine's own jitter of a millisecond or two shows)."""
    if quick:
        traces = all_traces(45)
        return [traces[0], traces[3]], 0.002
    return all_traces(150), 0.005


def figure(ctx: Context) -> list[Row]:
    """The runner's rows: per trace, adaptive 5x beside requested (torch's), and the full table as a note."""
    traces, scale = settings(ctx.quick)
    workdir = ctx.workdir / "detection"
    workdir.mkdir(exist_ok=True)
    results = measure(traces, scale, workdir)
    rows = []
    for trace in traces:
        mine, theirs = results[(trace.name, "adaptive 5x")], results[(trace.name, RULES[0].name)]
        ratio = f"{theirs.delay / mine.delay:.3g}x" if mine.delay and theirs.delay else ""
        rows.append(
            Row(
                f"GPU time lost per hang, {trace.name}",
                "training s (x longest block)",
                {
                    "expiry": "adaptive 5x: " + cell(mine, longest(trace, RULES[0])),
                    "torch": "requested: " + cell(theirs, longest(trace, RULES[0])),
                },
                ratio,
            )
        )
    ctx.notes.append(
        f"GPU time lost per hang, every rule (1 training s = {scale * 1000:g} ms):\n\n"
        + table(traces, results)
    )
    if not ctx.quick:
        from bench import restarts  # it builds on this module's harness

        ctx.notes.append(
            "False kills across worker restarts and pod replacements:\n\n"
            + restarts.table(restarts.measure(workdir))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    traces, scale = settings(parser.parse_args().quick)
    with tempfile.TemporaryDirectory(prefix="expiry-detection-") as workdir:
        results = measure(traces, scale, Path(workdir))
    print(f"1 training second = {scale * 1000:g} ms; warm-up {WARM_UP} blocks, floor {FLOOR:g} s\n")
    print(table(traces, results))
    from bench import restarts  # it builds on this module's harness

    with tempfile.TemporaryDirectory(prefix="expiry-restarts-") as workdir:
        again = restarts.measure(Path(workdir))
    print("\nWorker restarts at the killed block, and pod replacements:\n")
    print(restarts.table(again))


if __name__ == "__main__":
    main()
