"""Plain-HTTP side doors: liveness and readiness for the kubelet, /metrics for Prometheus."""

from __future__ import annotations

import asyncio

import aiohttp.web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


async def start_endpoints(
    *, health_port: int, metrics_port: int, ready: asyncio.Event, host: str = "0.0.0.0"
) -> list[aiohttp.web.AppRunner]:
    """Serve GET /healthz and /readyz on one port and GET /metrics on another; returns the runners."""

    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok\n")  # answered at all: the event loop is alive

    async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        if ready.is_set():
            return aiohttp.web.Response(text="ready\n")
        return aiohttp.web.Response(status=503, text="not ready: starting, or draining before it stops\n")

    async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await asyncio.to_thread(generate_latest, REGISTRY)
        return aiohttp.web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    health = aiohttp.web.Application()
    health.add_routes([aiohttp.web.get("/healthz", healthz), aiohttp.web.get("/readyz", readyz)])
    scrape = aiohttp.web.Application()
    scrape.add_routes([aiohttp.web.get("/metrics", metrics)])
    runners = []
    for app, port in ((health, health_port), (scrape, metrics_port)):
        runner = aiohttp.web.AppRunner(app, access_log=None)
        await runner.setup()
        await aiohttp.web.TCPSite(runner, host, port, reuse_address=True).start()
        runners.append(runner)
    return runners
