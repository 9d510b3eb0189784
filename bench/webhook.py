"""Webhook admission latency over TLS (p50, p99 at 1 and 50 concurrent requests) and operator RSS.

The operator's figures come from ``bench/webhook_latency.py`` (written with the operator), which is
expected to offer ``measure(quick: bool) -> Mapping[str, float]`` with the keys of :data:`KEYS`
(seconds and bytes). torch has no admission webhook, so these rows have no peer.
If that module is absent the rows say so; if it has no ``measure`` it is run as a script and its
output is quoted under the table.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from bench.context import Context, Row
from bench.table import compare, mb, ms

KEYS = {
    "p50_1": "webhook latency p50, 1 concurrent",
    "p99_1": "webhook latency p99, 1 concurrent",
    "p50_50": "webhook latency p50, 50 concurrent",
    "p99_50": "webhook latency p99, 50 concurrent",
}
RSS_KEY = "rss_bytes"
MISSING = "n/a (operator not built yet)"


def run(ctx: Context) -> list[Row]:
    try:
        module = importlib.import_module("bench.webhook_latency")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.webhook_latency":
            raise
        return _rows({}, MISSING)
    measure = getattr(module, "measure", None)
    if measure is None:
        return _rows({}, _as_script(ctx))
    figures = measure(quick=ctx.quick)
    return _rows(figures, "n/a (not measured)")


def _rows(figures: dict[str, float], absent: str) -> list[Row]:
    rows = []
    for key, figure in KEYS.items():
        goal, met = ("<= 20 ms", (lambda v: v <= 0.020)) if key == "p99_50" else ("", None)
        rows.append(compare(figure, "ms", {"expiry": figures.get(key, absent)}, ms, goal=goal, met=met))
    rows.append(compare("operator RSS", "MB", {"expiry": figures.get(RSS_KEY, absent)}, mb))
    return rows


def _as_script(ctx: Context) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.webhook_latency", *(["--quick"] if ctx.quick else [])],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    ctx.notes.append(
        f"Webhook (bench/webhook_latency.py, exit {done.returncode}):\n{done.stdout}{done.stderr}"
    )
    return "see notes"
