"""The Lease loop: reads and writes the Lease (``apiclient``) as ``leadership.Elector`` decides.

Runs for the life of the process beside the webhook, on the main loop.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from expiry_operator import metrics
from expiry_operator.apiclient import ApiClient, ApiError, NotFound
from expiry_operator.leadership import (
    LEASE_API,
    Action,
    Elector,
    Leadership,
    Lease,
    micro_time,
    new_lease,
    release_patch,
    renew_patch,
    takeover_patch,
)

logger = logging.getLogger(__name__)
FAILURES = (ApiError, aiohttp.ClientError, TimeoutError)


class LeaseClient:
    """GET, create and merge-patch one Lease, each a single attempt (the loop is the retry)."""

    def __init__(self, name: str, namespace: str, api: ApiClient) -> None:
        self.name, self.namespace = name, namespace
        self.where = f"{namespace}/{name}"
        self._collection = f"/apis/{LEASE_API}/namespaces/{namespace}/leases"
        self._api = api

    async def read(self) -> Lease | None:
        try:
            obj = await self._api.get(f"{self._collection}/{self.name}")
        except NotFound:
            return None
        return Lease.from_object(obj)

    async def create(self, body: dict[str, Any]) -> None:
        await self._api.post(self._collection, body)

    async def patch(self, body: dict[str, Any]) -> None:
        await self._api.merge_patch(f"{self._collection}/{self.name}", body)

    async def close(self) -> None:
        await self._api.close()


async def elect(
    client: LeaseClient,
    elector: Elector,
    leadership: Leadership,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Keep ``leadership`` true exactly while ``elector`` says we lead; release the Lease on cancel."""
    timing = elector.timing
    failing = False
    try:
        while True:
            started = clock()
            try:
                async with asyncio.timeout(timing.retry_period):
                    await _round(client, elector, started)
                if failing:
                    logger.info("the lease %s is reachable again", client.where)
                failing = False
            except FAILURES as e:
                if not failing:  # said once per outage
                    logger.warning(
                        "cannot read or write the lease %s/%s: %s", client.namespace, client.name, e
                    )
                failing = True
            _publish(elector, leadership, client, clock())
            pause = timing.retry_period
            until = elector.leading_until()
            if until is not None:  # wake up in time to step down if the renewals keep failing
                pause = min(pause, max(0.0, until - clock()))
            await asyncio.sleep(pause)
    finally:
        was_leading = leadership.leading
        leadership.set(False)
        metrics.leading.set(0)
        if was_leading:
            await _release(client, elector)
        await client.close()


async def _round(client: LeaseClient, elector: Elector, started: float) -> None:
    lease = await client.read()
    action = elector.decide(lease, started)
    now = micro_time(datetime.datetime.now(datetime.UTC))
    if action is Action.CREATE:
        await client.create(new_lease(client.name, client.namespace, elector.identity, elector.timing, now))
    elif action is Action.ACQUIRE:
        assert lease is not None
        await client.patch(takeover_patch(lease, elector.identity, elector.timing, now))
    elif action is Action.RENEW:
        assert lease is not None
        await client.patch(renew_patch(lease, elector.timing, now))
    if action is not Action.WAIT:
        elector.written(started)


def _publish(elector: Elector, leadership: Leadership, client: LeaseClient, now: float) -> None:
    leading = elector.leading(now)
    if leading != leadership.leading:
        logger.info(
            "%s the lease %s as %s: %s the pod watches",
            "holding" if leading else "lost",
            client.where,
            elector.identity,
            "running" if leading else "stopping",
        )
        leadership.set(leading)
        metrics.leading.set(1 if leading else 0)


async def _release(client: LeaseClient, elector: Elector) -> None:
    """Best effort: on failure the other replicas take over when the Lease expires instead."""
    try:
        async with asyncio.timeout(elector.timing.retry_period):
            lease = await client.read()
            if lease is not None and lease.holder == elector.identity:
                await client.patch(release_patch(lease, micro_time(datetime.datetime.now(datetime.UTC))))
                logger.info("released the lease %s", client.where)
    except FAILURES as e:
        logger.warning(
            "could not release the lease %s/%s (it will expire): %s", client.namespace, client.name, e
        )
    elector.released()
