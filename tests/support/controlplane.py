"""A real Kubernetes control plane on loopback, from upstream sources (``scripts/cluster``).

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok are built by ``go build``
from the versions pinned in ``cluster/go.mod`` and ``cluster/kwok/go.mod`` (through the Go module
proxy), once per version: the binaries are cached outside the work tree, under
``~/.cache/expiry/cluster/<kubernetes version>-<hash of the pins and the Go version>/``.

Everything listens on 127.0.0.1 only, with TLS and client certificates from a CA made here; the API
server runs RBAC (and the Node authorizer), the default admission plugins (PodSecurity,
MutatingAdmissionWebhook, ValidatingAdmissionWebhook, ServiceAccount, ...) and NodeRestriction, and
signs service account tokens. It resolves webhook Services to their endpoints
(``--enable-aggregator-routing``), so a call to the chart's webhook Service reaches the operator pod's
address, never a ClusterIP (there is no kube-proxy). etcd keeps its data on a tmpfs.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
GO_MODULE = REPO / "cluster"
KWOK_MODULE = GO_MODULE / "kwok"
CACHE = Path(os.environ.get("EXPIRY_CLUSTER_CACHE", Path.home() / ".cache/expiry/cluster"))
SERVICE_CIDR = "10.96.0.0/16"  # ClusterIPs are only numbers here: nothing routes to them (no kube-proxy)
KWOK_POD_CIDR = "10.128.0.0/16"  # kwok's fake pods' addresses: nothing connects to them


def kubernetes_version() -> str:
    match = re.search(
        r"^\s*(?:require )?k8s\.io/kubernetes (v[\d.]+)(?: // indirect)?$",
        (GO_MODULE / "go.mod").read_text(),
        re.M,
    )
    if not match:
        raise SystemExit("cluster/go.mod: no 'require k8s.io/kubernetes vX.Y.Z' line")
    return match.group(1)


# -- building ---------------------------------------------------------------------------------------------

BINARIES = {
    "etcd": (GO_MODULE, "go.etcd.io/etcd/server/v3"),
    "kube-apiserver": (GO_MODULE, "k8s.io/kubernetes/cmd/kube-apiserver"),
    "kube-controller-manager": (GO_MODULE, "k8s.io/kubernetes/cmd/kube-controller-manager"),
    "kube-scheduler": (GO_MODULE, "k8s.io/kubernetes/cmd/kube-scheduler"),
    "kwok": (KWOK_MODULE, "sigs.k8s.io/kwok/cmd/kwok"),
}


def binary_dir() -> Path:
    """Where this version's binaries are cached: keyed by the pins and the Go toolchain."""
    go = subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(go.encode())
    for module in (GO_MODULE, KWOK_MODULE):
        for name in ("go.mod", "go.sum"):
            digest.update((module / name).read_bytes())
    return CACHE / f"{kubernetes_version()}-{digest.hexdigest()[:12]}"


def build(say: Any = print) -> Path:
    """The cached binaries, built first when missing (cold: minutes; warm: nothing to do)."""
    where = binary_dir()
    if all((where / name).is_file() for name in BINARIES):
        return where
    version = kubernetes_version()
    major, minor = version.lstrip("v").split(".")[:2]
    ldflags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in {
            "gitVersion": version,
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "clean",
        }.items()
    )
    where.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for name, (module, package) in BINARIES.items():
        if (where / name).is_file():
            continue
        say(f"building {name} ({package}) ...")
        partial = where / f".{name}.partial"
        subprocess.run(
            ["go", "build", "-ldflags", ldflags, "-o", str(partial), package],
            cwd=module,
            check=True,
            env={**os.environ, "GOFLAGS": "-buildvcs=false"},
        )
        partial.rename(where / name)
    seconds = time.monotonic() - started
    (where / "build-seconds").write_text(f"{seconds:.0f}\n")
    say(f"built the control plane in {seconds:.0f} s into {where}")
    return where


# -- certificates -----------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(parts)


