"""The operator image serves the webhook over TLS from its own root file system, as the chart deploys it.

The chart is rendered by the real helm (free ports instead of the defaults: the pod shares this
machine's network); its Deployment's pod template runs in tests/support/podrunner.py from the
expiry-operator image, with the chart's own ConfigMap and TLS Secret as files where the kubelet would
mount them, and kmock as the Kubernetes API. An AdmissionReview is then POSTed over real TLS, verified
as the API server verifies it: against the caBundle of the chart's MutatingWebhookConfiguration, for
the Service's DNS name.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from expiry.names import SIDECAR_CONTAINER
from tests.images.conftest import REPO, Images
from tests.operator.operator_harness import KubeApi, admission_review, decoded_patch
from tests.support.podrunner import PodRunner
from tests.support.sidecar import free_port, wait_for

pytestmark = pytest.mark.timeout(1200)  # the first test may build the images (scripts/build-images)

NAMESPACE = "expiry-system"
OPERATOR_UID = "65532"


def helm() -> str:
    """helm from .tools (scripts/bootstrap dev puts it there), else from PATH."""
    local = REPO / ".tools/bin/helm"
    return str(local) if local.exists() else "helm"


def render(ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The chart's objects by kind (one of each kind is all this test reads; the helm test hook's own
    ServiceAccount, ConfigMap and Pod are left out)."""
    sets = ",".join(f"operator.ports.{name}={port}" for name, port in ports.items())
    out = subprocess.run(
        [helm(), "template", "expiry", str(REPO / "charts/expiry"), "--skip-tests", "--namespace", NAMESPACE,
         "--set", sets],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out.stdout) if doc}


def operator_pod(objects: dict[str, dict[str, Any]], api: KubeApi, workdir: Path) -> dict[str, Any]:
    """The Deployment's pod, its ConfigMap and Secret volumes as files (hostPath), KUBECONFIG for kmock."""
    template = objects["Deployment"]["spec"]["template"]
    spec = template["spec"]
    for volume in spec["volumes"]:
        files: dict[str, bytes] = {}
        if "configMap" in volume:
            files = {k: v.encode() for k, v in objects["ConfigMap"]["data"].items()}
        elif "secret" in volume:
            files = {k: base64.b64decode(v) for k, v in objects["Secret"]["data"].items()}
        else:
            continue
        directory = workdir / "volumes" / volume["name"]
        directory.mkdir(parents=True)
        for name, content in files.items():
            (directory / name).write_bytes(content)
            (directory / name).chmod(0o644)  # the kubelet's defaultMode
        del volume["configMap" if "configMap" in volume else "secret"]
        volume["hostPath"] = {"path": str(directory)}
    kube = workdir / "kube"
    kube.mkdir()
    api.kubeconfig(kube / "kubeconfig").chmod(0o644)
    spec["volumes"].append({"name": "kube-api", "hostPath": {"path": str(kube)}})
    (operator,) = spec["containers"]
    operator["volumeMounts"].append({"name": "kube-api", "mountPath": "/etc/kube-api", "readOnly": True})
    operator.setdefault("env", []).append({"name": "KUBECONFIG", "value": "/etc/kube-api/kubeconfig"})
    metadata = {**template["metadata"], "name": "expiry-0", "namespace": NAMESPACE, "uid": "operator-pod-uid"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def post_over_tls(port: int, server_name: str, ca_bundle: bytes, path: str, body: dict[str, Any]) -> Any:
    """POST as the API server does: TLS verified against the webhook's caBundle, for ``server_name``."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection = http.client.HTTPSConnection(server_name, port, context=context, timeout=10)
    connection.sock = context.wrap_socket(raw, server_hostname=server_name)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        reply = connection.getresponse()
        assert reply.status == 200, reply.read()
        return json.loads(reply.read())
    finally:
        connection.close()


@pytest.fixture
def api() -> Iterator[KubeApi]:
    server = KubeApi()
    try:
        yield server
    finally:
        server.close()


def test_the_operator_image_serves_admission_over_tls(images: Images, api: KubeApi, tmp_path: Path) -> None:
    ports = {"webhook": free_port(), "health": free_port(), "metrics": free_port()}
    objects = render(ports)
    pod = operator_pod(objects, api, tmp_path)
    (operator_spec,) = pod["spec"]["containers"]
    assert operator_spec["image"] == images.operator, "the chart's default image is the one built here"
    webhook = objects["MutatingWebhookConfiguration"]["webhooks"][0]["clientConfig"]
    service = webhook["service"]

    with PodRunner(pod, tmp_path / "pod") as run:
        operator = run.containers[operator_spec["name"]]

        def ready() -> bool:
            assert operator.process.poll() is None, operator.log()
            try:
                return (
                    requests.get(f"http://127.0.0.1:{ports['health']}/readyz", timeout=1).status_code == 200
                )
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=60, what=f"the operator's readiness\n{operator.log()}")
        status = operator.status()
        assert status["Uid"].split() == [OPERATOR_UID] * 4
        assert status["CapEff"] == status["CapBnd"] == "0000000000000000"

        trainer = {
            "metadata": {
                "name": "trainer-0",
                "namespace": "ml",
                "annotations": {"expiry.io/enabled": "true"},
            },
            "spec": {"containers": [{"name": "trainer", "image": "python:3.11"}]},
        }
        review = post_over_tls(
            ports["webhook"],
            f"{service['name']}.{service['namespace']}.svc",
            base64.b64decode(webhook["caBundle"]),
            service["path"],
            admission_review(trainer),
        )
        assert review["response"]["allowed"] is True, review
        added = [op["value"] for op in decoded_patch(review) if op["op"] == "add"]
        sidecars = [c for value in added for c in (value if isinstance(value, list) else [value])]
        assert any(
            isinstance(c, dict) and c.get("name") == SIDECAR_CONTAINER and c.get("image") == images.sidecar
            for c in sidecars
        ), added
        exits = run.stop()
    assert exits[operator_spec["name"]] == 0, operator.log()
