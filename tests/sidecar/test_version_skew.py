"""Version skew: trainer images pin an older expiry client; this sidecar must serve it unchanged.

The old clients are this repository's own, taken from its history with ``git show`` (the first
client, and the one released as 0.1.0), put first on the worker's ``sys.path``, and run as real
processes in a pod beside a real sidecar of this tree. docs/install.md, "Version skew", is the policy
this checks.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.pod import Pod
from tests.support.sidecar import Sidecar

StartSidecar = Callable[..., Sidecar]
REPO = Path(__file__).resolve().parents[2]
CHANGELOG = REPO / "CHANGELOG.md"
OLD_CLIENTS = {
    "first": "50f836afa41dd15e210068486b78740cf8f967fd",  # the skeleton's: the wire format's first writer
    "0.1.0": "ece828b5c223da70655b03d270a25c3c1d0ab880",  # as released in 0.1.0
}

# A block that finishes (acquire + release), then one that hangs past its deadline.
OLD_WORKER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import expiry
assert os.path.dirname(expiry.__file__).startswith(sys.argv[1]), expiry.__file__
from expiry import expires
with expires(after=30):
    pass
with expires(after=float(sys.argv[2])):
    print("armed", flush=True)
    time.sleep(60)
"""


def old_client(commit: str, into: Path) -> Path:
    """The client package ``expiry`` as it was at ``commit``, written under ``into``."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", commit, "client/src/expiry"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listing.returncode == 0, (
        f"the version-skew test needs this repository's history (commit {commit}); "
        f"clone without --depth: {listing.stderr.strip()}"
    )
    for path in listing.stdout.split():
        target = into / Path(path).relative_to("client/src")
        target.parent.mkdir(parents=True, exist_ok=True)
        shown = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{path}"], capture_output=True, check=True
        )
        target.write_bytes(shown.stdout)
    return into


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def full_commit(commit: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_old_client_commits_are_the_ones_named() -> None:
    for name, commit in OLD_CLIENTS.items():
        assert full_commit(commit) == commit, name


def test_the_previous_release_is_the_one_the_changelog_names() -> None:
    """The newest release CHANGELOG.md lists is the one tested here: its version, and its commit is the
    last of its release date (the history has no tags)."""
    (version, date), *_ = re.findall(
        r"^## (\d+\.\d+\.\d+) - (\d{4}-\d{2}-\d{2})$", CHANGELOG.read_text(), re.M
    )
    assert version in OLD_CLIENTS, f"the previous release {version} is not among the clients tested"
    commit = OLD_CLIENTS[version]
    pyproject = git("show", f"{commit}:client/pyproject.toml")
    assert f'version = "{version}"' in pyproject
    last_of_the_day = git("log", "-1", "--format=%H", f"--until={date}T23:59:59Z").strip()
    assert last_of_the_day == commit, (
        f"{version} was released on {date}: its last commit is {last_of_the_day}"
    )


@pytest.mark.parametrize("version", sorted(OLD_CLIENTS))
def test_an_old_client_is_served_by_this_sidecar(
    version: str, pod: Pod, sidecar: StartSidecar, tmp_path: Path
) -> None:
    client = old_client(OLD_CLIENTS[version], tmp_path / f"client-{version}")
    server = sidecar()
    worker = pod.python(
        "-c",
        OLD_WORKER,
        str(client),
        "0.5",
        env={"TORCHELASTIC_TIMER_FILE": str(server.fifo), "PATH": "/usr/bin:/bin"},
    )
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "armed"
    assert worker.wait(timeout=20) == -signal.SIGKILL
    metrics = server.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
    assert metrics("expiry_requests_total", kind="acquire") == 2
    assert metrics("expiry_requests_total", kind="release") == 1
    assert metrics("expiry_malformed_requests_total") == 0
    assert metrics("expiry_kill_failures_total", reason="identity") == 0
