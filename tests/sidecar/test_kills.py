"""``kills``' own helpers, each in a real process with the privileges it describes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from expiry_sidecar import kills, processes
from tests.support.sidecar import as_user

ASK = "from expiry_sidecar.kills import has_cap_kill; print(has_cap_kill())"


def cap_kill_in(*prefix: str) -> str:
    return subprocess.run(
        [*prefix, sys.executable, "-c", ASK], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        pytest.param([], "True", id="root"),
        pytest.param(
            ["setpriv", "--inh-caps=-kill", "--bounding-set=-kill"], "False", id="root-without-CAP_KILL"
        ),
        pytest.param(
            ["setpriv", "--inh-caps=-all", "--bounding-set=-all,+kill"], "True", id="CAP_KILL-alone"
        ),
        pytest.param(as_user(65534), "False", id="another-uid"),
        pytest.param(
            ["unshare", "--mount", "sh", "-c", 'umount -l /proc && exec "$@"', "sh"], "False", id="no-proc"
        ),
    ],
)
def test_has_cap_kill_reads_the_effective_capability(prefix: list[str], expected: str) -> None:
    assert cap_kill_in(*prefix) == expected


def test_the_permission_hint_names_the_owner_and_what_the_sidecar_lacks() -> None:
    other = subprocess.Popen([*as_user(65534), "sleep", "60"])
    try:
        hint = kills.permission_hint(other.pid)
    finally:
        other.kill()
        other.wait()
    assert f"pid {other.pid}" in hint
    assert "runs as uid 65534, the sidecar as uid 0 with CAP_KILL" in hint


def test_the_permission_hint_of_a_pid_gone_meanwhile_says_unknown() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert "runs as uid unknown" in kills.permission_hint(gone.pid)


def test_a_signal_the_kernel_rejects_is_an_error_and_harms_no_one() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        worker = processes.attach(sleeper.pid)
        assert kills.send(worker, 1000) is kills.Outcome.ERROR  # EINVAL: no such signal
        worker.close()
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
