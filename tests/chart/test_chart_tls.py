"""The webhook's TLS in its three modes.

Self-signed: the generated certificates are parsed with `cryptography` and used in a real TLS handshake
under the name the API server dials; their reuse across `helm upgrade` is exercised through Helm's real
`lookup` against kmock standing in for the API server (`helm template --dry-run=server`, the same render
`helm upgrade` performs).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.kubeapi import KubeApi

if TYPE_CHECKING:
    from conftest import Helm, Rendered

CONFIG_PATH = "/etc/expiry/operator.yaml"


@dataclass(frozen=True)
class WebhookTLS:
    """What the chart rendered for the webhook's TLS: the Secret's pair, its CA and the webhook's caBundle."""

    ca: x509.Certificate
    cert: x509.Certificate
    key_pem: bytes
    ca_bundle: bytes
    secret: dict[str, Any]

    @classmethod
    def of(cls, rendered: Rendered) -> WebhookTLS:
        secret_name = tls_volume_secret(rendered)
        data = rendered.secret_data(secret_name)
        client_config = rendered.one("MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]
        return cls(
            ca=x509.load_pem_x509_certificate(data["ca.crt"]),
            cert=x509.load_pem_x509_certificate(data["tls.crt"]),
            key_pem=data["tls.key"],
            ca_bundle=base64.b64decode(client_config["caBundle"]),
            secret=rendered.one("Secret", secret_name),
        )


def tls_volume_secret(rendered: Rendered) -> str:
    """The Secret the operator's pods mount at the directory of the config's webhook.certFile."""
    config = yaml.safe_load(
        rendered.one("ConfigMap", rendered.one("Deployment")["metadata"]["name"])["data"]["operator.yaml"]
    )
    cert_dir = str(Path(config["webhook"]["certFile"]).parent)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == cert_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret_name: str = volume["secret"]["secretName"]
    return secret_name


def service_dns_names(rendered: Rendered) -> list[str]:
    service = rendered.one("Service")["metadata"]
    name, namespace = service["name"], service["namespace"]
    return [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


def handshake(tls: WebhookTLS, server_name: str) -> None:
    """A real TLS handshake: server with the Secret's pair, client trusting only the caBundle, like the API
    server calling https://<service>.<namespace>.svc."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert_file.write_bytes(tls.cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(tls.key_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cadata=tls.ca_bundle.decode())
    server_sock, client_sock = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as conn:
                conn.sendall(conn.recv(5))
        except (OSError, ssl.SSLError) as error:
            errors.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_name) as conn:
            conn.sendall(b"hello")
            assert conn.recv(5) == b"hello"
    finally:
        client_sock.close()
        thread.join(timeout=10)
    assert not errors, errors


def sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


@pytest.fixture(scope="module")
def tls(defaults: Rendered) -> WebhookTLS:
    """The self-signed pair of the default values."""
    return WebhookTLS.of(defaults)


class TestSelfSigned:
    def test_certificate_covers_the_services_dns_names(self, tls: WebhookTLS, defaults: Rendered) -> None:
        assert set(service_dns_names(defaults)) <= set(sans(tls.cert))

    def test_ca_signs_the_certificate_and_is_the_webhooks_ca_bundle(self, tls: WebhookTLS) -> None:
        tls.cert.verify_directly_issued_by(tls.ca)
        assert tls.ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert x509.load_pem_x509_certificate(tls.ca_bundle) == tls.ca

    def test_key_belongs_to_the_certificate(self, tls: WebhookTLS) -> None:
        key = serialization.load_pem_private_key(tls.key_pem, password=None)
        assert key.public_key() == tls.cert.public_key()

    def test_certificate_is_valid_now_for_the_configured_days(self, tls: WebhookTLS) -> None:
        now = datetime.datetime.now(datetime.UTC)
        assert tls.cert.not_valid_before_utc <= now < tls.cert.not_valid_after_utc
        assert tls.cert.not_valid_after_utc - now > datetime.timedelta(days=3600)
        recorded = int(tls.secret["metadata"]["annotations"]["expiry.io/tls-not-after"])
        assert abs(recorded - tls.cert.not_valid_after_utc.timestamp()) < 120

    @pytest.mark.parametrize("name_index", [0, 1])
    def test_api_server_completes_a_tls_handshake(
        self, tls: WebhookTLS, defaults: Rendered, name_index: int
    ) -> None:
        handshake(tls, service_dns_names(defaults)[name_index])

    def test_handshake_under_another_name_fails(self, tls: WebhookTLS) -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(tls, "evil.expiry-system.svc")

    def test_deployment_rolls_when_the_certificate_changes(self, tls: WebhookTLS, defaults: Rendered) -> None:
        annotations = defaults.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        pem = tls.cert.public_bytes(serialization.Encoding.PEM)
        assert annotations["checksum/tls"] == hashlib.sha256(pem).hexdigest()


def test_bring_your_own_secret(helm: Helm) -> None:
    rendered = helm.render(
        {"tls": {"mode": "secret", "secret": {"name": "corp-tls", "caBundle": helm.byo_ca_pem}}}
    )
    assert tls_volume_secret(rendered) == "corp-tls"
    assert not rendered.has("Secret"), "the user's Secret is theirs: the chart must not render one"
    bundle = base64.b64decode(
        rendered.one("MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
    )
    assert x509.load_pem_x509_certificate(bundle) == x509.load_pem_x509_certificate(helm.byo_ca_pem.encode())


@pytest.fixture(scope="module")
def cert_manager(helm: Helm) -> Rendered:
    return helm.render({"tls": {"mode": "certManager"}}, api_versions=helm.cert_manager_apis)


class TestCertManager:
    def test_serving_certificate_feeds_the_mounted_secret(self, cert_manager: Rendered) -> None:
        serving = next(c for c in cert_manager.all("Certificate") if not c["spec"].get("isCA"))
        assert serving["spec"]["secretName"] == tls_volume_secret(cert_manager)
        assert set(service_dns_names(cert_manager)) <= set(serving["spec"]["dnsNames"])
        assert "server auth" in serving["spec"]["usages"]
        assert not cert_manager.has("Secret"), "cert-manager writes the Secret"

    def test_cainjector_fills_the_ca_bundle_from_that_certificate(self, cert_manager: Rendered) -> None:
        webhook = cert_manager.one("MutatingWebhookConfiguration")
        serving = next(c for c in cert_manager.all("Certificate") if not c["spec"].get("isCA"))
        meta = serving["metadata"]
        assert (
            webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            == f"{meta['namespace']}/{meta['name']}"
        )
        assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]

    def test_private_ca_chain_issues_the_serving_certificate(self, cert_manager: Rendered) -> None:
        serving = next(c for c in cert_manager.all("Certificate") if not c["spec"].get("isCA"))
        ca_issuer = cert_manager.one("Issuer", serving["spec"]["issuerRef"]["name"])
        ca_cert = next(c for c in cert_manager.all("Certificate") if c["spec"].get("isCA"))
        assert ca_issuer["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
        assert "selfSigned" in cert_manager.one("Issuer", ca_cert["spec"]["issuerRef"]["name"])["spec"]

    def test_given_issuer_is_used_and_no_ca_is_made(self, helm: Helm) -> None:
        issuer = {"kind": "ClusterIssuer", "name": "corp-ca"}
        rendered = helm.render(
            {"tls": {"mode": "certManager", "certManager": {"issuerRef": issuer}}},
            api_versions=helm.cert_manager_apis,
        )
        assert rendered.one("Certificate")["spec"]["issuerRef"] == issuer
        assert not rendered.has("Issuer")


# --- Reuse across upgrades, through Helm's real lookup against kmock ----------------------------------------


@dataclass(frozen=True)
class FakeCluster:
    """kmock serving the Kubernetes API over real HTTP, and a kubeconfig pointing at it."""

    api: KubeApi
    kubeconfig: Path

    def create_secret(self, obj: dict[str, Any]) -> None:
        self.api.create(f"/api/v1/namespaces/{obj['metadata']['namespace']}/secrets", obj)

    def delete_secret(self, namespace: str, name: str) -> None:
        self.api.delete(f"/api/v1/namespaces/{namespace}/secrets/{name}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCluster]:
    with KubeApi(bundled=True) as api:  # kmock's full resource list, as helm's client-go discovers it
        yield FakeCluster(api, api.kubeconfig(tmp_path_factory.mktemp("kube") / "config"))


def installed_by_helm(helm: Helm, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as `helm install` leaves it in the cluster: with the release's ownership annotations."""
    owner = {"meta.helm.sh/release-name": helm.release, "meta.helm.sh/release-namespace": helm.namespace}
    obj["metadata"]["annotations"] = {**obj["metadata"].get("annotations", {}), **owner}
    return obj


def upgrade_render(helm: Helm, cluster: FakeCluster) -> Rendered:
    """The render `helm upgrade` makes: templates see the cluster through lookup."""
    server_side = (
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--dry-run=server",
        "--disable-openapi-validation",
    )
    return helm.render(kube_version=None, extra_args=server_side)


def test_upgrade_keeps_the_installed_certificate(helm: Helm, cluster: FakeCluster) -> None:
    installed = upgrade_render(helm, cluster)
    secret_name = tls_volume_secret(installed)
    cluster.create_secret(installed_by_helm(helm, installed.one("Secret", secret_name)))
    try:
        upgraded = upgrade_render(helm, cluster)
        assert upgraded.one("Secret", secret_name)["data"] == installed.one("Secret", secret_name)["data"]
        assert WebhookTLS.of(upgraded).ca_bundle == WebhookTLS.of(installed).ca_bundle
        checksum = "checksum/tls"
        before = installed.one("Deployment")["spec"]["template"]["metadata"]["annotations"][checksum]
        assert upgraded.one("Deployment")["spec"]["template"]["metadata"]["annotations"][checksum] == before
    finally:
        cluster.delete_secret(helm.namespace, secret_name)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("expiry.io/tls-not-after", str(int(datetime.datetime.now(datetime.UTC).timestamp()) + 86400)),
        ("expiry.io/tls-dns-names", "old-name.expiry-system.svc"),
    ],
    ids=["expiring-soon", "other-service-name"],
)
def test_upgrade_replaces_a_certificate_that_no_longer_holds(
    helm: Helm, cluster: FakeCluster, annotation: str, value: str
) -> None:
    installed = upgrade_render(helm, cluster)
    secret_name = tls_volume_secret(installed)
    stale = installed.one("Secret", secret_name)
    stale["metadata"]["annotations"][annotation] = value
    cluster.create_secret(installed_by_helm(helm, stale))
    try:
        upgraded = WebhookTLS.of(upgrade_render(helm, cluster))
        assert upgraded.cert != WebhookTLS.of(installed).cert
        upgraded.cert.verify_directly_issued_by(upgraded.ca)
        assert x509.load_pem_x509_certificate(upgraded.ca_bundle) == upgraded.ca
    finally:
        cluster.delete_secret(helm.namespace, secret_name)


def test_rendering_without_a_cluster_makes_a_new_pair_each_time(helm: Helm) -> None:
    # The GitOps caveat of docs/install.md: no lookup, no reuse.
    first, second = (WebhookTLS.of(helm.render()) for _ in range(2))
    assert first.cert != second.cert
