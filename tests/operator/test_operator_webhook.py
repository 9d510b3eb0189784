"""The real ``expiry-operator run`` process against kmock, called over TLS with AdmissionReview JSON."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import requests
from cryptography import x509

from tests.operator.injection_checks import check_injected, sidecars
from tests.operator.operator_harness import (
    KubeApi,
    OperatorProcess,
    admission_review,
    decoded_patch,
    make_tls,
)
from tests.operator.pod_corpus import DENIED_CASES, INJECTED_CASES, SKIPPED_CASES
from tests.support import sidecar as support


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webhook")


@pytest.fixture(scope="module")
def api() -> Iterator[KubeApi]:
    with KubeApi(git_version="v1.31.2") as running:
        yield running


@pytest.fixture(scope="module")
def operator(api: KubeApi, workdir: Path) -> Iterator[OperatorProcess]:
    with OperatorProcess(api, make_tls(workdir / "tls"), workdir / "op") as running:
        yield running


def apply(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return dict(jsonpatch.JsonPatch(decoded_patch(response)).apply(copy.deepcopy(pod)))


def counter(operator: OperatorProcess, result: str) -> float:
    for line in operator.metrics().splitlines():
        if line.startswith(f'expiry_admissions_total{{result="{result}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no expiry_admissions_total for {result}")


wait_for = functools.partial(support.wait_for, timeout=15)


@pytest.mark.parametrize("name", sorted(INJECTED_CASES))
def test_the_patch_injects_the_pod(operator: OperatorProcess, name: str) -> None:
    original = INJECTED_CASES[name]
    review = admission_review(original)
    reply = operator.post(json=review)
    assert reply.status_code == 200
    response = reply.json()
    assert response["kind"] == "AdmissionReview" and response["response"]["uid"] == review["request"]["uid"]
    assert response["response"]["allowed"] is True
    injected = apply(original, response)
    trainers = original["metadata"]["annotations"].get("expiry.io/containers")
    check_injected(original, injected, trainers.split(",") if trainers else None)
    assert sidecars(injected)[0][0] == "initContainers"  # the cluster runs 1.31: native sidecars

    again = operator.admit(injected)  # reinvocation, or a restore from a backup
    assert again["response"]["allowed"] is True and "patch" not in again["response"]


@pytest.mark.parametrize("name", sorted(DENIED_CASES))
def test_denials_are_admission_responses_with_the_reason(operator: OperatorProcess, name: str) -> None:
    pod, words = DENIED_CASES[name]
    denied_before = counter(operator, "denied")
    response = operator.admit(pod)["response"]
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] in (400, 403)
    assert all(word in response["status"]["message"] for word in words), response
    assert counter(operator, "denied") == denied_before + 1


@pytest.mark.parametrize("name", sorted(SKIPPED_CASES))
def test_pods_not_opted_in_pass_untouched(operator: OperatorProcess, name: str) -> None:
    skipped_before = counter(operator, "skipped")
    response = operator.admit(SKIPPED_CASES[name])["response"]
    assert response["allowed"] is True and "patch" not in response
    assert counter(operator, "skipped") == skipped_before + 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not JSON"),
        (b"\xff\xfe\x00garbage", 400, "not JSON"),
        (b"[1, 2]", 400, "AdmissionReview"),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
            400,
            "request",
        ),
        (json.dumps({**admission_review({})}).replace('"uid"', '"id"').encode(), 400, "uid"),
        (b'{"kind": "AdmissionReview", "padding": "' + b"x" * (9 * 1024 * 1024) + b'"}', 413, "too large"),
        (
            json.dumps(admission_review({}))
            .replace('"resource": "pods"', '"resource": "deployments"')
            .encode(),
            404,
            "pods only",
        ),
    ],
    ids=["not-json", "not-utf8", "not-an-object", "no-request", "no-uid", "oversized", "not-pods"],
)
def test_malformed_bodies_get_a_clear_4xx(
    operator: OperatorProcess, body: bytes, status: int, words: str
) -> None:
    reply = operator.post(data=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == status
    assert words in reply.text
    assert operator.admit(INJECTED_CASES["jobset"])["response"]["allowed"] is True  # still serving


def test_every_spelling_of_the_opt_in_gets_its_answer_from_the_webhook(operator: OperatorProcess) -> None:
    """The same rule as admit() and the chart's filter (tests/operator/test_opt_in.py, test_chart_webhook)."""
    for value, injected, allowed in (
        ("True", True, True),
        ("yes", True, True),
        ("1", True, True),
        ("False", False, True),
        ("off", False, True),
        ("ture", False, False),
    ):
        pod = copy.deepcopy(INJECTED_CASES["jobset"])
        pod["metadata"]["annotations"]["expiry.io/enabled"] = value
        response = operator.admit(pod)["response"]
        assert response["allowed"] is allowed, value
        assert bool(decoded_patch(operator.admit(pod))) is injected, value
        if not allowed:
            assert "'ture' is not accepted" in response["status"]["message"]


