"""Kubernetes Events for kills: a real sidecar posting to kmock as the API server, real workers killed.

Events are best effort; whatever the API server does (answers, refuses, stays silent, is not
configured at all), workers are killed on time and the sidecar says so once in its log.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from expiry_sidecar.events import EventRecorder, PodRef
from expiry_sidecar.kills import Outcome
from expiry_sidecar.processes import Worker as Attached
from expiry_sidecar.server import KillReport
from tests.support.kubeapi import KubeApi, write_kubeconfig
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, wait_for

StartSidecar = Callable[..., Sidecar]
NAMESPACE = "training"
POD = "trainer-0"
UID = "6d3c0b0e-1c2b-4a6e-9b55-2f1d5c3c9a10"


@pytest.fixture
def api() -> Iterator[KubeApi]:
    server = KubeApi()
    yield server
    server.close()


@pytest.fixture
def in_pod(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The downward-API variables the operator gives the sidecar (inherited by the processes started)."""
    monkeypatch.setenv("EXPIRY_POD_NAME", POD)
    monkeypatch.setenv("EXPIRY_POD_NAMESPACE", NAMESPACE)
    for name in ("EXPIRY_POD_UID", "KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def credentials(in_pod: pytest.MonkeyPatch, api: KubeApi, tmp_path: Path) -> KubeApi:
    in_pod.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    return api


def kill_one(pod: Pod, server: Sidecar) -> Worker:
    worker = Worker(pod, server.fifo, "hang", "--after", "0.2")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    return worker


def log_lines(server: Sidecar, start: str) -> list[dict[str, Any]]:
    return [entry for entry in server.logs() if entry["message"].startswith(start)]


EVENTS = "events.k8s.io/v1/events"


def the_event(api: KubeApi, server: Sidecar) -> dict[str, Any]:
    server.wait_metric("expiry_events_total", 1, result="recorded")
    (event,) = api.objects(EVENTS, NAMESPACE)
    return event


def test_a_kill_is_recorded_as_a_warning_event_on_the_pod(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    credentials.call(
        lambda emulator: emulator.objects.__setitem__(
            ("v1/pods", NAMESPACE, POD),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": POD, "namespace": NAMESPACE, "uid": UID},
            },
        )
    )
    server = sidecar("--events")
    worker = kill_one(pod, server)
    event = the_event(credentials, server)
    assert server.metrics()("expiry_events_total", result="failed") == 0

    # kubectl describe pod finds Events by the pod's name, namespace and uid.
    assert event["regarding"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": POD,
        "namespace": NAMESPACE,
        "uid": UID,
    }
    assert event["metadata"]["namespace"] == NAMESPACE
    assert event["metadata"]["name"].startswith(f"{POD}.")
    assert (event["type"], event["reason"], event["action"]) == ("Warning", "WorkerKilled", "Kill")
    assert (event["reportingController"], event["reportingInstance"]) == ("expiry.io/sidecar", POD)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|\+00:00)", event["eventTime"])
    note = event["note"]
    kill_log = log_lines(server, "killed a stuck worker")[0]
    assert f"pid {worker.pid} " in note
    assert "SIGKILL" in note
    assert "worker.py hang --after 0.2" in note
    assert repr(kill_log["scope"]) in note, "the note names the expired scope"


def test_the_uid_from_the_downward_api_needs_no_read_of_the_pod(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi, in_pod: pytest.MonkeyPatch
) -> None:
    in_pod.setenv("EXPIRY_POD_UID", UID)
    server = sidecar("--events")
    kill_one(pod, server)
    assert the_event(credentials, server)["regarding"]["uid"] == UID
    assert credentials.call(lambda emulator: len(emulator["get", kmock.resource("v1/pods")])) == 0


def test_a_pod_that_cannot_be_read_gives_an_event_without_a_uid(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    server = sidecar("--events")  # the API has no such pod: 404
    kill_one(pod, server)
    assert "uid" not in the_event(credentials, server)["regarding"]


def test_a_forbidden_api_is_logged_once_and_kills_go_on(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    forbidden = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
    }
    credentials.call(lambda emulator: emulator["post", kmock.resource(EVENTS)] << 403 << forbidden)
    server = sidecar("--events")
    kill_one(pod, server)
    kill_one(pod, server)
    metrics = server.wait_metric("expiry_events_total", 2, result="failed")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 2
    assert metrics("expiry_events_total", result="recorded") == 0
    (complaint,) = log_lines(server, "could not record a Kubernetes Event")
    assert "403" in complaint["reason"] and "RBAC" in complaint["reason"]


def test_without_credentials_events_are_off_said_once_and_kills_go_on(
    pod: Pod, sidecar: StartSidecar, in_pod: pytest.MonkeyPatch
) -> None:
    server = sidecar("--events")
    kill_one(pod, server)
    kill_one(pod, server)
    metrics = server.wait_metric("expiry_events_total", 2, result="failed")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 2
    (notice,) = log_lines(server, "Kubernetes Events are off")
    assert "no Kubernetes credentials" in notice["message"]


def test_without_the_pod_name_events_are_off_said_once(
    pod: Pod, sidecar: StartSidecar, in_pod: pytest.MonkeyPatch
) -> None:
    in_pod.delenv("EXPIRY_POD_NAME")
    server = sidecar("--events")
    kill_one(pod, server)
    assert server.wait_metric("expiry_events_total", 1, result="failed")
    (notice,) = log_lines(server, "Kubernetes Events are off")
    assert "EXPIRY_POD_NAME" in notice["message"]


def test_a_silent_api_server_never_holds_up_a_kill(
    pod: Pod, sidecar: StartSidecar, in_pod: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It accepts connections (the kernel does, into the backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        in_pod.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        server = sidecar("--events")
        kill_one(pod, server)
        kill_one(pod, server)
        metrics = server.wait_metric("expiry_kills_total", 2, signal="SIGKILL")
        assert metrics("expiry_events_total", result="recorded") == 0


# -- the queue, without an API server ------------------------------------------------------------------


class StuckPoster:
    """An API server that takes each Event only when the test lets it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.posted: list[dict[str, Any]] = []

    def pod_uid(self, pod: PodRef) -> str | None:
        return None

    def post(self, namespace: str, body: dict[str, Any]) -> None:
        self.release.wait()
        self.posted.append(body)


def report(pid: int) -> KillReport:
    worker = Attached(pid=pid, starttime=1, pidfd=None, cmdline="python train.py")
    return KillReport(worker, "train.py#12", signal.SIGKILL, Outcome.DELIVERED, 0.004)


def test_a_full_queue_drops_and_counts_events_instead_of_waiting() -> None:
    poster = StuckPoster()
    recorder = EventRecorder(PodRef(POD, NAMESPACE, UID), connect=lambda: poster, queue_size=2)
    for pid in range(100, 110):  # one is taken by the stuck poster, two wait, the rest are dropped
        recorder.after_kill(report(pid))
    wait_for(lambda: recorder.results["failed"] >= 7, what="dropped events counted")
    poster.release.set()
    recorder.close()
    assert len(poster.posted) == recorder.results["recorded"]
    assert recorder.results["recorded"] + recorder.results["failed"] == 10
    assert recorder.results["recorded"] >= 2
