"""Stack dumps before a kill: real workers in a pod, a real sidecar, the dump read from its log and
from the shared directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from expiry.names import DUMP_DIR_ENV
from expiry.procstat import starttime
from expiry_sidecar.processes import Worker as Attached
from expiry_sidecar.processes import attach
from expiry_sidecar.server import KillOrder
from expiry_sidecar.stackdumps import StackDumper, find_py_spy
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker

StartSidecar = Callable[..., Sidecar]


def messages(server: Sidecar) -> list[str]:
    return [entry["message"] for entry in server.logs()]


def the_dump(server: Sidecar) -> dict[str, Any]:
    (dump,) = [entry for entry in server.logs() if entry["message"] == "stack of the stuck worker"]
    return dump


def saved_dumps(directory: Path, pid: int) -> list[Path]:
    return sorted(directory.glob(f"{pid}-*.stack"))


def test_a_worker_with_expiry_s_client_answers_on_its_debug_channel_before_the_kill(
    pod: Pod, sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumps = pod.workdir / "dumps"
    monkeypatch.setenv(DUMP_DIR_ENV, str(dumps))
    server = sidecar("--stack-dumps", str(dumps))
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    metrics = server.wait_metric("expiry_stack_dumps_total", 1, result="ok")
    assert metrics("expiry_stack_dumps_total", result="failed") == 0

    dump = the_dump(server)
    assert (dump["pid"], dump["mechanism"]) == (worker.pid, "debug-channel")
    assert dump["collective"] is None, "no torch in this worker: no flight recorder"
    assert "threading.py" in dump["stack"] and "worker.py" in dump["stack"], dump["stack"]
    assert "in hang" in dump["stack"], "the stack names the function the worker is stuck in"
    (saved,) = saved_dumps(dumps, worker.pid)
    assert dump["file"] == str(saved)
    assert saved.read_text() == dump["stack"]
    order = messages(server)
    assert order.index("stack of the stuck worker") < order.index("killed a stuck worker")


def test_a_worker_holding_the_gil_cannot_answer_and_dumps_through_faulthandler_instead(
    pod: Pod, sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumps = pod.workdir / "dumps"
    monkeypatch.setenv(DUMP_DIR_ENV, str(dumps))
    server = sidecar("--stack-dumps", str(dumps))
    worker = Worker(pod, server.fifo, "gil", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    server.wait_metric("expiry_stack_dumps_total", 1, result="ok")
    dump = the_dump(server)
    assert dump["mechanism"] == "faulthandler"
    assert "in main" in dump["stack"] and "re/__init__.py" in dump["stack"], dump["stack"]
    assert any(
        m.startswith(f"pid {worker.pid} did not answer on its debug channel") for m in messages(server)
    )


def test_a_worker_that_never_writes_its_dump_is_still_killed(
    pod: Pod, sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It announced a dump signal but writes elsewhere (another volume): the wait is bounded."""
    monkeypatch.setenv(DUMP_DIR_ENV, str(pod.workdir / "elsewhere"))
    dumps = pod.workdir / "dumps"
    server = sidecar("--stack-dumps", str(dumps))
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    metrics = server.wait_metric("expiry_stack_dumps_total", 1, result="failed")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 1
    (failure,) = [entry for entry in server.logs() if entry["message"].startswith("no stack dump")]
    assert str(dumps / f"{worker.pid}.stack") in failure["reason"]
    assert saved_dumps(dumps, worker.pid) == []


def test_an_escalation_does_not_dump_again(
    pod: Pod, sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumps = pod.workdir / "dumps"
    monkeypatch.setenv(DUMP_DIR_ENV, str(dumps))
    server = sidecar("--stack-dumps", str(dumps), "--kill-signal", "SIGTERM", "--escalate-after", "0.2")
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3", "--ignore-term")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    metrics = server.wait_metric("expiry_escalations_total", 1)
    assert metrics("expiry_stack_dumps_total", result="ok") == 1
    assert len(saved_dumps(dumps, worker.pid)) == 1


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (test dependency group)")
def test_py_spy_dumps_a_worker_that_announced_nothing(
    pod: Pod, sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like torch's own client; the sidecar runs as root here, so it may ptrace the worker."""
    monkeypatch.delenv(DUMP_DIR_ENV, raising=False)
    dumps = pod.workdir / "dumps"
    server = sidecar("--stack-dumps", str(dumps))
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    server.wait_metric("expiry_stack_dumps_total", 1, result="ok")
    dump = the_dump(server)
    assert dump["mechanism"] == "py-spy"
    assert "hang (" in dump["stack"] and "worker.py" in dump["stack"], dump["stack"]
    (saved,) = saved_dumps(dumps, worker.pid)
    assert saved.read_text() == dump["stack"]


def test_without_a_dump_signal_or_py_spy_the_dump_fails_and_says_why(tmp_path: Path) -> None:
    dumper = StackDumper(tmp_path, py_spy=None)
    worker = Attached(pid=4242, starttime=1, pidfd=None)
    order = KillOrder(worker, "train.py#3", signal.SIGKILL, 0.0, 0.0, 0.0)
    dumper.before_kill(order)
    assert dumper.results == {"failed": 1}
    assert order.frames == []
    assert list(tmp_path.iterdir()) == []


BURST_WORKER = """
import sys, threading
from expiry import FileTimerClient
FileTimerClient(sys.argv[1]).acquire("step", 4e9)
print("ready", flush=True)
threading.Event().wait()
"""


def test_the_first_kill_of_a_burst_collects_every_worker_s_answer_before_its_signal(tmp_path: Path) -> None:
    """A peer that dies after the first signal (its collective failed) is still described by the
    answer it gave before it: the burst asked every worker before any signal went out."""
    (tmp_path / "requests").touch()
    env = {**os.environ, DUMP_DIR_ENV: str(tmp_path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", BURST_WORKER, str(tmp_path / "requests")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
        first, peer = (attach(w.pid, starttime(w.pid)) for w in workers)
        dumper = StackDumper(tmp_path, py_spy=None)
        dumper.peers = lambda: [first, peer]
        dumper.before_kill(KillOrder(first, "s", signal.SIGKILL, 0.0, 0.0, 0.0))
        workers[1].kill()  # the peer dies after the first kill, before its own
        workers[1].wait()
        late = KillOrder(peer, "s", signal.SIGKILL, 0.0, 0.0, 0.0)
        dumper.before_kill(late)
        # Its main thread's stack, wherever the question caught it after "ready" (print's return, wait).
        assert any(frame.endswith(" in <module>") for frame in late.frames), late.frames
        assert dumper.results == {"ok": 2}
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
