"""kmock as a real Kubernetes API server on a local port, for processes that are not the test.

kmock's own pytest fixture serves from the test's event loop, which stops while a synchronous test
waits for a subprocess. Here the emulator runs on an event loop of its own in a background thread,
so a sidecar, an operator or helm can talk to it at any time over real HTTP; the test reads what it
received with ``objects`` or ``call``. One harness for every suite (sidecar Events, the operator,
the chart's ``lookup``), each asking for what its client needs:

- ``git_version``: served at ``/version`` (the operator reads it to choose native sidecars);
- ``resources``: resources to declare with every verb (``"v1/pods": ("Pod", True)``: kind, namespaced);
- ``bundled``: kmock's bundled resource list, plus a fix kmock 0.8 needs for client-go (helm): it
  names the core group version "/v1" in ``/api/v1``, which client-go cannot map; "v1" is served.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import kmock
import requests

T = TypeVar("T")
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


class KubeApi:
    def __init__(
        self,
        *,
        git_version: str | None = None,
        resources: Mapping[str, tuple[str, bool]] | None = None,
        bundled: bool = False,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self._thread.start()
        self.emulator = kmock.KubernetesEmulator()
        self._server = kmock.Server(self.emulator)
        self._run(self.emulator.__aenter__())
        self._run(self._server.__aenter__())
        self.url = str(self._server.url).rstrip("/")
        self._run(self._set_up(git_version, resources or {}, bundled))

    async def _set_up(
        self, git_version: str | None, resources: Mapping[str, tuple[str, bool]], bundled: bool
    ) -> None:
        api = self.emulator
        if bundled:
            api.resources.load_bundled()
            async with aiohttp.ClientSession() as session, session.get(f"{self.url}/api/v1") as response:
                core = await response.json()
            core["groupVersion"] = "v1"
            api["get", "/api/v1"] << core
        for key, (kind, namespaced) in resources.items():
            api.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=set(VERBS))
        if git_version is not None:
            major, minor = git_version.lstrip("v").split(".")[:2]
            api["get /version"] << {
                "major": major,
                "minor": minor,
                "gitVersion": git_version,
                "platform": "linux/amd64",
            }

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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

    def create(self, path: str, obj: dict[str, Any]) -> None:
        """POST ``obj`` to ``path`` (e.g. "/api/v1/namespaces/ml/pods") as any client would."""
        requests.post(f"{self.url}{path}", json=obj, timeout=10).raise_for_status()

    def delete(self, path: str) -> None:
        requests.delete(f"{self.url}{path}", timeout=10).raise_for_status()

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
    path.chmod(0o600)
    return path


def _plain(value: Any) -> Any:
    """kmock's object views as plain dicts and lists."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
