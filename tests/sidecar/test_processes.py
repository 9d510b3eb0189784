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