@dataclass
class Pki:
    """A CA and the certificates this control plane needs, as files in ``where``."""

    where: Path
    ca_key: Any = field(default=None, repr=False)
    ca_cert: Any = field(default=None, repr=False)

    def create(self, extra_ips: list[str]) -> None:
        self.where.mkdir(parents=True, exist_ok=True)
        self.ca_key = _key()
        now = datetime.datetime.now(datetime.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("expiry-test-ca"))
            .issuer_name(_name("expiry-test-ca"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        (self.where / "ca.key").write_bytes(_pem_key(self.ca_key))
        (self.where / "ca.crt").write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        self.issue(
            "apiserver",
            "kube-apiserver",
            dns=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips=["127.0.0.1", service_ip, *extra_ips],
            server=True,
        )
        self.issue("admin", "expiry-test-admin", org="system:masters")
        self.issue("controller-manager", "system:kube-controller-manager")
        self.issue("scheduler", "system:kube-scheduler")
        self.issue("kwok", "kwok-controller", org="system:masters")
        self.issue("kubelet", "system:node:expiry-node", org="system:nodes")
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.where / "sa.key").write_bytes(_pem_key(sa))
        (self.where / "sa.pub").write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def issue(
        self,
        file: str,
        cn: str,
        *,
        org: str | None = None,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        server: bool = False,
    ) -> None:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if dns or ips:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        (self.where / f"{file}.key").write_bytes(_pem_key(key))
        (self.where / f"{file}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def kubeconfig(self, user: str, server: str, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "expiry-test",
                    "cluster": {"server": server, "certificate-authority": str(self.where / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.where / f"{user}.crt"),
                        "client-key": str(self.where / f"{user}.key"),
                    },
                }
            ],
            "contexts": [{"name": "expiry-test", "context": {"cluster": "expiry-test", "user": user}}],
            "current-context": "expiry-test",
        }
        path.write_text(yaml.safe_dump(config))
        return path


# -- processes --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(name: str, argv: list[str], state: Path, **kwargs: Any) -> int:
    """Start a component in its own session, its output in ``<state>/logs/<name>.log``; its pid."""
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
    pids = _read_json(state / "pids.json")
    pids[name] = process.pid
    (state / "pids.json").write_text(json.dumps(pids, indent=1))
    return process.pid


def stop_all(state: Path, grace: float = 20) -> list[str]:
    """SIGTERM every component started in ``state`` (newest first), SIGKILL after ``grace``; their names."""
    pids = _read_json(state / "pids.json")
    for pid in reversed(list(pids.values())):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    give_up = time.monotonic() + grace
    for pid in reversed(list(pids.values())):
        while alive(pid) and time.monotonic() < give_up:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for pid in pids.values():
        while alive(pid):
            time.sleep(0.05)
    (state / "pids.json").write_text("{}")
    return list(pids)


def running(state: Path) -> dict[str, bool]:
    return {name: alive(pid) for name, pid in _read_json(state / "pids.json").items()}


