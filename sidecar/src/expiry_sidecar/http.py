"""The sidecar's HTTP endpoints, served from a background thread.

- ``GET /metrics``: Prometheus exposition (prometheus_client's own WSGI app);
- ``GET /readyz``: 200 once the FIFO is open and being read, 503 before and while shutting down;
- ``GET /healthz``: 200 while the event loop's thread is alive;
- any further JSON document the sidecar offers (``GET /blocks``: block statistics per scope).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not news."""


class Probes:
    def __init__(self) -> None:
        self.ready = False
        self.loop_thread: threading.Thread | None = None

    def healthy(self) -> bool:
        return self.loop_thread is not None and self.loop_thread.is_alive()


JsonRoutes = Mapping[str, Callable[[], bytes]]
"""Path -> the JSON document's bytes, made when asked."""


def make_app(
    registry: CollectorRegistry, probes: Probes, documents: JsonRoutes | None = None
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    documents = documents or {}
    metrics = make_wsgi_app(registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path in ("/readyz", "/healthz"):
            ok = probes.ready if path == "/readyz" else probes.healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ready\n"]
        if path in documents:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [documents[path]()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        known = ", ".join(["/metrics", "/readyz", "/healthz", *documents])
        return [f"not found: try {known}\n".encode()]

    return app


class HttpEndpoint:
    """The server thread sleeps until a connection comes (socketserver's default would wake it twice a
    second to look for a shutdown request); ``stop`` asks it to shut down, then connects once to wake it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        probes: Probes,
        documents: JsonRoutes | None = None,
    ) -> None:
        self._server = make_server(
            host,
            port,
            make_app(registry, probes, documents),
            server_class=_Server,
            handler_class=_QuietHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": None}, name="expiry-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        stopper = threading.Thread(target=self._server.shutdown, name="expiry-http-stop")
        stopper.start()
        host = self._server.server_address[0]
        address = ("127.0.0.1" if host in ("0.0.0.0", "") else str(host), self.port)
        while stopper.is_alive():
            with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
                pass
            stopper.join(0.05)
        self._server.server_close()
