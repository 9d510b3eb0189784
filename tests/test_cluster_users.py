"""The shared test cluster's bookkeeping (tests/support/cluster.py), on a state directory of its own: a
cluster whose component died under live users is reported, never restarted from under them; a user
killed without detaching is not counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import cluster


@pytest.fixture
def sleeper() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def state_with(tmp_path: Path, components: dict[str, int], users: list[int]) -> Path:
    (tmp_path / "logs").mkdir()
    for name in components:
        (tmp_path / "logs" / f"{name}.log").write_text(f"starting\nthe last words of {name}\n")
    (tmp_path / "pids.json").write_text(json.dumps(components))
    (tmp_path / "ready").write_text("1\n")
    (tmp_path / "owner").write_text("pytest")
    (tmp_path / "users").write_text(" ".join(map(str, users)))
    return tmp_path


def test_a_component_dead_under_live_users_is_reported_not_restarted(tmp_path: Path, sleeper: int) -> None:
    state = state_with(tmp_path, {"etcd": sleeper, "kubelet": dead_pid()}, [sleeper])
    with pytest.raises(RuntimeError) as raised:
        cluster.attach(owner="pytest", state=state)
    assert "kubelet exited" in str(raised.value) and "the last words of kubelet" in str(raised.value)
    assert "etcd" not in str(raised.value).split("use it")[1]
    assert (state / "ready").is_file() and json.loads((state / "pids.json").read_text())["etcd"] == sleeper


def test_a_running_cluster_counts_each_user_once_and_forgets_the_dead(tmp_path: Path, sleeper: int) -> None:
    state = state_with(tmp_path, {"etcd": sleeper}, [dead_pid(), sleeper])
    assert cluster.exited(state) == ""
    cluster.attach(owner="pytest", state=state)
    cluster.attach(owner="pytest", state=state)
    assert sorted(map(int, (state / "users").read_text().split())) == sorted([sleeper, os.getpid()])
    cluster.detach(owner="pytest", state=state)
    assert (state / "users").read_text().split() == [str(sleeper)]
    assert (state / "ready").is_file()  # another user remains: nothing stopped
