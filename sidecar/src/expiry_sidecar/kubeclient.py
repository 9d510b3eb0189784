"""The sidecar's Kubernetes API client: the standard library's ``http.client`` over one kept-alive
connection, with :mod:`.kubecreds`' credentials.

It replaces the ``kubernetes`` package for the sidecar's three calls (create and patch an Event,
patch its pod's status, read its pod), which cost every training pod ~24 MB of memory, 126 MB of
image and 1-2 s of start-up. Like :class:`~expiry_sidecar.apiwriter.Client` asks, it sends one request
and says what came back: an error status is an :class:`ApiError` carrying
``Retry-After``, and it never retries on its own (:mod:`.apiwriter` decides), except once on a fresh
connection when the server had closed the kept-alive one before the request reached it.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from expiry_sidecar import kubecreds

Body = dict[str, Any]
REQUEST_TIMEOUT = (3.0, 5.0)
"""(connect, read) seconds for each API request."""


class ApiUnavailable(Exception):
    """Nothing can be written at all (no credentials, no pod name): said once."""


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, retry_after: str | None = None) -> None:
        super().__init__(f"the API server answered {status} {reason}".rstrip())
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
"""What a kept-alive connection the server has closed raises at the next request."""


class KubeClient:
    def __init__(self, credentials: kubecreds.Credentials | None = None) -> None:
        if credentials is None:
            try:
                credentials = kubecreds.load()
            except kubecreds.CredentialsError as exc:
                raise ApiUnavailable(f"no Kubernetes credentials: {exc}") from None
        self._credentials = credentials
        self._connection: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: Body | None = None, content_type: str = "application/json"
    ) -> Body:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self._credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        reused = self._connection is not None
        try:
            response, answer = self._send(method, path, data, headers)
        except _STALE:
            self.close()
            if not reused:
                raise
            response, answer = self._send(method, path, data, headers)
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, response.reason or "", response.getheader("Retry-After"))
        value = json.loads(answer) if answer else {}
        return value if isinstance(value, dict) else {}

    def _send(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        connection = self._connection or self._connect()
        connection.request(method, self._credentials.prefix + path, body=data, headers=headers)
        response = connection.getresponse()
        return response, response.read()

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection: the connect timeout for the handshake, the read timeout after it."""
        connect, read = REQUEST_TIMEOUT
        credentials = self._credentials
        connection: http.client.HTTPConnection
        if credentials.scheme == "https":
            connection = http.client.HTTPSConnection(
                credentials.host, credentials.port, timeout=connect, context=credentials.tls
            )
        else:
            connection = http.client.HTTPConnection(credentials.host, credentials.port, timeout=connect)
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(read)
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
