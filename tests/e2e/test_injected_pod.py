"""End to end: what the operator injects is what the sidecar and the trainer need.

A Pod manifest goes through the real ``expiry-operator inject``; the injected sidecar container's
args, env and user are then run, as the kubelet would run them, in a fresh PID namespace whose
``/var/run/expiry`` is an empty tmpfs (the emptyDir), next to a trainer started with the trainer
container's injected env. The trainer hangs, and the sidecar the operator configured kills it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from expiry.names import RUN_DIR, SIDECAR_CONTAINER
from tests.support.injected import container, resolve_env
from tests.support.pod import Pod, can_make_pods
from tests.support.sidecar import SIDECAR, WORKER, Metrics, as_user, wait_for

OPERATOR = str(Path(sys.executable).with_name("expiry-operator"))

MANIFEST = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "trainer-0",
        "namespace": "ml",
        "uid": "5f0c1c39-8f7e-4d2a-9c53-3b1f0e6a2d41",
        "annotations": {"expiry.io/enabled": "true"},
    },
    "spec": {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True},
        "containers": [{"name": "trainer", "image": "python:3.11", "command": ["python", "train.py"]}],
    },
}


@pytest.fixture
def injected(tmp_path: Path) -> dict[str, Any]:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    out = subprocess.run(
        [OPERATOR, "inject", "-f", str(manifest), "-o", "json"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    pod: dict[str, Any] = json.loads(out.stdout)
    return pod


@pytest.fixture
def pod_with_volume(tmp_path: Path) -> Iterator[Pod]:
    reason = can_make_pods()
    if reason:
        pytest.skip(reason)
    made = Pod(tmp_path, volumes=[RUN_DIR])
    yield made
    made.close()


def test_the_injected_sidecar_kills_the_injected_trainer(
    injected: dict[str, Any], pod_with_volume: Pod
) -> None:
    sidecar = container(injected, SIDECAR_CONTAINER)
    trainer = container(injected, "trainer")
    uid = sidecar["securityContext"]["runAsUser"]
    assert uid == injected["spec"]["securityContext"]["runAsUser"], "the sidecar must run as the trainer"
    probe = sidecar["startupProbe"]["httpGet"]
    log = (pod_with_volume.workdir / "sidecar.log").open("w")
    server = pod_with_volume.start(
        [*as_user(uid), SIDECAR, *sidecar["args"]],
        env=resolve_env(injected, sidecar["env"]),
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def started() -> bool:
        assert server.poll() is None, (pod_with_volume.workdir / "sidecar.log").read_text()
        try:
            url = f"http://127.0.0.1:{probe['port']}{probe['path']}"
            return requests.get(url, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(started, what="the injected startup probe")
    env = {"PATH": "/usr/bin:/bin", **resolve_env(injected, trainer["env"])}
    worker = pod_with_volume.start([*as_user(uid), sys.executable, WORKER, "hang", "--after", "0.3"], env=env)
    assert worker.stdout is not None
    assert worker.stdout.readline().startswith("pid ")
    assert worker.stdout.readline().strip() == "armed"
    assert worker.wait(timeout=30) == -signal.SIGKILL
    metrics = Metrics(requests.get(f"http://127.0.0.1:{probe['port']}/metrics", timeout=5).text)
    assert metrics("expiry_kills_total", signal="SIGKILL") == 1
    log.close()
