"""Admission latency of the real operator over TLS, and its memory.

Starts kmock (the Kubernetes API emulator) and the real ``expiry-operator run`` process, fires
AdmissionReview requests for a realistic training pod over keep-alive TLS connections (as the API
server does) at each concurrency level, and prints p50/p99 latency per level and the operator's RSS.

    .venv/bin/python bench/webhook_latency.py [--requests 2000] [--concurrency 1 50]

Importable: ``measure(quick)`` returns the figures bench/webhook.py tabulates; ``measure_levels`` the detail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.operator.operator_harness import OperatorProcess, admission_review, running_operator  # noqa: E402
from tests.operator.pod_corpus import PYTORCHJOB_WORKER  # noqa: E402


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _fire(operator: OperatorProcess, concurrency: int, total: int) -> list[float]:
    context = ssl.create_default_context(cafile=str(operator.tls.ca))
    body = json.dumps(admission_review(PYTORCHJOB_WORKER)).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    remaining = total

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, ssl=context)
    ) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(operator.url, data=body, headers=headers) as reply:
                    payload = await reply.json()
                latencies.append(time.perf_counter() - started)
                if not payload["response"]["allowed"]:
                    raise RuntimeError(f"unexpected denial: {payload}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure_levels(
    *,
    concurrency: tuple[int, ...] = (1, 50),
    requests: int = 2000,
    warmup: int = 200,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Start the stack, measure each concurrency level, stop it; returns the figures (milliseconds, MiB)."""
    with (
        tempfile.TemporaryDirectory(prefix="expiry-bench-") as scratch,
        running_operator(workdir or Path(scratch)) as operator,
    ):
        rss_idle = _rss_mib(operator.pid)
        asyncio.run(_fire(operator, max(concurrency), warmup))
        levels = {}
        for level in concurrency:
            samples = asyncio.run(_fire(operator, level, requests))
            levels[level] = {
                "requests": len(samples),
                "p50_ms": statistics.median(samples) * 1000,
                "p99_ms": _percentile(samples, 0.99) * 1000,
                "max_ms": max(samples) * 1000,
            }
        return {"levels": levels, "rss_idle_mib": rss_idle, "rss_after_mib": _rss_mib(operator.pid)}


def measure(quick: bool = False) -> dict[str, float]:
    """For bench/webhook.py: p50/p99 at 1 and 50 concurrent (seconds) and the RSS after the run (bytes)."""
    figures = measure_levels(requests=300 if quick else 2000, warmup=50 if quick else 200)
    result = {"rss_bytes": figures["rss_after_mib"] * 1024 * 1024}
    for level in (1, 50):
        result[f"p50_{level}"] = figures["levels"][level]["p50_ms"] / 1000
        result[f"p99_{level}"] = figures["levels"][level]["p99_ms"] / 1000
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--quick", action="store_true", help="300 requests per level instead of --requests")
    args = parser.parse_args(argv)
    figures = measure_levels(
        concurrency=tuple(args.concurrency), requests=300 if args.quick else args.requests
    )
    print("webhook admission latency over TLS (keep-alive), PyTorchJob worker pod injected:")
    for level, row in figures["levels"].items():
        print(
            f"  concurrency {level:>3}: p50 {row['p50_ms']:6.2f} ms   p99 {row['p99_ms']:6.2f} ms"
            f"   max {row['max_ms']:6.2f} ms   ({row['requests']} requests)"
        )
    idle, after = figures["rss_idle_mib"], figures["rss_after_mib"]
    print(f"operator RSS: {idle:.1f} MiB idle, {after:.1f} MiB after the run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
