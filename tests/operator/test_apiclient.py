"""The operator's own API client against a real HTTP server: the status codes it turns into errors,
the login again on a 401 (a rotated service account token), and the credentials it sends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest

from expiry_operator.apiclient import ApiClient, ApiError, NotFound
from tests.support.kubeapi import write_kubeconfig

Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]


def serve_and_call(
    handler: Handler,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: Callable[[ApiClient], Awaitable[Any]],
) -> Any:
    async def main() -> Any:
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{path:.*}", handler)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}"))
        )
        client = ApiClient(timeout=10)
        try:
            return await call(client)
        finally:
            await client.close()
            await runner.cleanup()

    return asyncio.run(main())


def test_get_post_and_merge_patch_send_json_with_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str, str, str, Any]] = []

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append(
            (
                request.method,
                request.path,
                request.headers.get("Authorization", ""),
                request.content_type,
                body,
            )
        )
        return aiohttp.web.json_response({"ok": request.method})

    async def calls(client: ApiClient) -> list[Any]:
        return [
            await client.get("/version"),
            await client.post("/api/v1/namespaces/ml/events", {"a": 1}),
            await client.merge_patch("/apis/x/v1/leases/l", {"b": 2}),
        ]

    assert serve_and_call(handler, tmp_path, monkeypatch, calls) == [
        {"ok": "GET"},
        {"ok": "POST"},
        {"ok": "PATCH"},
    ]
    assert [(method, path) for method, path, *_ in seen] == [
        ("GET", "/version"),
        ("POST", "/api/v1/namespaces/ml/events"),
        ("PATCH", "/apis/x/v1/leases/l"),
    ]
    assert {auth for _, _, auth, _, _ in seen} == {"Bearer not-checked"}
    assert seen[2][3] == "application/merge-patch+json" and seen[2][4] == {"b": 2}


@pytest.mark.parametrize(("status", "error"), [(404, NotFound), (409, ApiError), (500, ApiError)])
def test_error_statuses_raise_with_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, error: type[ApiError]
) -> None:
    async def handler(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=status, text="the reason")

    async def call(client: ApiClient) -> ApiError:
        with pytest.raises(error) as raised:
            await client.get("/api/v1/namespaces/ml/pods/p")
        return raised.value

    raised = serve_and_call(handler, tmp_path, monkeypatch, call)
    assert raised.status == status and "the reason" in str(raised)
    assert isinstance(raised, NotFound) == (status == 404)


def test_a_401_logs_in_again_once_then_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [401, 200, 401, 401]
    requests = 0

    async def handler(_: aiohttp.web.Request) -> aiohttp.web.Response:
        nonlocal requests
        requests += 1
        status = answers.pop(0)
        return aiohttp.web.json_response({"n": requests}, status=status)

    async def calls(client: ApiClient) -> tuple[Any, int]:
        first = await client.get("/version")  # 401, logs in again, 200
        with pytest.raises(ApiError) as raised:
            await client.get("/version")  # 401 twice: an error, not a loop
        return first, raised.value.status

    assert serve_and_call(handler, tmp_path, monkeypatch, calls) == ({"n": 2}, 401)
    assert requests == 4


def test_without_any_credentials_the_error_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either

    async def call() -> None:
        client = ApiClient()
        try:
            await client.get("/version")
        finally:
            await client.close()

    with pytest.raises(ApiError, match="no credentials"):
        asyncio.run(call())
