"""Another reader of the timer FIFO (a second timer server) is named, counted and reported.

torchrun with ``TORCHELASTIC_ENABLE_FILE_TIMER=1`` starts torch's FileTimerServer on the sidecar's
FIFO: it deletes the file, makes a FIFO of its own there and reads it. The sidecar takes the path
back at once (inotify), so workers keep writing to the sidecar only, and names the process.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.kubeapi import KubeApi
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, wait_for

StartSidecar = Callable[..., Sidecar]
NAMESPACE = "training"
GAUGE = "expiry_fifo_competing_readers"
REPORTED = "another process reads the timer FIFO"
SCAN = 15.0
"""Seconds to wait for a scan to see a change (the sidecar scans every 5 s)."""

READER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
print(os.getpid(), flush=True)
sys.stdin.read()
"""

TORCH_SERVER = """
import os, sys, time
from torch.distributed.elastic.timer import FileTimerServer
server = FileTimerServer(sys.argv[1], run_id="job", max_interval=0.1)  # as torchrun's agent makes it
server.start()
print(os.getpid(), flush=True)
sys.stdin.readline()
server.stop()  # as the agent does when it stops the workers: deletes the path
print("stopped", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KubeApi]:
    """kmock as the API server, and the downward-API variables the sidecar inherits."""
    server = KubeApi()
    monkeypatch.setenv("EXPIRY_POD_NAME", "trainer-0")
    monkeypatch.setenv("EXPIRY_POD_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("EXPIRY_POD_UID", "0b9e6a3c-5d7e-4f61-8a2b-1c3d4e5f6a7b")
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
    yield server
    server.close()


def reports(server: Sidecar) -> list[dict[str, object]]:
    return [entry for entry in server.logs() if entry["message"].startswith(REPORTED)]


def test_a_process_reading_the_fifo_is_named_counted_and_reported_in_an_event(
    pod: Pod, sidecar: StartSidecar, api: KubeApi
) -> None:
    server = sidecar("--events")
    assert server.metrics()(GAUGE) == 0
    writer = Worker(pod, server.fifo, "exit", "--after", "3600")  # holds the FIFO open for writing: no rival
    writer.expect("armed")
    rival = pod.python("-c", READER, str(server.fifo), stdin=subprocess.PIPE)
    assert rival.stdout is not None and rival.stdin is not None
    pid = int(rival.stdout.readline())
    server.wait_metric(GAUGE, 1, timeout=SCAN)
    (report,) = reports(server)
    assert report["pid"] == pid and "import os, sys" in str(report["cmdline"])
    assert "TORCHELASTIC_ENABLE_FILE_TIMER=1" in str(report["message"])
    server.wait_metric("expiry_events_total", 1, result="recorded")
    (event,) = api.objects("events.k8s.io/v1/events", NAMESPACE)
    assert (event["type"], event["reason"]) == ("Warning", "CompetingTimerServer")
    assert f"pid {pid} (" in event["note"] and "TORCHELASTIC_ENABLE_FILE_TIMER" in event["note"]
    assert event["regarding"]["name"] == "trainer-0"

    rival.stdin.close()
    server.wait_metric(GAUGE, 0, timeout=SCAN)
    assert len(reports(server)) == 1, "reported once, not once per scan"
    writer.tell("exit")


@pytest.mark.torch
def test_torch_s_file_timer_server_on_the_path_is_displaced_and_named(
    pod: Pod, sidecar: StartSidecar
) -> None:
    server = sidecar()
    torch_server = pod.python("-c", TORCH_SERVER, str(server.fifo), stdin=subprocess.PIPE)
    assert torch_server.stdout is not None and torch_server.stdin is not None
    pid = int(torch_server.stdout.readline())
    server.wait_metric(GAUGE, 1, timeout=SCAN)
    (report,) = reports(server)
    assert report["pid"] == pid
    replaced = [
        e for e in server.logs() if e["message"] == "the FIFO was replaced by another FIFO; recreating it"
    ]
    assert len(replaced) == 1

    # Workers using torch's own client, as under torchrun: the sidecar alone gets their requests.
    Worker(pod, server.fifo, "torch-blocks", "--count", "20", "--after", "60").expect("done 20")
    server.wait_metric("expiry_requests_total", 20, kind="release")
    worker = Worker(pod, server.fifo, "torch", "--after", "0.5")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    metrics = server.metrics()
    assert metrics("expiry_kills_total", signal="SIGKILL") == 1
    assert metrics("expiry_requests_total", kind="acquire") == 21
    assert metrics("expiry_kill_latency_seconds_sum") < 1.0, "the kill came long after the deadline"

    torch_server.stdin.write("stop\n")
    torch_server.stdin.flush()
    assert torch_server.stdout.readline().strip() == "stopped"  # and it deleted the path
    wait_for(lambda: any(e["message"] == "the FIFO was deleted; recreating it" for e in server.logs()))
    server.wait_metric(GAUGE, 0, timeout=SCAN)
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
