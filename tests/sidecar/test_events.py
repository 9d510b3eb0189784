"""Kubernetes Events and the pod condition for kills: a real sidecar writing to kmock as the API
server, real workers killed.

Events are best effort; whatever the API server does (answers, refuses, stays silent, is not
configured at all), workers are killed on time and the sidecar says so once in its log. The pod
condition is on the pod before the worker dies, and a silent API server delays a kill by 1 s at most.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import kmock
import pytest

from expiry.names import DUMP_DIR_ENV
from expiry_sidecar.apiwriter import ApiWriter, PodRef
from expiry_sidecar.events import EventRecorder
from expiry_sidecar.kills import Outcome
from expiry_sidecar.kubeclient import Body
from expiry_sidecar.processes import Worker as Attached
from expiry_sidecar.server import KillReport
from tests.support.kubeapi import KubeApi, write_kubeconfig
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, hang_together, wait_for

StartSidecar = Callable[..., Sidecar]
NAMESPACE = "training"
POD = "trainer-0"
UID = "6d3c0b0e-1c2b-4a6e-9b55-2f1d5c3c9a10"
NODE = "gpu-node-7"


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
    monkeypatch.setenv("EXPIRY_NODE_NAME", NODE)
    for name in ("EXPIRY_POD_UID", "KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def credentials(in_pod: pytest.MonkeyPatch, api: KubeApi, tmp_path: Path) -> KubeApi:
    in_pod.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    return api


def kill_one(pod: Pod, server: Sidecar, env: dict[str, str] | None = None) -> Worker:
    worker = Worker(pod, server.fifo, "hang", "--after", "0.2", env=env)
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    return worker


def late_seconds(server: Sidecar, worker: Worker) -> float:
    (kill,) = [e for e in log_lines(server, "killed a stuck worker") if e["pid"] == worker.pid]
    late: float = kill["late_seconds"]
    return late


def writer_ready(server: Sidecar) -> Sidecar:
    """Wait until the sidecar's API writer has loaded its client (in the background, at start): a kill
    before that would rightly go ahead after its 1 s wait, without the condition."""
    wait_for(lambda: log_lines(server, "writing to the Kubernetes API"), what="the API writer")
    return server


def add_pod(api: KubeApi) -> None:
    api.create(
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": NAMESPACE, "uid": UID}},
    )


def kills_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    kills: list[dict[str, Any]] = json.loads(event["metadata"]["annotations"]["expiry.io/kills"])
    return kills


@pytest.fixture
def silent_api(in_pod: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """An API server that accepts connections (the kernel does, into the backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        in_pod.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        yield


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
    started = time.time()
    worker = kill_one(pod, server, env={"RANK": "5", "LOCAL_RANK": "1"})
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
    assert kill_log["node"] == NODE, "the log line names the node (EXPIRY_NODE_NAME)"

    # What the operator's hang report reads.
    (kill,) = kills_of(event)
    assert re.fullmatch(r"requested 0\.\d+ s", kill.pop("rule")), "the requested deadline fired (about 0.2 s)"
    assert {k: kill[k] for k in ("pid", "rank", "local_rank", "scope", "signal", "outcome", "node")} == {
        "pid": worker.pid,
        "rank": 5,
        "local_rank": 1,
        "scope": kill_log["scope"],
        "signal": "SIGKILL",
        "outcome": "delivered",
        "node": NODE,
    }
    assert started < kill["deadline"] < time.time()
    assert kill["frames"] == [], "no dump, no frames"
    assert "expiry.io/kills-truncated" not in event["metadata"]["annotations"]


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
    server.wait_metric("expiry_events_total", 1, result="failed")
    kill_one(pod, server)  # a second burst, a second failure
    metrics = server.wait_metric("expiry_events_total", 2, result="failed")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 2
    assert metrics("expiry_events_total", result="recorded") == 0
    (complaint,) = log_lines(server, "could not record a Kubernetes Event")
    assert "403" in complaint["reason"] and "RBAC" in complaint["reason"]
    assert "create and patch events" in complaint["reason"]


def test_without_credentials_events_are_off_said_once_and_kills_go_on(
    pod: Pod, sidecar: StartSidecar, in_pod: pytest.MonkeyPatch
) -> None:
    server = sidecar("--events")
    kill_one(pod, server)
    server.wait_metric("expiry_events_total", 1, result="failed")
    kill_one(pod, server)
    metrics = server.wait_metric("expiry_events_total", 2, result="failed")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 2
    (notice,) = log_lines(server, "Kubernetes API writes (Events, the pod condition) are off")
    assert "no Kubernetes credentials" in notice["message"]


def test_without_the_pod_name_events_are_off_said_once(
    pod: Pod, sidecar: StartSidecar, in_pod: pytest.MonkeyPatch
) -> None:
    in_pod.delenv("EXPIRY_POD_NAME")
    server = sidecar("--events")
    kill_one(pod, server)
    assert server.wait_metric("expiry_events_total", 1, result="failed")
    (notice,) = log_lines(server, "Kubernetes API writes (Events, the pod condition) are off")
    assert "EXPIRY_POD_NAME" in notice["message"]


def test_a_silent_api_server_never_holds_up_a_kill(pod: Pod, sidecar: StartSidecar, silent_api: None) -> None:
    server = sidecar("--events")
    first = kill_one(pod, server)
    second = kill_one(pod, server)  # while the writer waits for an answer to the first Event
    metrics = server.wait_metric("expiry_kills_total", 2, signal="SIGKILL")
    assert metrics("expiry_events_total", result="recorded") == 0
    assert late_seconds(server, first) < 0.5
    assert late_seconds(server, second) < 0.5


def test_kills_in_one_burst_share_one_event_and_repeats_make_a_series(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    server = sidecar("--events")
    together = [Worker(pod, server.fifo, "hang", "--at-from-stdin") for _ in range(3)]
    hang_together(together)
    for worker in together:
        assert worker.wait() == -signal.SIGKILL
    event = the_event(credentials, server)
    assert sorted(k["pid"] for k in kills_of(event)) == sorted(w.pid for w in together)
    assert "series" not in event
    assert all(f"pid {w.pid} " in event["note"] for w in together)

    later = kill_one(pod, server)  # the same reason again: the same Event, counted
    server.wait_metric("expiry_events_total", 2, result="recorded")
    (event,) = credentials.objects(EVENTS, NAMESPACE)
    assert event["series"]["count"] == 2
    assert event["series"]["lastObservedTime"] > event["eventTime"]
    assert [k["pid"] for k in kills_of(event)] == [later.pid], "the annotation is the latest burst's"
    patches = credentials.call(lambda emulator: len(emulator["patch", kmock.resource(EVENTS)]))
    assert patches == 1


def test_a_429_is_honoured_before_the_next_request(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    """The API server asks to wait 2 s (twice the writer's default, so a writer that ignored the
    header would try again after 1 s): the writer waits that long, tries again, and gives up after a
    few tries (Events are best effort)."""
    times: list[float] = []
    credentials.call(
        lambda emulator: (
            emulator["post", kmock.resource(EVENTS)]
            << (lambda: times.append(time.monotonic()))
            << 429
            << {"Retry-After": "2"}
            << {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 429}
        )
    )
    server = sidecar("--events")
    kill_one(pod, server)
    server.wait_metric("expiry_events_total", 1, result="failed")
    assert len(times) == 3, "tried again, a bounded number of times"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 1.9 for gap in gaps), f"did not wait as asked: {gaps}"
    (complaint,) = log_lines(server, "could not record a Kubernetes Event")
    assert "429" in complaint["reason"]


def test_an_observed_hang_is_an_event_of_its_own_with_the_stack(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    dumps = pod.workdir / "dumps"
    server = sidecar("--events", "--mode", "observe", "--stack-dumps", str(dumps), "--pod-condition")
    add_pod(credentials)
    worker = Worker(pod, server.fifo, "hang", "--after", "0.2", env={DUMP_DIR_ENV: str(dumps)})
    worker.expect("armed")
    event = the_event(credentials, server)
    assert worker.alive()
    assert (event["reason"], event["action"]) == ("WorkerHangObserved", "Observe")
    assert "would have sent SIGKILL" in event["note"]
    (kill,) = kills_of(event)
    assert (kill["pid"], kill["outcome"], kill["signal"]) == (worker.pid, "observed", None)
    frames = kill["frames"]  # the main thread's innermost, innermost last
    assert len(frames) == 5 and frames[-1].endswith(" in wait") and frames[0].endswith(" in <module>"), frames
    assert re.fullmatch(r".*/worker\.py:\d+ in hang", frames[2]), frames
    assert all(re.fullmatch(r".+:\d+ in .+", frame) for frame in frames)
    metrics = server.metrics()
    assert metrics("expiry_observed_expirations_total") == 1
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    (pod_object,) = credentials.objects("v1/pods", NAMESPACE)
    assert "status" not in pod_object, "observe mode set the pod condition"
    assert metrics("expiry_pod_conditions_total", result="patched") == 0
    worker.kill()
    worker.wait()


# -- the pod condition -----------------------------------------------------------------------------------


class SlowProxy:
    """A TCP proxy in front of the API server that holds every request ``delay`` seconds."""

    def __init__(self, upstream: str, delay: float) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self._delay = delay
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            threading.Thread(target=self._pump, args=(client, upstream, self._delay), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(65536):
                time.sleep(delay)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


def test_the_condition_is_on_the_pod_before_the_worker_dies(
    pod: Pod, sidecar: StartSidecar, in_pod: pytest.MonkeyPatch, api: KubeApi, tmp_path: Path
) -> None:
    """Requests take 0.3 s to reach the API server: a kill that did not wait for the patch would
    find the worker dead with the pod still unmarked."""
    add_pod(api)
    proxy = SlowProxy(api.url, 0.3)
    in_pod.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", proxy.url)))
    server = writer_ready(sidecar("--pod-condition"))
    worker = kill_one(pod, server)
    (pod_object,) = api.objects("v1/pods", NAMESPACE)  # as it was when the worker died, or later
    proxy.close()
    conditions = pod_object.get("status", {}).get("conditions", [])
    assert len(conditions) == 1, "the worker died before the pod was marked"
    (condition,) = conditions
    assert {k: condition[k] for k in ("type", "status", "reason")} == {
        "type": "expiry.io/WorkerHung",
        "status": "True",
        "reason": "DeadlineExceeded",
    }
    assert f"pid {worker.pid} " in condition["message"]
    assert "SIGKILL" in condition["message"] and "deadline 20" in condition["message"]
    metrics = server.metrics()
    assert metrics("expiry_pod_conditions_total", result="patched") == 1
    assert 0.3 < late_seconds(server, worker) < 1.5, "the kill waited for the patch, and no longer"
    (patch,) = api.call(lambda emulator: list(emulator["patch", kmock.resource("v1/pods")]))
    assert patch.headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert patch.subresource == "status"


def hang_condition(api: KubeApi) -> dict[str, Any]:
    (pod_object,) = api.objects("v1/pods", NAMESPACE)
    (condition,) = pod_object.get("status", {}).get("conditions", [])
    return {k: condition[k] for k in ("status", "reason", "message")}


def condition_patches(api: KubeApi) -> list[str]:
    patches = api.call(lambda emulator: list(emulator["patch", kmock.resource("v1/pods")]))
    return [patch.data["status"]["conditions"][0]["status"] for patch in patches]


def test_a_successor_completing_a_block_sets_the_condition_back_to_false(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    """The condition says what is true now: after a hang kill, a worker that gets through a whole
    block started after the kill shows the pod's workers are healthy again."""
    add_pod(credentials)
    server = writer_ready(sidecar("--pod-condition"))
    killed = kill_one(pod, server)
    assert hang_condition(credentials)["status"] == "True"
    successor = Worker(pod, server.fifo, "blocks", "--after", "60")
    successor.expect("done 1")
    condition = wait_for(
        lambda: (c := hang_condition(credentials))["status"] == "False" and c, what="the condition cleared"
    )
    assert condition["reason"] == "WorkersRecovered"
    assert f"pid {successor.pid} completed a block" in condition["message"]
    assert f"hang kill of pid {killed.pid}" in condition["message"]
    assert condition_patches(credentials) == ["True", "False"]
    (said,) = log_lines(server, "the pod's workers are healthy again")
    assert said["level"] == "info"
    kill_one(pod, server)  # a hang after the recovery marks the pod again
    assert hang_condition(credentials)["status"] == "True"
    assert condition_patches(credentials) == ["True", "False", "True"]


def test_a_hang_at_the_end_leaves_the_condition_true(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    """A block armed before the kill and released after it is no proof of recovery (a rank finishing
    what it had begun), and nothing after the kill is none either: the pod stays marked."""
    add_pod(credentials)
    server = writer_ready(sidecar("--pod-condition"))
    earlier = Worker(pod, server.fifo, "hold", "--after", "60")
    earlier.expect("armed")
    kill_one(pod, server)
    earlier.tell("")
    earlier.expect("released")
    server.wait_metric("expiry_requests_total", 1, kind="release")
    assert server.stop() == 0  # the sidecar's API writer flushes what was queued before it stops
    assert hang_condition(credentials)["status"] == "True"
    assert condition_patches(credentials) == ["True"]
    earlier.tell("")


def test_a_silent_api_server_delays_a_kill_by_one_second_at_most(
    pod: Pod, sidecar: StartSidecar, silent_api: None
) -> None:
    """Not by the request timeout (5 s): the kill waits 1 s for the condition, then goes ahead; the
    Event queued behind it never holds up the next kill either."""
    server = writer_ready(sidecar("--pod-condition", "--events"))
    first = kill_one(pod, server)
    second = kill_one(pod, server)
    metrics = server.wait_metric("expiry_pod_conditions_total", 2, result="timeout")
    assert metrics("expiry_pod_conditions_total", result="patched") == 0
    for worker in (first, second):
        assert 0.9 < late_seconds(server, worker) < 2.5
    (complaint,) = log_lines(server, "could not patch the pod's condition")
    assert "within 1s" in complaint["reason"]


def test_a_forbidden_condition_is_counted_said_once_and_the_kill_goes_on(
    pod: Pod, sidecar: StartSidecar, credentials: KubeApi
) -> None:
    forbidden = {"kind": "Status", "apiVersion": "v1", "reason": "Forbidden", "code": 403}
    add_pod(credentials)
    credentials.call(lambda emulator: emulator["patch", kmock.resource("v1/pods")] << 403 << forbidden)
    server = writer_ready(sidecar("--pod-condition"))
    first = kill_one(pod, server)
    kill_one(pod, server)
    metrics = server.wait_metric("expiry_pod_conditions_total", 2, result="failed")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 2
    assert late_seconds(server, first) < 0.5, "a refusal is no reason to wait"
    (complaint,) = log_lines(server, "could not patch the pod's condition")
    assert "403" in complaint["reason"] and "patch pods/status" in complaint["reason"]


# -- the queue, without an API server ------------------------------------------------------------------


class StuckClient:
    """An API server that takes each request only when the test lets it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.posted: list[Body] = []

    def request(self, method: str, path: str, body: Body | None = None, content_type: str = "") -> Body:
        self.entered.set()
        self.release.wait()
        assert body is not None
        self.posted.append(body)
        return {}


def report(pid: int) -> KillReport:
    worker = Attached(pid=pid, starttime=1, pidfd=None, cmdline="python train.py")
    return KillReport(worker, "train.py#12", signal.SIGKILL, Outcome.DELIVERED, 0.004)


def test_a_full_queue_drops_and_counts_writes_instead_of_waiting() -> None:
    client = StuckClient()
    writer = ApiWriter(PodRef(POD, NAMESPACE, UID), connect=lambda: client, queue_size=2)

    def write(n: int) -> Future[Body]:
        return writer.submit("write", "write", lambda c: c.request("POST", "/", {"n": n}))

    futures = [write(0)]
    assert client.entered.wait(10), "the writer took nothing"
    futures += [write(n) for n in range(1, 10)]  # two wait, the rest fail at once, never blocking
    assert sum(f.done() for f in futures) == 7
    client.release.set()
    writer.close()
    assert [body["n"] for body in client.posted] == [0, 1, 2]
    assert all(f.exception() is None for f in futures[:3])


def test_a_burst_of_kills_is_one_write() -> None:
    client = StuckClient()
    client.release.set()
    writer = ApiWriter(PodRef(POD, NAMESPACE, UID), connect=lambda: client)
    recorder = EventRecorder(writer)
    for pid in range(100, 110):
        recorder.after_kill(report(pid))
    writer.close()  # runs the delayed burst now
    (event,) = client.posted
    assert recorder.results == {"recorded": 1}
    assert [k["pid"] for k in json.loads(event["metadata"]["annotations"]["expiry.io/kills"])] == list(
        range(100, 110)
    )
