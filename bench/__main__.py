"""``python -m bench [--quick] [--only FIGURE ...]``: every figure, expiry beside torch, as a table."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    client_cost,
    detection,
    flight_recorder,
    idle,
    kill_burst,
    kill_dump,
    kill_latency,
    lean,
    memory,
    scaling,
    throughput,
    webhook,
)
from bench.context import Context, Row
from bench.peers import torch_missing
from bench.table import render

FIGURES: dict[str, Callable[[Context], list[Row]]] = {
    "kill-latency": kill_latency.run,
    "kill-burst": kill_burst.run,
    "kill-dump": kill_dump.run,
    "flight-recorder": flight_recorder.run,
    "client-cost": client_cost.run,
    "throughput": throughput.run,
    "idle": idle.run,
    "scaling": scaling.run,
    "memory": memory.run,
    "webhook": webhook.run,
    "detection": detection.figure,
    "lean-sidecar": lean.run,
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    top.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds per figure"
    )
    top.add_argument("--only", nargs="+", choices=list(FIGURES), metavar="FIGURE", help=", ".join(FIGURES))
    top.add_argument("--no-torch", action="store_true", help="measure expiry alone")
    return top


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()},"
        f" load average before the run {load}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    why_no_torch = "--no-torch" if args.no_torch else torch_missing()
    peers = ["expiry"] if why_no_torch else ["expiry", "torch"]
    print(f"machine: {machine()}", flush=True)
    if why_no_torch:
        print(f"torch's FileTimerServer is not measured: {why_no_torch}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="expiry-bench-") as workdir:
        ctx = Context(Path(workdir), args.quick, peers)
        for name in args.only or FIGURES:
            started = time.monotonic()
            print(f"running {name} ...", end="", flush=True)
            rows.extend(FIGURES[name](ctx))
            print(f" {time.monotonic() - started:.0f} s", flush=True)
    print()
    print(render(rows, ["expiry", "torch"] if len(peers) > 1 else peers))
    for note in ctx.notes:
        print(f"\n- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
