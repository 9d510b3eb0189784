"""Real parts for operator tests and the webhook benchmark.

* ``KubeApi``: tests/support/kubeapi.py's kmock server, with the resources the operator uses.
* ``make_tls``: a CA and a serving certificate for 127.0.0.1/localhost (cryptography).
* ``OperatorProcess``: the real ``expiry-operator run`` process, configured by a real config file,
  logged in through a real kubeconfig, called over real TLS.

Kept importable without pytest so ``bench/webhook_latency.py`` can reuse it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import kubeapi

REPO = Path(__file__).resolve().parents[2]
OPERATOR_BIN = Path(sys.executable).parent / "expiry-operator"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KubeApi(kubeapi.KubeApi):
    """The API the operator needs: pods, events, namespaces, leases, and a version to read."""

    RESOURCES = {
        "v1/pods": ("Pod", True),
        "v1/events": ("Event", True),
        "v1/namespaces": ("Namespace", False),
        "events.k8s.io/v1/events": ("Event", True),
        "batch/v1/jobs": ("Job", True),
        "jobset.x-k8s.io/v1alpha2/jobsets": ("JobSet", True),
        "coordination.k8s.io/v1/leases": ("Lease", True),
    }

    def __init__(self, *, git_version: str = "v1.31.2") -> None:
        super().__init__(git_version=git_version, resources=self.RESOURCES)

    def create_pod(self, pod: dict[str, Any]) -> None:
        self.create(f"/api/v1/namespaces/{pod['metadata'].get('namespace', 'default')}/pods", pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.delete(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def forget_requests_beyond(self, count: int) -> None:
        """Keep only the last ``count`` requests in kmock's history (``reads`` then sees only those).

        kmock matches each request against its reactions by scanning every request it has recorded, so
        serving slows down linearly with the history: ~5 creates/s after a few hundred requests. A
        benchmark that sends thousands bounds it; tests that read the history leave it alone.
        """

        def bound(emulator: Any) -> None:
            emulator._requests = collections.deque(emulator._requests, maxlen=count)

        self.call(bound)

    def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch, as the kubelet (status) or a user (labels) would send it."""
        requests.patch(
            f"{self.url}/api/v1/namespaces/{namespace}/pods/{name}",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=10,
        ).raise_for_status()

    def reads(self, plural: str) -> list[str]:
        """The list and watch requests kmock has served for ``plural`` (e.g. "pods"), oldest first."""
        return self.call(
            lambda emulator: [
                str(request.action.value)
                for request in emulator
                if request.resource is not None
                and request.resource.plural == plural
                and str(request.action.value) in ("LIST", "WATCH")
            ]
        )

    def events(self, namespace: str) -> list[dict[str, Any]]:
        reply = requests.get(f"{self.url}/api/v1/namespaces/{namespace}/events", timeout=10)
        reply.raise_for_status()
        return list(reply.json()["items"])

    def post_kill_event(self, pod: dict[str, Any], kills: list[dict[str, Any]], **kwargs: Any) -> None:
        """What a sidecar writes after a burst of kills in ``pod`` (events.k8s.io/v1)."""
        event = kill_event(pod, kills, **kwargs)
        self.create(f"/apis/events.k8s.io/v1/namespaces/{event['metadata']['namespace']}/events", event)


def kill_event(
    pod: dict[str, Any],
    kills: list[dict[str, Any]],
    *,
    reason: str = "WorkerKilled",
    truncated: int = 0,
    at: float | None = None,
) -> dict[str, Any]:
    """A sidecar's kill Event (the contract in COMMON.md): one per pod and burst, the kills annotated."""
    metadata = pod["metadata"]
    when = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.UTC)
    annotations = {"expiry.io/kills": json.dumps(kills, separators=(",", ":"))}
    if truncated:
        annotations["expiry.io/kills-truncated"] = str(truncated)
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": f"{metadata['name']}.{uuid.uuid4().hex[:12]}",
            "namespace": metadata["namespace"],
            "uid": str(uuid.uuid4()),
            "annotations": annotations,
        },
        "eventTime": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "reportingController": "expiry.io/sidecar",
        "reportingInstance": f"{metadata['name']}/expiry-sidecar",
        "action": "Kill",
        "reason": reason,
        "type": "Warning",
        "note": f"{len(kills)} worker(s) passed their deadline",
        "regarding": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata.get("uid", ""),
        },
    }


