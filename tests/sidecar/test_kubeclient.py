"""The sidecar's standard-library Kubernetes client against a real HTTPS server (tests/support/tlsapi):
each credential form a pod or a kubeconfig gives it, the token file re-read when the kubelet rotates
it, the answer's status and ``Retry-After`` handed to the writer, and one clear line for whatever it
cannot use."""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from expiry_sidecar import kubecreds
from expiry_sidecar.apiwriter import retry_after
from expiry_sidecar.kubeclient import ApiError, ApiUnavailable, KubeClient
from tests.support.tlsapi import Answer, Pki, TlsApi

POD_PATH = "/api/v1/namespaces/training/pods/trainer-0"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.make()


@pytest.fixture
def api(pki: Pki) -> Iterator[TlsApi]:
    server = TlsApi(pki)
    yield server
    server.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(path: Path, cluster: str, user: str) -> Path:
    """A kubeconfig in kubectl's block style; ``cluster`` and ``user`` are their indented fields."""
    path.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
        + "".join(f"    {line}\n" for line in cluster.splitlines())
        + "  name: test\ncontexts:\n- context:\n    cluster: test\n    user: me\n  name: test\n"
        + "current-context: test\nusers:\n- name: me\n  user:\n"
        + "".join(f"    {line}\n" for line in user.splitlines())
    )
    return path


def client_from(path: Path, monkeypatch: pytest.MonkeyPatch) -> KubeClient:
    monkeypatch.setenv("KUBECONFIG", str(path))
    return KubeClient()


