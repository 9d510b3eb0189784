"""Admission latency of the real operator over TLS, and its memory.

Starts kmock (the Kubernetes API emulator) and the real ``expiry-operator run`` process, fires
AdmissionReview requests for a realistic training pod over keep-alive TLS connections (as the API
server does) at each concurrency level, and prints p50/p99 latency per level and the operator's RSS.
Each level is a closed loop (that many requests always in flight: the throughput at saturation); the
largest level is then repeated as bursts (that many sent at once, then quiet: a job's pods created).
The load generator is this process, on raw asyncio TLS streams; it prints its own CPU per request
next to the operator's, since both share the machine's cores (see docs/operator.md, Performance).

    .venv/bin/python bench/webhook_latency.py [--requests 2000] [--concurrency 1 50]

Importable: ``measure(quick)`` returns the figures bench/webhook.py tabulates; ``measure_levels`` the detail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.operator.operator_harness import OperatorProcess, admission_review, running_operator  # noqa: E402
from tests.operator.pod_corpus import PYTORCHJOB_WORKER  # noqa: E402

BURST_PAUSE = 0.05  # seconds of quiet between bursts


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class _Connection:
    """One keep-alive TLS connection, as the API server holds to a webhook: a request, then its answer.

    Raw asyncio streams rather than an HTTP client library: the load generator shares the machine's
    two cores with the operator, so it should cost as little CPU per request as possible.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, operator: OperatorProcess, context: ssl.SSLContext) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", operator.webhook_port, ssl=context)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> bytes:
        """Send one request and read the whole response; returns its body."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status, _, rest = head.partition(b"\r\n")
        length = next(
            int(value)
            for name, _, value in (line.partition(b":") for line in rest.split(b"\r\n"))
            if name.strip().lower() == b"content-length"
        )
        body = await self._reader.readexactly(length)
        if status.split()[1] != b"200":
            raise RuntimeError(f"unexpected answer: {status!r} {body[:300]!r}")
        return body

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self._writer.wait_closed()


def _request(operator: OperatorProcess) -> bytes:
    body = json.dumps(admission_review(PYTORCHJOB_WORKER)).encode()
    head = (
        f"POST /expiry-inject HTTP/1.1\r\nHost: 127.0.0.1:{operator.webhook_port}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclasses.dataclass
class _Wave:
    latencies: list[float]  # seconds, from sending a request to the last byte of its answer
    operator_cpu: float  # seconds of CPU the operator process used during the timed requests
    client_cpu: float  # the same for this process (the load generator; kmock idles in a thread)
    wall: float  # seconds the timed requests took, first sent to last answered


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _fire(
    operator: OperatorProcess, concurrency: int, total: int, warmup: int, *, bursts: bool = False
) -> _Wave:
    """Time ``total`` requests over ``concurrency`` keep-alive connections.

    Closed loop (the default): each connection sends its next request as soon as it has the answer,
    so ``concurrency`` requests are always in flight: the operator's throughput at saturation.
    ``bursts``: every connection sends one request at the same moment, all are answered, a pause
    follows; e.g. the worker pods of a 50-replica PyTorchJob created at once.
    The connections are opened and used for ``warmup`` requests first, so no TLS handshake is timed.
    """
    context = ssl.create_default_context(cafile=str(operator.tls.ca))
    request = _request(operator)
    connections = [await _Connection.open(operator, context) for _ in range(concurrency)]
    latencies: list[float] = []

    async def worker(connection: _Connection, count: int, record: bool) -> None:
        for _ in range(count):
            started = time.perf_counter()
            body = await connection.exchange(request)
            if record:
                latencies.append(time.perf_counter() - started)
            answer = json.loads(body)["response"]
            if not answer["allowed"] or "patch" not in answer:
                raise RuntimeError(f"expected an injected pod, got {answer}")

    async def wave(count: int, record: bool) -> None:
        if bursts:
            for _ in range(-(-count // concurrency)):
                await asyncio.gather(*(worker(c, 1, record) for c in connections))
                await asyncio.sleep(BURST_PAUSE)
            return
        shares = [count // concurrency + (index < count % concurrency) for index in range(concurrency)]
        await asyncio.gather(*(worker(c, n, record) for c, n in zip(connections, shares, strict=True)))

    try:
        await wave(warmup, record=False)
        operator_cpu, client_cpu, wall = _cpu_seconds(operator.pid), time.process_time(), time.perf_counter()
        await wave(total, record=True)
        operator_cpu, client_cpu = _cpu_seconds(operator.pid) - operator_cpu, time.process_time() - client_cpu
        wall = time.perf_counter() - wall
    finally:
        for connection in connections:
            await connection.close()
    return _Wave(latencies, operator_cpu, client_cpu, wall)


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
    with_bursts: bool = True,
) -> dict[str, Any]:
    """Start the stack, measure each concurrency level, stop it; returns the figures (milliseconds, MiB).

    ``with_bursts`` adds ``bursts``: the largest level again, as simultaneous bursts (see ``_fire``).
    """
    with (
        tempfile.TemporaryDirectory(prefix="expiry-bench-") as scratch,
        running_operator(workdir or Path(scratch)) as operator,
    ):
        rss_idle = _rss_mib(operator.pid)
        levels = {
            level: _figures(asyncio.run(_fire(operator, level, requests, max(warmup, level))))
            for level in concurrency
        }
        size = max(concurrency)
        bursts = (
            {size: _figures(asyncio.run(_fire(operator, size, requests, max(warmup, size), bursts=True)))}
            if with_bursts
            else {}
        )
        return {
            "levels": levels,
            "bursts": bursts,
            "rss_idle_mib": rss_idle,
            "rss_after_mib": _rss_mib(operator.pid),
        }


def _figures(wave: _Wave) -> dict[str, float]:
    samples = wave.latencies
    return {
        "requests": len(samples),
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": _percentile(samples, 0.99) * 1000,
        "max_ms": max(samples) * 1000,
        "throughput_rps": len(samples) / wave.wall,
        "operator_cpu_ms_per_request": wave.operator_cpu / len(samples) * 1000,
        "client_cpu_ms_per_request": wave.client_cpu / len(samples) * 1000,
    }


def measure(quick: bool = False) -> dict[str, float]:
    """For bench/webhook.py: p50/p99 at 1 and 50 concurrent (seconds) and the RSS after the run (bytes)."""
    figures = measure_levels(requests=300 if quick else 2000, warmup=50 if quick else 200, with_bursts=False)
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
    rows = [(f"concurrency {level:>3}", row) for level, row in figures["levels"].items()]
    rows += [(f"bursts of {size:>3}", row) for size, row in figures["bursts"].items()]
    for name, row in rows:
        rate = f"{row['throughput_rps']:5.0f} requests/s" if name.startswith("concurrency") else "in bursts"
        print(
            f"  {name}: p50 {row['p50_ms']:6.2f} ms   p99 {row['p99_ms']:6.2f} ms"
            f"   max {row['max_ms']:6.2f} ms   {rate} ({row['requests']:.0f})"
        )
        print(
            f"                   CPU per request: operator {row['operator_cpu_ms_per_request']:.3f} ms,"
            f" load generator {row['client_cpu_ms_per_request']:.3f} ms"
        )
    idle, after = figures["rss_idle_mib"], figures["rss_after_mib"]
    print(f"operator RSS: {idle:.1f} MiB idle, {after:.1f} MiB after the run")
    print(f"load average (other processes share the cores): {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