def kill(rank: int | None, scope: str, frames: list[str], *, deadline: float | None = None) -> dict[str, Any]:
    """One worker of a kill Event's ``expiry.io/kills`` list."""
    return {
        "pid": 100 + (rank or 0),
        "rank": rank,
        "local_rank": None if rank is None else rank % 8,
        "scope": scope,
        "deadline": time.time() if deadline is None else deadline,
        "signal": "SIGKILL",
        "outcome": "delivered",
        "rule": "requested",
        "frames": frames,
    }


@dataclasses.dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, *, names: tuple[str, ...] = ("localhost", "127.0.0.1"), days: float = 1) -> Tls:
    """A fresh CA, and a serving certificate it signed for ``names`` valid ``days``, written as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"expiry test CA {uuid.uuid4().hex[:8]}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=max(days, 1)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(ca=directory / "ca.crt", cert=directory / "tls.crt", key=directory / "tls.key")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return tls


def admission_review(
    pod: dict[str, Any], *, operation: str = "CREATE", uid: str | None = None
) -> dict[str, Any]:
    """What the API server POSTs to a mutating webhook for a pod."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.get("metadata", {}).get("name", ""),
            "namespace": pod.get("metadata", {}).get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:job-controller", "groups": []},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    payload = response["response"]
    if "patch" not in payload:
        return []
    assert payload["patchType"] == "JSONPatch"
    return list(yaml.safe_load(base64.b64decode(payload["patch"])))


class PortTaken(Exception):
    """A port chosen free was taken by another process before the operator could bind it."""


class OperatorProcess:
    """``expiry-operator run`` as a real child process against ``api``, serving ``tls``."""

    def __init__(
        self,
        api: KubeApi,
        tls: Tls,
        workdir: Path,
        *,
        config: dict[str, Any] | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_args = extra_args
        self.tls = tls
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._config = config or {}
        self.config_path = workdir / "operator.yaml"
        self._choose_ports()
        self.log_path = workdir / "operator.log"
        self._env = {**os.environ, "KUBECONFIG": str(api.kubeconfig(workdir / "kubeconfig")), **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None
        # verify= on each call: requests lets $REQUESTS_CA_BUNDLE override a Session's own setting
        self.session = requests.Session()

    def _choose_ports(self) -> None:
        """Free ports now, written to the config; another process may still take one before the
        operator binds it (``start`` then chooses again)."""
        self.webhook_port, self.health_port, self.metrics_port = free_port(), free_port(), free_port()
        document: dict[str, Any] = {
            "webhook": {
                "port": self.webhook_port,
                "certFile": str(self.tls.cert),
                "keyFile": str(self.tls.key),
                "certReloadInterval": 0.2,
            },
            "health": {"port": self.health_port},
            "metrics": {"port": self.metrics_port},
        }
        for section, values in self._config.items():
            document.setdefault(section, {}).update(values)
        self.config_path.write_text(yaml.safe_dump(document))

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}/expiry-inject"

    def start(self, timeout: float = 30) -> None:
        for attempt in range(3):
            try:
                self._start(timeout)
                return
            except PortTaken:
                if attempt == 2:
                    raise
                self._choose_ports()

    def _start(self, timeout: float) -> None:
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(OPERATOR_BIN), "run", "--config", str(self.config_path), *self.extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                why = RuntimeError(f"operator exited with {self._process.returncode}:\n{self.log()}")
                if b"address already in use" in self.log_path.read_bytes()[before:]:
                    raise PortTaken() from why
                raise why
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"operator not ready within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no clean exit, so no Lease release either."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(10)

    def send_signal(self, signum: signal.Signals) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has exited by itself within ``timeout`` seconds."""
        assert self._process is not None
        return self._process.wait(timeout)

    def ready_status(self) -> int:
        return requests.get(f"http://127.0.0.1:{self.health_port}/readyz", timeout=5).status_code

    def stop(self) -> int | None:
        if self._process is None or self._process.poll() is not None:
            return None if self._process is None else self._process.returncode
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admit(self, pod: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        reply = self.post(json=admission_review(pod, **kwargs))
        reply.raise_for_status()
        return dict(reply.json())

    def post(self, **kwargs: Any) -> requests.Response:
        """POST to the webhook over TLS, verifying the server against the test CA."""
        return self.session.post(self.url, verify=str(self.tls.ca), timeout=10, **kwargs)

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


@contextlib.contextmanager
def running_operator(
    workdir: Path, *, git_version: str = "v1.31.2", **kwargs: Any
) -> Iterator[OperatorProcess]:
    """kmock, TLS material and the operator, all started; for scripts that need the whole stack."""
    with (
        KubeApi(git_version=git_version) as api,
        OperatorProcess(api, make_tls(workdir / "tls"), workdir, **kwargs) as op,
    ):
        yield op
