"""The injected pod, run from the built images' root file systems (tests/support/podrunner.py).

A realistic trainer pod (non-root, read-only root, no capabilities) goes through the real
``expiry-operator inject``; the pod it returns runs with the sidecar from the expiry-sidecar image and
the trainer from a small test image (expiry-client and examples/stuck_trainer.py, whose fourth step
hangs). The sidecar kills the trainer at its deadline, serves /metrics on its port, records the kill as
an Event in kmock (the Kubernetes API; the sidecar reaches it through a KUBECONFIG mounted where a
cluster would give it a service account), runs as the trainer's uid with no capability, and stops
cleanly on SIGTERM. Both sidecar start orders are run: native (an init container that must pass its
startupProbe before the trainer starts) and legacy (a regular container beside the trainer).
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

from expiry.names import SIDECAR_CONTAINER
from tests.images.conftest import Images
from tests.support.kubeapi import KubeApi
from tests.support.podrunner import PodRunner
from tests.support.sidecar import Metrics, free_port, wait_for

pytestmark = pytest.mark.timeout(1200)  # the first test may build the images (scripts/build-images)

OPERATOR = str(Path(sys.executable).with_name("expiry-operator"))
EVENTS = "events.k8s.io/v1/events"
NAMESPACE = "ml"
POD_UID = "5f0c1c39-8f7e-4d2a-9c53-3b1f0e6a2d41"
TRAINER_UID = 1000
NO_CAPABILITIES = "0000000000000000"


def manifest(trainer_image: str) -> dict[str, Any]:
    """A trainer pod as a Job would create it, under the restricted Pod Security level."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "trainer-0",
            "namespace": NAMESPACE,
            "uid": POD_UID,
            "labels": {"job-name": "trainer"},
            "annotations": {"expiry.io/enabled": "true"},
        },
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": TRAINER_UID,
                "runAsGroup": TRAINER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "trainer",
                    "image": trainer_image,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def inject(pod: dict[str, Any], tmp_path: Path, metrics_port: int, *args: str) -> dict[str, Any]:
    """The real ``expiry-operator inject``, configured as the chart would, with a free metrics port."""
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    (tmp_path / "operator.yaml").write_text(yaml.safe_dump({"sidecar": {"metricsPort": metrics_port}}))
    out = subprocess.run(
        [OPERATOR, "inject", "-f", str(tmp_path / "pod.yaml"), "--config", str(tmp_path / "operator.yaml"),
         "-o", "json", *args],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    injected: dict[str, Any] = json.loads(out.stdout)
    return injected


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    found: dict[str, Any] = next(
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    )
    return found


def give_kubeconfig(pod: dict[str, Any], name: str, api: KubeApi, directory: Path) -> None:
    """Mount a kubeconfig for kmock into container ``name`` (a cluster mounts a service account token)."""
    directory.mkdir()
    api.kubeconfig(directory / "kubeconfig").chmod(0o644)
    pod["spec"]["volumes"].append({"name": "kube-api", "hostPath": {"path": str(directory)}})
    target = container(pod, name)
    target["volumeMounts"].append({"name": "kube-api", "mountPath": "/etc/kube-api", "readOnly": True})
    target["env"].append({"name": "KUBECONFIG", "value": "/etc/kube-api/kubeconfig"})


def root_mount_options(pid: int) -> set[str]:
    """The mount options of the root file system as process ``pid`` sees it."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with KubeApi() as server:
        yield server


@pytest.mark.parametrize(("order", "args"), [("native", ()), ("legacy", ("--kubernetes-version", "1.28"))])
def test_the_injected_pod_kills_its_stuck_trainer(
    images: Images, api: KubeApi, tmp_path: Path, order: str, args: tuple[str, ...]
) -> None:
    port = free_port()
    pod = inject(manifest(images.trainer), tmp_path, port, *args)
    sidecar_spec = container(pod, SIDECAR_CONTAINER)
    assert sidecar_spec["image"] == images.sidecar, "the operator injects the image built here"
    assert (sidecar_spec.get("restartPolicy") == "Always") == (order == "native")
    give_kubeconfig(pod, SIDECAR_CONTAINER, api, tmp_path / "kube")

    with PodRunner(pod, tmp_path / "pod") as run:
        sidecar, trainer = run.containers[SIDECAR_CONTAINER], run.containers["trainer"]
        # The sidecar runs as the trainer's user, with no capability and no way to gain one.
        status = sidecar.status()
        assert status["Uid"].split() == [str(TRAINER_UID)] * 4
        assert status["Gid"].split() == [str(TRAINER_UID)] * 4
        assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == NO_CAPABILITIES
        assert status["NoNewPrivs"] == "1"
        assert "ro" in root_mount_options(sidecar.host_pid)
        assert status["NSpid"].split()[0] != status["NSpid"].split()[-1], "not in the pod's PID namespace"

        assert trainer.wait(120) == -signal.SIGKILL, trainer.log()
        log = trainer.log()
        assert "step 3: loss" in log, log  # the steps that finished in time were left alone
        assert "step 4: waiting" in log, log

        metrics = Metrics(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        assert metrics("expiry_kills_total", signal="SIGKILL") == 1
        # What it learned is the trainer container's: the sidecar, as the trainer's user without any
        # capability, reads EXPIRY_CONTAINER (set by the operator) from the worker's environment.
        learned = requests.get(f"http://127.0.0.1:{port}/blocks", timeout=5).json()["scopes"]
        assert learned and {entry.get("container") for entry in learned} == {"trainer"}, learned

        def recorded() -> list[dict[str, Any]]:
            return api.objects(EVENTS, NAMESPACE)

        (event,) = wait_for(recorded, timeout=30, what=f"the kill Event in kmock\n{sidecar.log()}")
        assert event["reason"] == "WorkerKilled"
        assert event["regarding"]["name"] == "trainer-0"
        assert event["regarding"]["uid"] == POD_UID, "the downward API's pod uid"

        exits = run.stop()
    assert exits[SIDECAR_CONTAINER] == 0, sidecar.log()
    assert "Traceback" not in sidecar.log()


def test_a_native_sidecar_that_never_starts_holds_the_trainer_back(images: Images, tmp_path: Path) -> None:
    """The kubelet starts the containers only once the native sidecar's startupProbe has passed."""
    port = free_port()
    pod = inject(manifest(images.trainer), tmp_path, port)
    container(pod, SIDECAR_CONTAINER)["startupProbe"]["httpGet"]["port"] = free_port()  # nothing listens
    run = PodRunner(pod, tmp_path / "pod", startup_timeout=3)
    with pytest.raises(RuntimeError, match="startupProbe"):
        run.start()
    try:
        assert "trainer" not in run.containers
        assert run.containers[SIDECAR_CONTAINER].process.poll() is None
    finally:
        run.stop()


CAP_KILL = 1 << 5


def test_a_trainer_whose_uid_is_the_image_s_is_killed_by_a_root_sidecar_with_only_cap_kill(
    images: Images, api: KubeApi, tmp_path: Path
) -> None:
    """With no runAsUser the sidecar cannot share the trainer's uid; it signals it with CAP_KILL, which
    only root keeps across exec (the harness, as containerd, grants no ambient capabilities). Another
    uid's environment is closed to it (reading /proc/PID/environ takes CAP_SYS_PTRACE): the kill's
    Event has the ranks the trainer told on its debug channel (stack dumps on)."""
    pod = manifest(images.trainer)
    pod["spec"]["securityContext"] = {"seccompProfile": {"type": "RuntimeDefault"}}  # the image's USER 1000
    pod["metadata"]["annotations"]["expiry.io/stack-dumps"] = "client"
    pod["spec"]["containers"][0]["env"] = [
        {"name": "RANK", "value": "3"},
        {"name": "LOCAL_RANK", "value": "1"},
    ]
    port = free_port()
    pod = inject(pod, tmp_path, port)
    give_kubeconfig(pod, SIDECAR_CONTAINER, api, tmp_path / "kube")
    with PodRunner(pod, tmp_path / "pod") as run:
        sidecar, trainer = run.containers[SIDECAR_CONTAINER], run.containers["trainer"]
        status = sidecar.status()
        assert status["Uid"].split() == ["0"] * 4
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == CAP_KILL, status
        assert trainer.status()["Uid"].split() == [str(TRAINER_UID)] * 4
        assert trainer.wait(120) == -signal.SIGKILL, f"{trainer.log()}\n{sidecar.log()}"
        metrics = Metrics(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        assert metrics("expiry_kills_total", signal="SIGKILL") == 1
        learned = requests.get(f"http://127.0.0.1:{port}/blocks", timeout=5).json()["scopes"]
        assert learned and {entry.get("container") for entry in learned} == {None}, "environ unreadable"

        def recorded() -> list[dict[str, Any]]:
            return api.objects(EVENTS, NAMESPACE)

        (event,) = wait_for(recorded, timeout=30, what=f"the kill Event in kmock\n{sidecar.log()}")
        (kill,) = json.loads(event["metadata"]["annotations"]["expiry.io/kills"])
        assert (kill["rank"], kill["local_rank"]) == (3, 1), kill
        assert kill["frames"], "the stack came over the debug channel"
        run.stop()
    assert "Traceback" not in sidecar.log()


CAP_SYS_PTRACE = 1 << 19


def test_py_spy_dumps_come_from_a_root_sidecar_that_kept_sys_ptrace(images: Images, tmp_path: Path) -> None:
    """A non-root sidecar would lose SYS_PTRACE at exec (no ambient capabilities), and a host with Yama's
    ptrace_scope=1 then refuses py-spy even for the trainer's own uid: the sidecar is root with it."""
    pod = manifest(images.trainer)
    pod["metadata"]["annotations"]["expiry.io/stack-dumps"] = "py-spy"
    # The trainer announces nothing, as one on torch's own client: py-spy is the only way to its stack.
    pod["spec"]["containers"][0]["command"] = ["sh", "-c", "unset EXPIRY_DUMP_DIR; exec python /app/train.py"]
    port = free_port()
    pod = inject(pod, tmp_path, port)
    with PodRunner(pod, tmp_path / "pod") as run:
        sidecar, trainer = run.containers[SIDECAR_CONTAINER], run.containers["trainer"]
        status = sidecar.status()
        assert status["Uid"].split() == ["0"] * 4
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == CAP_KILL | CAP_SYS_PTRACE, status
        assert trainer.wait(120) == -signal.SIGKILL, f"{trainer.log()}\n{sidecar.log()}"
        lines = sidecar.log().splitlines()
        dumps = [json.loads(line) for line in lines if "stack of the stuck worker" in line]
        assert [dump["mechanism"] for dump in dumps] == ["py-spy"], sidecar.log()
        assert "/app/train.py" in dumps[0]["stack"], dumps[0]["stack"]
        run.stop()
    assert "Traceback" not in sidecar.log()
