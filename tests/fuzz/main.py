"""``scripts/fuzz``: every input surface at any size, with a report of what happened to the inputs."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.fuzz.harness import STOP, Notes, Tally, run_many
from tests.fuzz.surfaces import SURFACES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__)
    parser.add_argument("surfaces", nargs="*", metavar="SURFACE", help="default: all")
    parser.add_argument("-n", "--inputs", type=int, default=100_000, help="per surface (default 100,000)")
    parser.add_argument("--seconds", type=float, help="stop each surface after this long, if not done")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--markdown", nargs="+", type=Path, metavar="REPORT", help="print the tables of JSON reports and exit"
    )
    parser.add_argument("--list", action="store_true", help="name the surfaces and what they are fed")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the sidecar's log lines about each bad input: the tally counts them
    if args.markdown:
        for path in args.markdown:
            for name, entry in json.loads(path.read_text()).items():
                print(markdown(name, entry))
        return 0
    if args.list:
        for surface in SURFACES.values():
            print(f"{surface.name:<14} {surface.what}")
        return 0
    unknown = sorted(set(args.surfaces) - set(SURFACES))
    if unknown:
        parser.error(f"unknown surface {', '.join(unknown)}; choose from {', '.join(SURFACES)}")
    for number in (signal.SIGINT, signal.SIGTERM):  # finish the input at hand, then report
        signal.signal(number, _stop)
    report: dict[str, dict[str, object]] = {}
    for name in args.surfaces or list(SURFACES):
        tally, notes = Tally(), Notes()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as workdir:
            run_many(
                SURFACES[name],
                Path(workdir),
                args.inputs,
                tally,
                notes,
                seconds=args.seconds,
                progress=_Progress(name, started),
            )
        if STOP.is_set():
            notes["stopped"] = f"interrupted, before {args.inputs:,} inputs"
        seconds = time.monotonic() - started
        report[name] = _print(name, tally, notes, seconds)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        if STOP.is_set():
            break
    return 1 if any(entry["violations"] for entry in report.values()) else 0


def _stop(number: int, _frame: object) -> None:
    STOP.set()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C ends it at once


class _Progress:
    """A line every minute while a surface runs, and each violation as soon as it is found."""

    def __init__(self, name: str, started: float) -> None:
        self.name, self.started, self.shown = name, started, 0

    def __call__(self, tally: Tally) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"   {self.name}: {tally.inputs:,} inputs in {elapsed:,.0f} s ({tally.inputs / elapsed:,.0f}/s),"
            f" {tally.tracebacks} tracebacks, {tally.errors_5xx} 5xx,"
            f" {tally.outcomes['VIOLATION']} violations",
            flush=True,
        )
        for message, value in tally.violations[self.shown :]:
            print(f"   VIOLATION {message[:3000]}\n     input: {value[:500]}", flush=True)
        self.shown = len(tally.violations)


def _print(name: str, tally: Tally, notes: Notes, seconds: float) -> dict[str, object]:
    errors_5xx = tally.errors_5xx
    violations = tally.outcomes.get("VIOLATION", 0)
    rate = tally.inputs / seconds if seconds else 0.0
    print(f"== {name}: {tally.inputs:,} inputs in {seconds:,.0f} s ({rate:,.0f}/s)", flush=True)
    for outcome, count in tally.outcomes.most_common():
        print(f"   {count:>9,}  {outcome}")
    print(f"   tracebacks={tally.tracebacks} 5xx={errors_5xx} violations={violations}")
    for key, value in notes.items():
        print(f"   {key}: {value}")
    for message, value in tally.violations[:5]:
        print(f"   VIOLATION {message[:600]}\n     input: {value[:300]}")
    return {
        "inputs": tally.inputs,
        "seconds": round(seconds),
        "inputs_per_second": round(rate, 1),
        "outcomes": dict(tally.outcomes.most_common()),
        "tracebacks": tally.tracebacks,
        "5xx": errors_5xx,
        "violations": violations,
        "notes": notes,
        "first_violations": tally.violations[:5],
    }


def markdown(name: str, entry: dict[str, Any]) -> str:
    """One surface's outcomes as the table docs/failure-modes.md shows."""
    lines = [
        f"**{name}**: {SURFACES[name].what}. {entry['inputs']:,} inputs in {entry['seconds']:,} s"
        + (f" ({entry['inputs_per_second']:,.0f}/s)" if "inputs_per_second" in entry else "")
        + ": "
        f"tracebacks {entry['tracebacks']}, 5xx {entry['5xx']}, violations {entry['violations']}"
        + "".join(f"; {key}: {value}" for key, value in entry["notes"].items())
        + ".",
        "",
        "| outcome | inputs |",
        "|---|---:|",
        *(f"| {outcome} | {count:,} |" for outcome, count in entry["outcomes"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