def alive(pid: int) -> bool:
    """A process that exists and has not exited (a zombie of ours counts as exited)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


# -- the control plane ------------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    state: Path
    bin: Path
    node_gateway: str
    """The node network's host address: pods reach the API server through it."""
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def up(self, say: Any = print) -> Path:
        """Start etcd, the API server, the controllers, the scheduler and kwok; the admin kubeconfig."""
        self.ports = {
            name: free_port()
            for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
        }
        (self.state / "ports.json").write_text(json.dumps(self.ports))
        pki = Pki(self.pki)
        pki.create(extra_ips=[self.node_gateway])
        admin = pki.kubeconfig("admin", self.server, self.state / "kubeconfig")
        etcd_data = self.state / "etcd"
        etcd_data.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "expiry-etcd", str(etcd_data)], check=True)
        etcd = f"http://127.0.0.1:{self.ports['etcd']}"
        start(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=expiry",
                f"--data-dir={etcd_data}/data",
                f"--listen-client-urls={etcd}",
                f"--advertise-client-urls={etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
                f"--initial-cluster=expiry=http://127.0.0.1:{self.ports['etcd-peer']}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
            self.state,
        )
        issuer = "https://kubernetes.default.svc.cluster.local"
        start(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers={etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                f"--tls-cert-file={self.pki}/apiserver.crt",
                f"--tls-private-key-file={self.pki}/apiserver.key",
                f"--client-ca-file={self.pki}/ca.crt",
                f"--service-account-issuer={issuer}",
                f"--api-audiences={issuer}",
                f"--service-account-key-file={self.pki}/sa.pub",
                f"--service-account-signing-key-file={self.pki}/sa.key",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",  # the advertised 127.0.0.1 may not be an endpoint
                "--profiling=false",
                "--v=1",
            ],
            self.state,
        )
        wait_healthy(self.server, self.pki, "/readyz", what="kube-apiserver", state=self.state, timeout=90)
        for component, port_flag in (
            ("controller-manager", "controller-manager"),
            ("scheduler", "scheduler"),
        ):
            kubeconfig = pki.kubeconfig(component, self.server, self.state / f"{component}.kubeconfig")
            extra = []
            if component == "controller-manager":
                extra = [
                    f"--service-account-private-key-file={self.pki}/sa.key",
                    f"--root-ca-file={self.pki}/ca.crt",
                    "--use-service-account-credentials=true",
                    "--controllers=*",
                    f"--cluster-signing-cert-file={self.pki}/ca.crt",
                    f"--cluster-signing-key-file={self.pki}/ca.key",
                ]
            start(
                f"kube-{component}",
                [
                    str(self.bin / f"kube-{component}"),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.ports[port_flag]}",
                    "--leader-elect=false",
                    *extra,
                ],
                self.state,
            )
        kwok_config = self.state / "kwok.yaml"
        kwok_config.write_text(kwok_stages())
        start(
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={pki.kubeconfig('kwok', self.server, self.state / 'kwok.kubeconfig')}",
                f"--config={kwok_config}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={KWOK_POD_CIDR}",
                "--node-ip=127.0.0.1",
                "--server-address=127.0.0.1:" + str(self.ports["kwok"]),
            ],
            self.state,
        )
        say(f"kube-apiserver {kubernetes_version()} ready at {self.server}")
        return admin

    def down(self) -> list[str]:
        stopped = stop_all(self.state)
        etcd_data = self.state / "etcd"
        if os.path.ismount(etcd_data):
            subprocess.run(["umount", str(etcd_data)], check=True)
        return stopped


def kwok_stages() -> str:
    """kwok's configuration: its own 'fast' node and pod stages and the Lease heartbeat, from the module
    cache of the pinned kwok (read, not copied into this repository)."""
    where = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
        cwd=KWOK_MODULE,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    ).stdout.strip()
    stage = Path(where) / "kustomize/stage"
    files = [
        *sorted((stage / "node/fast").glob("*.yaml")),
        *sorted((stage / "node/heartbeat-with-lease").glob("*.yaml")),
        *sorted((stage / "pod/fast").glob("*.yaml")),
    ]
    docs = [f.read_text() for f in files if f.name != "kustomization.yaml"]
    docs = [d for d in docs if "kind: Stage" in d and "name: node-heartbeat\n" not in d]
    return "\n---\n".join(docs)


def wait_healthy(server: str, pki: Path, path: str, *, what: str, state: Path, timeout: float) -> None:
    import requests

    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        with contextlib.suppress(requests.RequestException):
            answer = requests.get(
                server + path,
                verify=str(pki / "ca.crt"),
                cert=(str(pki / "admin.crt"), str(pki / "admin.key")),
                timeout=5,
            )
            if answer.status_code == 200:
                return
        time.sleep(0.3)
    log = (state / "logs" / f"{what}.log").read_text(errors="replace")[-3000:]
    raise SystemExit(f"{what} did not become healthy within {timeout:.0f} s; its log ends:\n{log}")


def which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed")
    return found
