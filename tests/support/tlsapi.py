"""A real HTTPS server standing in for the Kubernetes API where kmock (plain HTTP) cannot: for the
sidecar's standard-library client, which must trust the cluster's CA, present a client certificate
and send the service account's token.

``Pki`` makes a CA, a serving certificate for 127.0.0.1 and a client certificate (PEM bytes);
``TlsApi`` serves on a local port with that certificate, asks for (but does not require) a client
certificate, records every request (method, path, headers, body, the client certificate's common
name) and answers from a queue of ``Answer`` (default: 200 with ``{"kind": "Status"}``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    ca: bytes = b""
    server_cert: bytes = b""
    server_key: bytes = b""
    client_cert: bytes = b""
    client_key: bytes = b""

    @classmethod
    def make(cls, ca_name: str = "test-ca", client: str = "system:serviceaccount:training:trainer") -> Pki:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name(ca_name))
            .issuer_name(_name(ca_name))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )

        def issue(common_name: str, server: bool) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(common_name))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=1))
                .not_valid_after(now + datetime.timedelta(hours=1))
            )
            if server:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                    critical=False,
                )
            cert = builder.sign(ca_key, hashes.SHA256())
            return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

        server_cert, server_key = issue("127.0.0.1", True)
        client_cert, client_key = issue(client, False)
        return cls(
            ca.public_bytes(serialization.Encoding.PEM), server_cert, server_key, client_cert, client_key
        )


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"kind": "Status"})
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client: str | None
    """The client certificate's common name (None: none presented)."""


class TlsApi:
    def __init__(self, pki: Pki) -> None:
        self.seen: list[Seen] = []
        self.answers: list[Answer] = []
        self.hang_up = False
        """Close each connection after its answer without saying so (as a server whose keep-alive
        timeout passed does): the client finds out at its next request."""
        self._lock = threading.Lock()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as scratch:
            chain = Path(scratch) / "server.pem"
            chain.write_bytes(pki.server_cert + pki.server_key)
            tls.load_cert_chain(chain)
        tls.load_verify_locations(cadata=pki.ca.decode())
        tls.verify_mode = ssl.CERT_OPTIONAL
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
                client = None
                if peer:
                    client = next(v for ((k, v),) in peer["subject"] if k == "commonName")
                with api._lock:
                    api.seen.append(
                        Seen(
                            self.command,
                            self.path,
                            dict(self.headers),
                            json.loads(raw) if raw else None,
                            client,
                        )
                    )
                    answer = api.answers.pop(0) if api.answers else Answer()
                data = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = api.hang_up

            do_GET = do_POST = do_PATCH = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
