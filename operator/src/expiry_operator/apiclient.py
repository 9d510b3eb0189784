"""The operator's own Kubernetes API client: JSON over aiohttp, logged in through kopf's public API.

The Lease (``election``), the watches' Events and reads (``watchers``) and the cluster version
(``webhook``) need a handful of calls. They go through this client instead of kopf's private one
(``kopf._cogs``), so a kopf release cannot break them: the credentials come from kopf's public login
functions (``kopf.login_with_service_account``, ``kopf.login_with_kubeconfig``, the same ones kopf's own
login uses, see ``handlers``) as a public ``kopf.ConnectionInfo``, which also makes the TLS context and the
Authorization header. aiohttp is kopf's own HTTP client, so this costs no new dependency.

A client's session belongs to the event loop that first uses it: create one client per loop (the
leader-only watches run a loop of their own) and ``close()`` it on that loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kopf

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server answered with an error status (or could not log in: status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status


class NotFound(ApiError):
    """404."""


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own minimal logins: in a pod, the service account; elsewhere, $KUBECONFIG."""
    kwargs.setdefault("settings", kopf.OperatorSettings())
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


class ApiClient:
    """GET, POST and merge-PATCH JSON, each a single attempt (callers decide about retries).

    A 401 logs in again once and repeats the call: in a pod the service account token is rotated on
    disk, and the new one is what the API server expects.
    """

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    async def get(self, path: str) -> Any:
        return await self._call("GET", path)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._call("POST", path, body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self._call("PATCH", path, body, content_type=MERGE_PATCH)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, content_type: str | None = None
    ) -> Any:
        for attempt in (1, 2):
            session = self._session or await self._login()
            headers = {"Content-Type": content_type} if content_type else None
            async with session.request(
                method, self._server + path, json=body, headers=headers, timeout=self._timeout
            ) as response:
                if response.status == 401 and attempt == 1:
                    await self.close()
                    continue
                if response.status >= 400:
                    text = (await response.text())[:500]
                    error = NotFound if response.status == 404 else ApiError
                    raise error(response.status, f"{method} {path}: {text}")
                return await response.json(content_type=None)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _login(self) -> aiohttp.ClientSession:
        # Reading the token and building the TLS context touch files: off the loop.
        info = await asyncio.to_thread(login)
        if info is None:
            raise ApiError(0, "no credentials: neither a service account token nor $KUBECONFIG")
        self._server = info.server.rstrip("/")
        # Only for https: a context without a CA of its own loads the system's whole bundle (~1 MiB).
        secure = self._server.startswith("https:")
        context = await asyncio.to_thread(info.as_ssl_context) if secure else False
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            headers=info.as_http_headers(),
            proxy=info.proxy_url,
            trust_env=info.trust_env,
        )
        return self._session
