"""The benchmark suite's quickest run completes and prints every row (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
ROWS = [
    "kill latency, median",
    "kill latency, p99",
    "kill latency with a stack dump, 1 worker",
    "kill latency with stack dumps, 8 workers at once (last)",
    "kill latency with dump, median",
    "kill latency with dump, p99",
    "kill latency with dumps, last of 8 workers",
    "gloo all_reduce small, recorder off",
    "gloo all_reduce small, recorder 2000",
    "gloo all_reduce 4MiB, recorder off",
    "gloo all_reduce 4MiB, recorder 2000",
    "client cost per block, default scope",
    "client cost per block, explicit scope",
    "throughput, 1 writer",
    "throughput, 4 writers",
    "throughput, 16 writers",
    "idle wake-ups, 0 timers armed",
    "idle CPU, 0 timers armed",
    "idle wake-ups, 10,000 timers armed",
    "idle CPU, 10,000 timers armed",
    "CPU per request, 10 timers armed",
    "CPU per request, 100 timers armed",
    "CPU per request, 1,000 timers armed",
    "server RSS, idle",
    "server RSS, 1,000 timers armed",
    "webhook latency p50, 1 concurrent",
    "webhook latency p99, 1 concurrent",
    "webhook latency p50, 50 concurrent",
    "webhook latency p99, 50 concurrent",
    "operator RSS",
    "GPU time lost per hang, steady steps",
    "GPU time lost per hang, checkpoint/eval in own scopes",
    "sidecar RSS, Events + pod condition, after a kill",
    "sidecar start to /readyz, Events + pod condition",
    "sidecar CPU time until /readyz",
    "sidecar start to API writer ready",
    "sidecar image size",
]


@pytest.mark.torch
def test_quick_run_prints_every_row_for_both_servers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("| ")), len(lines))
    table = lines[start:end]  # the figures; the notes below hold tables of their own
    assert table[0].split(" | ")[2:4] == ["expiry", "torch"], done.stdout
    figures = [line.split(" | ")[0].removeprefix("| ") for line in table[2:]]
    assert figures == ROWS, done.stdout
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[2], f"no expiry figure in {line!r}"
        if not cells[0].startswith(("webhook", "operator", "kill latency with", "sidecar ", "gloo")):
            assert cells[3] and not cells[3].startswith("n/a"), f"no torch figure in {line!r}"