def test_health_and_metrics_endpoints(operator: OperatorProcess) -> None:
    base = f"http://127.0.0.1:{operator.health_port}"
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
    operator.admit(INJECTED_CASES["jobset"])
    metrics = operator.metrics()
    assert counter(operator, "injected") >= 1
    assert "expiry_admission_duration_seconds_count" in metrics


def test_unprotected_pods_are_reported(operator: OperatorProcess, api: KubeApi) -> None:
    bypassed = copy.deepcopy(INJECTED_CASES["jobset"])
    bypassed["metadata"].update(namespace="team-a", name="bypassed")
    injected = apply(INJECTED_CASES["jobset"], operator.admit(INJECTED_CASES["jobset"]))
    injected["metadata"].update(namespace="team-a", name="protected")
    api.create_pod(bypassed)
    api.create_pod(injected)

    events = wait_for(lambda: [e for e in api.events("team-a") if e["reason"] == "ExpiryNotInjected"])
    assert [e["involvedObject"]["name"] for e in events] == ["bypassed"]
    assert events[0]["type"] == "Warning" and "expiry.io/enabled" in events[0]["message"]
    wait_for(lambda: 'expiry_unprotected_pods{pod_namespace="team-a"} 1.0' in operator.metrics())
    assert "unprotected pod team-a/bypassed" in operator.log()

    api.delete_pod("team-a", "bypassed")
    wait_for(lambda: 'expiry_unprotected_pods{pod_namespace="team-a"} 0.0' in operator.metrics())


def served_certificate(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


def certificate_expiry_metric(operator: OperatorProcess) -> float:
    name = "expiry_webhook_certificate_expiry_timestamp_seconds "
    line = next(line for line in operator.metrics().splitlines() if line.startswith(name))
    return float(line.split()[-1])


def not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def test_a_rotated_certificate_is_served_without_a_restart(api: KubeApi, tmp_path: Path) -> None:
    """Also: the metric for the certificate's expiry follows the certificate really served."""
    first = make_tls(tmp_path / "first", days=10)
    with OperatorProcess(api, first, tmp_path / "op") as operator:
        assert operator.admit(INJECTED_CASES["jobset"])["response"]["allowed"]
        assert certificate_expiry_metric(operator) == not_after(first.cert)
        second = make_tls(tmp_path / "second", days=30)
        shutil.copy(second.cert, first.cert)
        shutil.copy(second.key, first.key)
        wait_for(lambda: served_certificate(operator.webhook_port) == second.cert.read_text())
        wait_for(lambda: certificate_expiry_metric(operator) == not_after(second.cert))
        reply = operator.session.post(
            operator.url, json=admission_review(INJECTED_CASES["jobset"]), verify=str(second.ca)
        )
        assert reply.json()["response"]["allowed"] is True

        third = make_tls(tmp_path / "third")  # half-written rotation: new certificate, old key
        shutil.copy(third.cert, first.cert)
        wait_for(lambda: "keeping the current certificate" in operator.log())
        assert served_certificate(operator.webhook_port) == second.cert.read_text()
        assert certificate_expiry_metric(operator) == not_after(second.cert)
        assert operator.stop() == 0


def test_old_clusters_get_regular_container_sidecars(tmp_path: Path) -> None:
    with (
        KubeApi(git_version="v1.27.16") as old_api,
        OperatorProcess(old_api, make_tls(tmp_path / "tls"), tmp_path / "op") as operator,
    ):
        for name in ("pytorchjob-worker", "restricted"):
            original = INJECTED_CASES[name]
            injected = apply(original, operator.admit(original))
            check_injected(original, injected)  # validated against the 1.27 schema
            assert sidecars(injected)[0][0] == "containers"


def test_self_signed_mode_serves_tls(api: KubeApi, tmp_path: Path) -> None:
    unused = make_tls(tmp_path / "unused")
    (tmp_path / "unused" / "tls.crt").unlink()  # self-signed mode must not need the files
    with OperatorProcess(api, unused, tmp_path / "op", extra_args=("--self-signed",)) as operator:
        ca = tmp_path / "served.crt"
        ca.write_text(served_certificate(operator.webhook_port))
        reply = operator.session.post(
            operator.url, json=admission_review(INJECTED_CASES["jobset"]), verify=str(ca)
        )
        assert reply.json()["response"]["allowed"] is True
