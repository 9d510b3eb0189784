"""Where the sidecar's API server is and who it is there: the pod's service account (in-cluster), or
``$KUBECONFIG`` when set (tests, a sidecar run by hand).

In-cluster: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, the CA and the token of
``/var/run/secrets/kubernetes.io/serviceaccount``. The token is a file the kubelet rotates (bound
service account tokens expire): :class:`Credentials` re-reads it whenever the file changed.

A kubeconfig: its current context (or its only one); the cluster's ``server``,
``certificate-authority`` or ``certificate-authority-data``, ``insecure-skip-tls-verify``,
``tls-server-name``; the user's ``token``, ``tokenFile``, ``client-certificate``/``client-key`` or
their ``-data`` forms. Relative file names are relative to the kubeconfig's directory, as kubectl has
it. Anything the sidecar cannot honour (``exec`` and ``auth-provider`` plugins, basic auth) is a
:class:`CredentialsError` saying so.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from expiry import names
from expiry_sidecar import kubeyaml

SERVICE_ACCOUNT = Path(names.SERVICE_ACCOUNT_DIR)


class CredentialsError(Exception):
    """No usable credentials; the message says what is missing."""


@dataclass
class Credentials:
    """An API server's address, how to trust it, and the bearer token (fixed, or a file)."""

    scheme: str
    host: str
    port: int
    tls: ssl.SSLContext | None
    token: str | None = None
    token_file: Path | None = None
    prefix: str = ""
    """The server URL's path (a proxy's, e.g. ``/k8s/clusters/c-1``), before every API path."""
    _seen: tuple[int, int, int] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bearer(self) -> str | None:
        """The token to send: the token file's, re-read when the file changed (rotation)."""
        if self.token_file is None:
            return self.token
        with self._lock:
            stat = self.token_file.stat()
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if seen != self._seen:
                self.token = self.token_file.read_text().strip()
                self._seen = seen
            return self.token


def load() -> Credentials:
    """``$KUBECONFIG``'s credentials when it is set, otherwise the pod's service account."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return from_kubeconfig(Path(kubeconfig.split(os.pathsep)[0]))
    return in_cluster()


def in_cluster(account: Path = SERVICE_ACCOUNT) -> Credentials:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise CredentialsError(
            "not in a pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)"
            " and no $KUBECONFIG"
        )
    token = account / "token"
    if not token.is_file():
        raise CredentialsError(f"no service account token at {token} (automountServiceAccountToken: false?)")
    try:
        tls = ssl.create_default_context(cafile=str(account / "ca.crt"))
    except (OSError, ssl.SSLError) as exc:
        raise CredentialsError(f"the service account's CA {account / 'ca.crt'}: {exc}") from None
    return Credentials(
        "https", host.strip("[]"), _port(port, "KUBERNETES_SERVICE_PORT"), tls, token_file=token
    )


def from_kubeconfig(path: Path) -> Credentials:
    try:
        config = kubeyaml.load(path.read_text())
    except (OSError, UnicodeDecodeError, kubeyaml.YamlError) as exc:
        raise CredentialsError(f"$KUBECONFIG {path}: {exc}") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"$KUBECONFIG {path}: not a kubeconfig")
    context = _named(config, "contexts", "context", config.get("current-context"), path)
    cluster = _named(config, "clusters", "cluster", context.get("cluster"), path)
    user = _named(config, "users", "user", context.get("user"), path) if context.get("user") else {}
    base = path.parent
    server = urlsplit(str(cluster.get("server") or ""))
    if server.scheme not in ("http", "https") or not server.hostname:
        raise CredentialsError(
            f"$KUBECONFIG {path}: the cluster's server {cluster.get('server')!r} is not a URL"
        )
    for unsupported in ("exec", "auth-provider", "username", "password"):
        if user.get(unsupported):
            raise CredentialsError(
                f"$KUBECONFIG {path}: the user's {unsupported!r} is not supported by the sidecar"
                " (use a token, a token file or a client certificate)"
            )
    tls = _tls(cluster, user, base, path) if server.scheme == "https" else None
    token_file = user.get("tokenFile")
    return Credentials(
        server.scheme,
        server.hostname,
        server.port or (443 if server.scheme == "https" else 80),
        tls,
        token=user.get("token") or None,
        token_file=base / token_file if token_file else None,
        prefix=server.path.rstrip("/"),
    )


def _tls(cluster: dict[str, Any], user: dict[str, Any], base: Path, path: Path) -> ssl.SSLContext:
    try:
        if cluster.get("insecure-skip-tls-verify") is True:
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            tls = ssl.create_default_context(cadata=_decoded(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            tls = ssl.create_default_context(cadata=(base / cluster["certificate-authority"]).read_text())
        else:
            tls = ssl.create_default_context()
        certificate = _pem(user, "client-certificate", base)
        key = _pem(user, "client-key", base)
        if certificate or key:
            if not (certificate and key):
                raise CredentialsError(
                    f"$KUBECONFIG {path}: a client certificate needs its key, and a key its certificate"
                )
            _load_chain(tls, certificate, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CredentialsError(f"$KUBECONFIG {path}: {exc}") from None
    return tls


def _pem(user: dict[str, Any], name: str, base: Path) -> bytes | None:
    if user.get(f"{name}-data"):
        return _decoded(user[f"{name}-data"])
    if user.get(name):
        return (base / str(user[name])).read_bytes()
    return None


def _load_chain(tls: ssl.SSLContext, certificate: bytes, key: bytes) -> None:
    """ssl loads a certificate chain from files only: a private file for the moment it reads them."""
    with tempfile.TemporaryDirectory(prefix="expiry-tls-") as scratch:
        chain = Path(scratch) / "chain.pem"
        chain.touch(mode=0o600)
        chain.write_bytes(certificate.rstrip(b"\n") + b"\n" + key)
        tls.load_cert_chain(chain)


def _decoded(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a '-data' field is not base64") from None


def _named(config: dict[str, Any], plural: str, singular: str, name: Any, path: Path) -> dict[str, Any]:
    entries = [e for e in config.get(plural) or [] if isinstance(e, dict)]
    if name is None and len(entries) == 1:
        chosen = entries[0]
    else:
        chosen = next((e for e in entries if e.get("name") == name), {})
    value = chosen.get(singular)
    if chosen and value is None:  # named, with nothing in it (a user without credentials)
        return {}
    if not isinstance(value, dict):
        which = f"{singular} {name!r}" if name is not None else f"a current {singular}"
        raise CredentialsError(f"$KUBECONFIG {path}: no {which} in {plural}")
    return value


def _port(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CredentialsError(f"{where} is not a port number: {text!r}") from None
