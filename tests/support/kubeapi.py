"""kmock as a real Kubernetes API server on a local port, for processes that are not the test.

kmock's own pytest fixture serves from the test's event loop, which stops while a synchronous test
waits for a subprocess. Here the emulator runs on an event loop of its own in a background thread,
so a sidecar process can talk to it at any time; the test reads what it received with ``call``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import kmock

T = TypeVar("T")


class KubeApi:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self._thread.start()
        self.emulator = kmock.KubernetesEmulator()
        self._server = kmock.Server(self.emulator)
        self._run(self.emulator.__aenter__())
        self._run(self._server.__aenter__())
        self.url = str(self._server.url).rstrip("/")

    def _run(self, coroutine: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=10)

    def call(self, function: Callable[[kmock.KubernetesEmulator], T]) -> T:
        """Run ``function(emulator)`` on the emulator's own thread (to read or set it up safely)."""

        async def inside() -> T:
            return function(self.emulator)

        return self._run(inside())

    def objects(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        """Copies of the stored objects of ``resource`` (e.g. "v1/events") in ``namespace``."""

        def collect(emulator: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
            wanted = kmock.resource(resource)
            return [
                _plain(obj.raw)
                for (res, ns, _), obj in emulator.objects.items()
                if res == wanted and ns == namespace and not obj.deleted
            ]

        return self.call(collect)

    def kubeconfig(self, path: Path) -> Path:
        return write_kubeconfig(path, self.url)

    def close(self) -> None:
        self._run(self._server.__aexit__(None, None, None))
        self._run(self.emulator.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig for the API server at ``url`` (plain HTTP, a token nobody checks)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: test, user: {token: not-checked}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: test}}]\n"
        "current-context: kmock\n"
    )
    return path


def _plain(value: Any) -> Any:
    """kmock's object views as plain dicts and lists."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
