"""The HTTPS server kopf's admission engine answers through.

It differs from ``kopf.WebhookServer`` in four ways:

* a rotated certificate (a mounted Secret updated in place) is picked up without closing the
  listening socket: each new TLS connection is handed the newest successfully loaded context, and a
  half-written pair (new certificate, old key) is retried later instead of breaking the server;
* a malformed, non-JSON or oversized body gets a 4xx with a reason, never a 500 or a crash;
* it reads the cluster's version (``apiclient``) before serving, for ``nativeSidecar: auto``;
* the response's JSON patch is the one the handler computed (``patch_relay``), not kopf's diff.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf
import orjson

from expiry_operator import metrics, patch_relay
from expiry_operator.apiclient import ApiClient
from expiry_operator.certificates import not_after
from expiry_operator.cluster import server_version, supports_native_sidecars
from expiry_operator.handlers import ClusterInfo
from expiry_operator.review import review_problem, unhandled_resource
from expiry_operator.settings import NativeSidecarMode

logger = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024  # two Pods at etcd's 1.5 MiB object limit, with room to spare


class ExpiryWebhookServer(kopf.WebhookServer):
    def __init__(
        self,
        *,
        certfile: str,
        pkeyfile: str,
        cluster: ClusterInfo,
        native_sidecar: NativeSidecarMode,
        on_ready: Callable[[], None],
        reload_interval: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(certfile=certfile, pkeyfile=pkeyfile, file_check_interval=reload_interval, **kwargs)
        self._cluster = cluster
        self._native_sidecar = native_sidecar
        self._on_ready = on_ready
        self._current: ssl.SSLContext | None = None
        self._digest = ""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        await self._learn_cluster()
        self._reload_certificate()
        front = self._front_context()

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve_checked(fn, request)

        app = aiohttp.web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(
                runner, self.addr or None, self.port, ssl_context=front, reuse_address=True
            )
            await site.start()
            logger.info("serving the webhook on https://%s:%s", self.addr or "*", self.port)
            self._on_ready()
            yield {
                "url": f"https://{self.host or 'localhost'}:{self.port}"
            }  # unused: the chart owns the config
            while True:
                await asyncio.sleep(self.file_check_interval)
                self._reload_certificate()
        finally:
            await runner.cleanup()

    def _front_context(self) -> ssl.SSLContext:
        """The listening context: it hands every handshake over to the newest loaded context."""
        front = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        assert self.certfile is not None and self.pkeyfile is not None
        front.load_cert_chain(self.certfile, self.pkeyfile)  # used only if the callback is skipped

        def hand_over(connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
            if self._current is not None:
                connection.context = self._current

        front.sni_callback = hand_over
        return front

    def _reload_certificate(self) -> None:
        assert self.certfile is not None and self.pkeyfile is not None
        try:
            certificate = Path(self.certfile).read_bytes()
            digest = hashlib.sha256(certificate + Path(self.pkeyfile).read_bytes()).hexdigest()
            if digest == self._digest:
                return
            context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.certfile, self.pkeyfile)
            expires = not_after(certificate)
        except (OSError, ssl.SSLError, ValueError) as e:
            if self._current is None:
                raise  # no certificate at all: the operator cannot serve
            logger.error(
                "keeping the current certificate: cannot load %s / %s: %s", self.certfile, self.pkeyfile, e
            )
            return
        if self._current is not None:
            logger.info("loaded the rotated certificate from %s", self.certfile)
        self._current, self._digest = context, digest
        metrics.webhook_certificate_expiry.set(expires)

    async def _learn_cluster(self) -> None:
        if self._native_sidecar != "auto":
            self._cluster.native_sidecars = self._native_sidecar == "true"
            return
        api = ApiClient()
        try:
            version = server_version(await api.get("/version"))
        except Exception as e:  # any failure: fall back to what runs everywhere
            logger.warning("cannot read the cluster version (%s); injecting regular-container sidecars", e)
            return
        finally:
            await api.close()
        self._cluster.native_sidecars = supports_native_sidecars(version)
        self._cluster.known = True
        logger.info(
            "cluster runs Kubernetes %d.%d: %s sidecars",
            *version,
            "native" if self._cluster.native_sidecars else "regular-container",
        )

    @staticmethod
    async def _serve_checked(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        try:
            review = orjson.loads(await request.read())
        except aiohttp.web.HTTPRequestEntityTooLarge:
            metrics.admissions.labels(result="error").inc()
            raise aiohttp.web.HTTPRequestEntityTooLarge(
                max_size=MAX_BODY_BYTES,
                actual_size=request.content_length or 0,
                text="AdmissionReview too large",
            ) from None
        except orjson.JSONDecodeError as e:  # not JSON, or not UTF-8
            metrics.admissions.labels(result="error").inc()
            raise aiohttp.web.HTTPBadRequest(text=f"body is not JSON: {e}") from None
        problem = review_problem(review)
        if problem is not None:
            metrics.admissions.labels(result="error").inc()
            raise aiohttp.web.HTTPBadRequest(text=f"malformed AdmissionReview: {problem}")
        unhandled = unhandled_resource(review)
        if unhandled is not None:  # checked here: kopf's own error for it is not public API
            metrics.admissions.labels(result="error").inc()
            raise aiohttp.web.HTTPNotFound(text=unhandled)
        sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
        with metrics.admission_duration.time(), patch_relay.collecting() as patch:
            response = await fn(
                review, webhook=request.match_info.get("id"), sslpeer=sslpeer, headers=dict(request.headers)
            )
        body = orjson.dumps(patch_relay.attach(response, patch))
        return aiohttp.web.Response(body=body, content_type="application/json")