def test_a_token_and_the_ca_inline(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    api.answers.append(Answer(body={"metadata": {"uid": "u-1"}}))
    config = kubeconfig(
        tmp_path / "config", f"server: {api.url}\ncertificate-authority-data: {b64(pki.ca)}", "token: s3cret"
    )
    client = client_from(config, clean_env)
    assert client.request("GET", POD_PATH) == {"metadata": {"uid": "u-1"}}
    client.request("PATCH", POD_PATH + "/status", {"status": {}}, "application/strategic-merge-patch+json")
    first, second = api.seen
    assert (first.method, first.path, first.headers["Authorization"]) == ("GET", POD_PATH, "Bearer s3cret")
    assert first.client is None
    assert second.headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert second.body == {"status": {}}


def test_a_client_certificate_inline_and_the_ca_as_a_relative_file(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.crt").write_bytes(pki.ca)
    config = kubeconfig(
        tmp_path / "config",
        f"server: {api.url}\ncertificate-authority: ca.crt",
        f"client-certificate-data: {b64(pki.client_cert)}\nclient-key-data: {b64(pki.client_key)}",
    )
    client_from(config, clean_env).request("GET", POD_PATH)
    (seen,) = api.seen
    assert seen.client == "system:serviceaccount:training:trainer"
    assert "Authorization" not in seen.headers


def test_the_server_url_s_path_comes_before_every_api_path(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """As client-go has it (a cluster behind a proxy such as Rancher's)."""
    config = kubeconfig(
        tmp_path / "config",
        f"server: {api.url}/k8s/clusters/c-1/\ncertificate-authority-data: {b64(pki.ca)}",
        "",
    )
    client_from(config, clean_env).request("GET", POD_PATH)
    assert api.seen[0].path == "/k8s/clusters/c-1" + POD_PATH


def test_a_client_certificate_in_files(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.crt").write_bytes(pki.ca)
    (tmp_path / "me.crt").write_bytes(pki.client_cert)
    (tmp_path / "me.key").write_bytes(pki.client_key)
    config = kubeconfig(
        tmp_path / "config",
        f"server: {api.url}\ncertificate-authority: {tmp_path / 'ca.crt'}",
        f"client-certificate: {tmp_path / 'me.crt'}\nclient-key: me.key",
    )
    client_from(config, clean_env).request("GET", POD_PATH)
    assert api.seen[0].client == "system:serviceaccount:training:trainer"


def test_a_server_the_ca_did_not_sign_is_refused(
    api: TlsApi, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    other = Pki.make("another-ca")
    config = kubeconfig(
        tmp_path / "config", f"server: {api.url}\ncertificate-authority-data: {b64(other.ca)}", "token: t"
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        client_from(config, clean_env).request("GET", POD_PATH)
    assert api.seen == []


def test_in_cluster_the_rotated_token_is_read_again(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(pki.ca)
    (account / "token").write_text("first\n")
    clean_env.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    clean_env.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    client = KubeClient(kubecreds.in_cluster(account))
    client.request("GET", POD_PATH)
    client.request("GET", POD_PATH)
    # the kubelet swaps a projected token atomically (a new file renamed over the old one)
    (account / "token.new").write_text("second\n")
    os.replace(account / "token.new", account / "token")
    client.request("GET", POD_PATH)
    assert [s.headers["Authorization"] for s in api.seen] == ["Bearer first", "Bearer first", "Bearer second"]


def test_a_kubeconfig_token_file_is_read_again_when_it_changes(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("one")
    config = kubeconfig(
        tmp_path / "config",
        f"server: {api.url}\ncertificate-authority-data: {b64(pki.ca)}",
        "tokenFile: token",
    )
    client = client_from(config, clean_env)
    client.request("GET", POD_PATH)
    (tmp_path / "token2").write_text("two")
    os.replace(tmp_path / "token2", tmp_path / "token")
    client.request("GET", POD_PATH)
    assert [s.headers["Authorization"] for s in api.seen] == ["Bearer one", "Bearer two"]


def test_an_error_status_carries_retry_after(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """A 429 asking for 7 s (not the writer's default of 1 s) reaches the writer's rule as 7 s."""
    api.answers.append(Answer(429, {"kind": "Status", "code": 429}, {"Retry-After": "7"}))
    api.answers.append(Answer(403, {"kind": "Status", "code": 403}))
    config = kubeconfig(
        tmp_path / "config", f"server: {api.url}\ncertificate-authority-data: {b64(pki.ca)}", "token: t"
    )
    client = client_from(config, clean_env)
    with pytest.raises(ApiError) as raised:
        client.request("POST", "/apis/events.k8s.io/v1/namespaces/training/events", {"kind": "Event"})
    assert (raised.value.status, raised.value.retry_after) == (429, "7")
    assert retry_after(raised.value) == 7.0
    with pytest.raises(ApiError) as raised:
        client.request("GET", POD_PATH)
    assert (raised.value.status, raised.value.retry_after, retry_after(raised.value)) == (403, None, None)
    assert client.request("GET", POD_PATH) == {"kind": "Status"}, "the connection outlives error answers"


def test_a_kept_alive_connection_the_server_closed_is_replaced_once(
    api: TlsApi, pki: Pki, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config = kubeconfig(
        tmp_path / "config", f"server: {api.url}\ncertificate-authority-data: {b64(pki.ca)}", "token: t"
    )
    client = client_from(config, clean_env)
    api.hang_up = True
    for _ in range(3):
        assert client.request("GET", POD_PATH) == {"kind": "Status"}
    assert len(api.seen) == 3, "each request reached the server exactly once"


@pytest.mark.parametrize(
    ("cluster", "user", "says"),
    [
        ("server: https://127.0.0.1:1", "exec: {command: aws}", "'exec' is not supported"),
        ("server: https://127.0.0.1:1", "username: a\npassword: b", "'username' is not supported"),
        ("server: not-a-url", "token: t", "is not a URL"),
        ("server: https://127.0.0.1:1\ncertificate-authority-data: '%%%'", "token: t", "not base64"),
        ("server: https://127.0.0.1:1\ncertificate-authority: missing.crt", "token: t", "missing.crt"),
        ("server: https://127.0.0.1:1", "client-key-data: a2V5", "needs its key"),
        ("server: https://127.0.0.1:1", "token: |\n  multi", "not supported"),
    ],
)
def test_what_the_client_cannot_use_is_one_line(
    cluster: str, user: str, says: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config = kubeconfig(tmp_path / "config", cluster, user)
    with pytest.raises(ApiUnavailable) as raised:
        client_from(config, clean_env)
    message = str(raised.value)
    assert says in message and "\n" not in message and str(config) in message, message


def test_no_credentials_at_all(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ApiUnavailable, match=r"not in a pod .* and no \$KUBECONFIG"):
        KubeClient()
    clean_env.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    clean_env.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(kubecreds.CredentialsError, match="automountServiceAccountToken"):
        kubecreds.in_cluster(tmp_path)
    clean_env.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(ApiUnavailable, match="absent"):
        KubeClient()
