"""``processes.attach`` where no pidfd can be had: identity rests on the start time alone."""

from __future__ import annotations

import signal
import subprocess
import sys

from expiry.procstat import starttime
from expiry_sidecar import kills, processes

THREADED = """
import threading, time
def idle():
    print(threading.get_native_id(), flush=True)
    time.sleep(60)
threading.Thread(target=idle, daemon=True).start()
time.sleep(60)
"""


def test_a_thread_id_gets_no_pidfd_and_is_attached_by_its_start_time() -> None:
    """pidfd_open refuses a thread that is not its process's leader (ENOENT): attach must cope."""
    process = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        tid = int(process.stdout.readline())
        worker = processes.attach(tid)
        assert worker.pidfd is None
        assert worker.starttime == starttime(tid)
        assert not worker.has_exited()
    finally:
        process.kill()
        process.wait()
        if process.stdout:
            process.stdout.close()


def test_without_a_pidfd_a_live_worker_is_still_signalled() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        worker = processes.attach(sleeper.pid)
        worker.close()  # as on a kernel without pidfd_open
        assert not worker.has_exited()
        assert kills.send(worker, signal.SIGKILL) is kills.Outcome.DELIVERED
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()


def test_without_a_pidfd_a_worker_whose_pid_is_free_has_exited() -> None:
    gone = subprocess.Popen(["sleep", "60"])
    worker = processes.attach(gone.pid)
    worker.close()
    gone.kill()
    gone.wait()  # reaped: no process holds the pid now
    assert worker.has_exited()
    assert kills.send(worker, signal.SIGKILL) is kills.Outcome.GONE


def test_a_claimed_start_time_must_match_exactly() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        actual = starttime(sleeper.pid)
        assert actual is not None
        for claimed in (actual - 1, actual + 1):
            try:
                processes.attach(sleeper.pid, claimed).close()
            except processes.NotAttached as refused:
                assert refused.reason == "identity"
            else:
                raise AssertionError(f"attached with a start time off by {claimed - actual}")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_each_attachment_is_its_own_hold_on_the_process() -> None:
    """Two attachments to one process hold two pidfds: they are not interchangeable values."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        first, second = processes.attach(sleeper.pid), processes.attach(sleeper.pid)
        assert first != second
        assert len({first, second}) == 2
        first.close()
        second.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_command_line_of_a_vanished_process_is_empty() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert processes._cmdline(gone.pid) == ""
