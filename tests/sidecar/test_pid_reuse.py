"""A pid reused while the sidecar still holds its worker: the sidecar's own code on real processes.

Each test runs ``tests/support/pid_reuse.py`` in a fresh PID namespace (a pod), where the dead
worker's exact pid is handed to an innocent process (``ns_last_pid``). The timer test keeps the
timer ARMED across the exit and the reuse, then lets the deadline pass: the one moment where only
the pidfd stands between the deadline and the innocent (a bare ``os.kill(pid)``, as torch's server
sends, kills it). An end-to-end sidecar cannot be held in that moment on purpose: its loop handles
the pidfd's exit event before the deadlines of the same turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.pod import Pod

PROBE = str(Path(__file__).parents[1] / "support" / "pid_reuse.py")


def probe(pod: Pod, scenario: str) -> dict[str, Any]:
    process = pod.python(PROBE, scenario, stderr=None)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, (
        f"the probe ended with status {process.returncode} (killed by its own kill?)"
    )
    report: dict[str, Any] = json.loads(out)
    return report


def test_an_armed_timer_whose_pid_was_reused_spares_the_innocent_at_its_deadline(pod: Pod) -> None:
    report = probe(pod, "timer-after-reuse")
    assert report["armed"] and report["armed_at_deadline"], "the timer must still be armed at its deadline"
    assert report["expirations"] == 1
    assert report["outcomes"] == ["gone"], "the kill must find the worker gone, not signal its pid"
    assert report["innocent_alive"], f"the innocent process that took pid {report['pid']} was killed"


def test_send_to_a_dead_worker_whose_pid_was_reused_is_gone(pod: Pod) -> None:
    report = probe(pod, "send-after-reuse")
    assert report == {"pid": report["pid"], "outcome": "gone", "innocent_alive": True}


def test_without_a_pidfd_the_start_time_spares_the_reuser(pod: Pod) -> None:
    report = probe(pod, "send-after-reuse-nopidfd")
    assert report == {"pid": report["pid"], "outcome": "gone", "innocent_alive": True}


def test_attach_names_one_process_and_refuses_the_rest(pod: Pod) -> None:
    report = probe(pod, "attach")
    assert report["never_existed"] == "gone"
    assert report["exited_not_reaped"] == "gone", "a zombie holds its pid but is no worker to guard"
    assert report["live"] == {"starttime_matches": True, "exited": False}
    assert report["right_starttime"] == "attached"
    assert report["wrong_starttime"] == "identity"
    assert report["pid_1"]["outcome"] == "protected"
    assert report["own_pid"]["outcome"] == "protected"
    assert report["pid_1"]["pid"] == 1
