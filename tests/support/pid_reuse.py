"""Pid reuse, staged for real inside a pod: ``python pid_reuse.py SCENARIO`` prints one JSON object.

Run it in a fresh PID namespace (``Pod.python``): there it is alone with the pod's PID 1, so setting
``/proc/sys/kernel/ns_last_pid`` hands the dead worker's exact pid to the next process it forks.
Each scenario drives the sidecar's own code (``processes.attach``, ``kills.send``, ``TimerServer``)
on real processes and reports what happened to them; the test asserts on the report. A scenario
that signals the wrong process may end this script (or the pod) with it: the test sees no report.

Scenarios:
  send-after-reuse      attach to a worker, the worker exits, an innocent takes its pid, send SIGKILL
  send-after-reuse-nopidfd   the same with no pidfd (kernels before 5.3): the start time must decide
  timer-after-reuse     a TimerServer arms a timer for a worker; the worker exits and its pid is
                        reused while the timer is still armed (the server has not heard of the exit);
                        the deadline passes and the server expires the timer
  attach                attach to: a pid that never existed, an exited worker not yet reaped, a
                        live worker with a wrong start time, PID 1, this process; send SIGKILL to
                        the last two
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from expiry.wire import Request, encode
from expiry_sidecar import kills, processes
from expiry_sidecar.server import KillReport, Listener, TimerServer

SLEEPER = [sys.executable, "-c", "import sys; sys.stdin.read()"]
"""A worker that lives until its stdin closes."""
INNOCENT = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(3600)"]


def start_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen(SLEEPER, stdin=subprocess.PIPE)


def end(worker: subprocess.Popen[bytes]) -> None:
    """Let the worker exit and reap it: its pid is free from here on."""
    assert worker.stdin is not None
    worker.stdin.close()
    assert worker.wait(timeout=10) == 0


def reuse(pid: int) -> subprocess.Popen[str]:
    """Start an innocent sleeper that holds ``pid``, which must be free."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
        last.write(str(pid - 1))
    innocent = subprocess.Popen(INNOCENT, stdout=subprocess.PIPE, text=True)
    assert innocent.stdout is not None
    got = int(innocent.stdout.readline())
    if got != pid:
        raise SystemExit(f"could not reuse pid {pid}: got {got}")
    return innocent


def alive(process: subprocess.Popen[Any]) -> bool:
    return process.poll() is None


def send_after_reuse(pidfd: bool) -> dict[str, Any]:
    worker = start_worker()
    attached = processes.attach(worker.pid)
    if not pidfd:
        attached.close()  # as on a kernel without pidfd_open: identity rests on the start time
    time.sleep(0.05)  # the innocent starts a few clock ticks later than the worker did
    end(worker)
    innocent = reuse(worker.pid)
    outcome = kills.send(attached, signal.SIGKILL)
    time.sleep(0.1)  # a SIGKILL sent to the innocent has ended it by now
    return {"pid": worker.pid, "outcome": outcome.value, "innocent_alive": alive(innocent)}


class Reports(Listener):
    def __init__(self) -> None:
        self.reports: list[KillReport] = []

    def after_kill(self, report: KillReport) -> None:
        self.reports.append(report)


def timer_after_reuse() -> dict[str, Any]:
    reports = Reports()
    server = TimerServer(listeners=[reports])
    worker = start_worker()
    after = 0.3
    request = Request(worker.pid, "stuck", time.time() + after, signal.SIGKILL)
    server.receive(encode(request))
    armed = server.seconds_to_next_deadline() is not None
    end(worker)
    innocent = reuse(worker.pid)
    time.sleep(after + 0.1)
    armed_at_deadline = server.seconds_to_next_deadline() == 0.0
    server.expire_due()
    give_up = time.monotonic() + 10  # a server that signals off its loop reports a moment later
    while not reports.reports and time.monotonic() < give_up:
        time.sleep(0.01)
    time.sleep(0.1)
    return {
        "pid": worker.pid,
        "armed": armed,
        "armed_at_deadline": armed_at_deadline,
        "expirations": server.stats.expirations,
        "outcomes": [report.outcome.value for report in reports.reports],
        "innocent_alive": alive(innocent),
    }


def attach_cases() -> dict[str, Any]:
    result: dict[str, Any] = {}

    def reason(pid: int, claimed: int | None = None) -> str:
        try:
            processes.attach(pid, claimed).close()
        except processes.NotAttached as exc:
            return exc.reason
        return "attached"

    with open("/proc/sys/kernel/pid_max") as pid_max:
        result["never_existed"] = reason(int(pid_max.read()) - 1)
    zombie = start_worker()
    assert zombie.stdin is not None
    zombie.stdin.close()
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: the pid is its own
    result["exited_not_reaped"] = reason(zombie.pid)
    zombie.wait()

    worker = start_worker()
    live = processes.attach(worker.pid)
    result["live"] = {
        "starttime_matches": live.starttime == _starttime(worker.pid),
        "exited": live.has_exited(),
    }
    result["right_starttime"] = reason(worker.pid, live.starttime)
    result["wrong_starttime"] = reason(worker.pid, live.starttime + 1)
    live.close()
    end(worker)

    for name, pid in (("pid_1", 1), ("own_pid", os.getpid())):
        target = processes.attach(pid)
        result[name] = {"pid": target.pid, "outcome": kills.send(target, signal.SIGKILL).value}
        target.close()
    return result


def _starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[19])


def main() -> None:
    if os.getpid() > 100:
        raise SystemExit("run this in a fresh PID namespace (Pod.python)")
    scenario = sys.argv[1]
    scenarios = {
        "send-after-reuse": lambda: send_after_reuse(pidfd=True),
        "send-after-reuse-nopidfd": lambda: send_after_reuse(pidfd=False),
        "timer-after-reuse": timer_after_reuse,
        "attach": attach_cases,
    }
    print(json.dumps(scenarios[scenario]()), flush=True)


if __name__ == "__main__":
    main()
