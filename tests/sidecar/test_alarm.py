"""The loop's alarm (a timerfd): it rings when set, not when disarmed, and it alone wakes the loop at a
deadline. How close to the deadline is measured by ``bench`` (kill-latency), never asserted here."""

from __future__ import annotations

import select
import selectors
import signal
import subprocess
import sys
import threading
from pathlib import Path

from expiry_sidecar.alarm import Alarm
from expiry_sidecar.fifo import FifoReader
from expiry_sidecar.loop import ServeLoop
from expiry_sidecar.server import TimerServer

PATIENCE = 10.0
"""Seconds a test waits for what must happen (a bound for a loaded machine, not a measurement)."""
ARM_AND_HANG = """
import sys, time
from expiry import FileTimerClient
FileTimerClient(sys.argv[1]).acquire("hang", time.time() + 0.2)
print("armed", flush=True)
time.sleep(3600)
"""


def rings(alarm: Alarm, within: float) -> bool:
    return bool(select.select([alarm.fd], [], [], within)[0])


def test_the_alarm_rings_once_set_and_is_quiet_once_cleared() -> None:
    alarm = Alarm.open()
    assert alarm is not None, "no timerfd on Linux?"
    try:
        assert not rings(alarm, 0), "quiet before it is set"
        alarm.ring_in(0.01)
        assert rings(alarm, PATIENCE)
        alarm.clear()
        assert not rings(alarm, 0)
        alarm.ring_in(0.01)  # set again, after it rang
        assert rings(alarm, PATIENCE)
        alarm.clear()
    finally:
        alarm.close()


def test_a_disarmed_alarm_never_rings() -> None:
    alarm = Alarm.open()
    assert alarm is not None
    try:
        alarm.ring_in(0.05)
        alarm.ring_in(None)
        assert not rings(alarm, 0.5)
    finally:
        alarm.close()


def test_the_alarm_alone_wakes_the_loop_for_a_deadline(tmp_path: Path) -> None:
    """The epoll timeout is taken away: only the alarm can wake the loop, and the worker is killed."""
    loop = ServeLoop(FifoReader(tmp_path / "timer.fifo"))
    wait = loop._selector.select

    def without_timeout(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return wait(None)

    loop._selector.select = without_timeout  # type: ignore[method-assign]
    server = TimerServer(on_watch=loop.watch, on_unwatch=loop.unwatch)
    serving = threading.Thread(target=loop.run, args=(server,), daemon=True)
    serving.start()
    worker = subprocess.Popen(
        [sys.executable, "-c", ARM_AND_HANG, str(tmp_path / "timer.fifo")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == "armed\n"
        assert worker.wait(PATIENCE) == -signal.SIGKILL
    finally:
        worker.kill()
        worker.wait()
        loop.stop()
        serving.join(PATIENCE)
        loop.close()
        loop.reader.close()
    assert server.stats.kills == {"SIGKILL": 1}
