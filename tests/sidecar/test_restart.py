"""Crash-safe state: a sidecar killed with SIGKILL and restarted keeps, and honours, armed timers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from expiry_sidecar.blocks import BlockStats
from expiry_sidecar.budget import FalseKillBudget
from expiry_sidecar.state import JournaledBook, StateFile, boot_id, parse
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, raw_write, request, wait_for

StartSidecar = Callable[..., Sidecar]
REPO = Path(__file__).resolve().parents[2]


def crash(server: Sidecar) -> None:
    server.signal(signal.SIGKILL)
    assert server.process.wait(timeout=10) == -signal.SIGKILL


def armed_then_crashed(pod: Pod, sidecar: StartSidecar, action: str, after: float) -> tuple[Worker, Path]:
    """A worker with one armed timer, and the state file of the sidecar that was SIGKILLed holding it."""
    state = pod.workdir / "state.json"
    first = sidecar("--state-file", str(state))
    worker = Worker(pod, first.fifo, action, "--after", str(after))
    worker.expect("armed")
    first.wait_metric("expiry_timers_active", 1)
    crash(first)
    return worker, state


def test_a_restarted_sidecar_still_kills_a_stuck_worker_on_time(pod: Pod, sidecar: StartSidecar) -> None:
    """On time: within a second of the deadline or, when the crash and the cold start outlasted the
    deadline (a loaded machine), of the restarted sidecar being ready. The 3 s usually cover both.
    Measured on the test's clock: the sidecar's own latency metric counts from the deadline it
    restored, so a deadline restored late would not show there."""
    after = 3.0
    state = pod.workdir / "state.json"
    first = sidecar("--state-file", str(state))
    worker = Worker(pod, first.fifo, "hang", "--after", str(after))
    worker.expect("armed")
    deadline = time.monotonic() + after  # no earlier than the real one: "armed" is read after the arming
    first.wait_metric("expiry_timers_active", 1)
    crash(first)
    second = sidecar("--state-file", str(state))
    due = max(deadline, time.monotonic())  # when the kill is due: the deadline, or the restart if later
    assert worker.wait() == -signal.SIGKILL
    late = time.monotonic() - due
    assert late < 1.5, f"killed {late:.2f}s after it was due"
    metrics = second.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
    assert metrics("expiry_state_restored_timers_total") == 1


def test_a_deadline_that_passed_while_no_sidecar_ran_fires_at_restart(
    pod: Pod, sidecar: StartSidecar
) -> None:
    worker, state = armed_then_crashed(pod, sidecar, "hang", after=0.3)
    time.sleep(0.6)
    assert worker.alive()
    second = sidecar("--state-file", str(state))
    assert worker.wait() == -signal.SIGKILL
    assert (
        second.wait_metric("expiry_kills_total", 1, signal="SIGKILL")("expiry_state_restored_timers_total")
        == 1
    )


def test_timers_of_workers_gone_meanwhile_are_dropped_and_their_pid_reusers_spared(
    pod: Pod, sidecar: StartSidecar
) -> None:
    worker, state = armed_then_crashed(pod, sidecar, "exit", after=1)
    worker.tell("exit")
    assert worker.wait() == 0
    innocent = pod.reuse_pid(worker.pid)
    second = sidecar("--state-file", str(state))
    metrics = second.wait_metric("expiry_state_dropped_timers_total", 1)
    assert metrics("expiry_state_restored_timers_total") == 0
    assert metrics("expiry_timers_active") == 0
    time.sleep(1.2)
    assert innocent.poll() is None


def test_a_corrupt_state_file_is_set_aside_and_reported(pod: Pod, sidecar: StartSidecar) -> None:
    state = pod.workdir / "state.json"
    state.write_text("this is not a state file\n")
    server = sidecar("--state-file", str(state))
    assert server.metrics()("expiry_state_errors_total") == 1
    aside = list(pod.workdir.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "this is not a state file\n"
    assert any(entry["message"].startswith("state file unusable") for entry in server.logs())
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL


def header(boot: str | None = None) -> str:
    return json.dumps({"expiry_state": 1, "boot_id": boot or boot_id()})


def test_a_torn_last_line_is_ignored_and_the_rest_kept() -> None:
    text = header() + "\n" + json.dumps(["arm", 5, 7, "a", 12.5, 9]) + '\n["arm", 6, 8, "b", 1'
    saved = parse(text, boot_id())
    assert [(t.pid, t.scope_id, t.deadline) for t in saved] == [(5, "a", 12.5)]


def test_releases_and_forgets_in_the_journal_are_applied_in_order() -> None:
    lines = [
        header(),
        json.dumps(["arm", 5, 7, "a", 1.0, 9]),
        json.dumps(["arm", 5, 7, "b", 2.0, 9]),
        json.dumps(["arm", 6, 8, "c", 3.0, 15]),
        json.dumps(["release", 5, "a"]),
        json.dumps(["forget", 6]),
        json.dumps(["arm", 6, 9, "d", 4.0, 9]),
    ]
    saved = parse("\n".join(lines) + "\n", boot_id())
    assert sorted((t.pid, t.starttime, t.scope_id) for t in saved) == [(5, 7, "b"), (6, 9, "d")]


def test_a_journal_from_another_boot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(header("another-boot") + "\n" + json.dumps(["arm", 5, 7, "a", 1.0, 9]) + "\n")
    state = StateFile(path)
    assert state.load() == []
    assert state.errors == 1
    assert not path.exists()


def test_the_journal_stays_bounded_under_churn(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    book = JournaledBook(state, starttime_of=lambda pid: 1)
    book.snapshot()
    book.arm(1, "long", 1e9, 9)
    for turn in range(20_000):
        book.arm(2, f"s{turn}", float(turn), 9)
        book.flush()
        book.release(2, f"s{turn}")
        book.flush()
    text = (tmp_path / "state.json").read_text()
    assert len(text.splitlines()) <= 4 * len(book) + 4096 + 2
    assert [t.scope_id for t in parse(text, state.boot)] == ["long"]


def test_an_acquire_released_within_one_turn_never_reaches_the_disk(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    book = JournaledBook(state, starttime_of=lambda pid: 1)
    book.snapshot()
    size = (tmp_path / "state.json").stat().st_size
    book.arm(2, "quick", 5.0, 9)
    book.forget(2)
    book.flush()
    assert (tmp_path / "state.json").read_text().count('"quick"') == 0
    assert (tmp_path / "state.json").stat().st_size > size  # the forget itself is written


def test_a_deleted_fifo_is_recreated_and_old_clients_reconnect(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    veteran = Worker(pod, server.fifo, "later", "--after", "0.3")  # holds the old pipe open
    veteran.expect("connected")
    server.fifo.unlink()
    wait_for(server.fifo.exists, timeout=15, what="the FIFO to be recreated")
    assert any(entry["message"].startswith("the FIFO was deleted") for entry in server.logs())
    newcomer = Worker(pod, server.fifo, "hang", "--after", "0.3")
    newcomer.expect("armed")
    assert newcomer.wait() == -signal.SIGKILL
    veteran.tell("go")  # its next write meets the closed old pipe, reconnects, and is honoured
    veteran.expect("armed")
    assert veteran.wait() == -signal.SIGKILL


def test_a_full_volume_never_stops_the_sidecar_and_the_state_catches_up(tmp_path: Path) -> None:
    pod = Pod(tmp_path, volumes=["/var/run/expiry-state:size=64k"])
    try:
        server = Sidecar(pod, "--state-file", "/var/run/expiry-state/state.json")
        fill = pod.start(["sh", "-c", "head -c 1000000 /dev/zero > /var/run/expiry-state/filler"])
        fill.wait()
        holder = Worker(pod, server.fifo, "hang", "--after", "3600")
        holder.expect("armed")
        far = time.time() + 3600
        raw_write(server.fifo, b"".join(request(holder.pid, f"{i:03}" + "x" * 200, far) for i in range(59)))
        stuck = Worker(pod, server.fifo, "hang", "--after", "0.3")
        stuck.expect("armed")
        assert stuck.wait() == -signal.SIGKILL, "a full volume stopped the sidecar from killing"
        metrics = server.wait_metric("expiry_state_errors_total", 1)
        assert metrics("expiry_timers_active") == 60
        assert any(e["message"].startswith("cannot write the state file") for e in server.logs())
        assert pod.start(["rm", "/var/run/expiry-state/filler"]).wait() == 0
        late = Worker(pod, server.fifo, "hang", "--after", "3600")  # a change after the retry interval
        time.sleep(JournaledBook.RETRY_INTERVAL)
        late.kill(signal.SIGTERM)
        wait_for(lambda: any(e["message"] == "the state file is written again" for e in server.logs()))
        crash(server)
        restarted = Sidecar(pod, "--state-file", "/var/run/expiry-state/state.json")
        assert restarted.metrics()("expiry_state_restored_timers_total") == 60
    finally:
        pod.close()


def test_the_false_kill_budget_is_journaled_and_read_back_after_a_snapshot(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    budget = FalseKillBudget(kills=3, window=100.0)
    book = JournaledBook(state, starttime_of=lambda pid: 1, budget=budget)
    book.snapshot()
    assert '"budget"' not in state.path.read_text(), "nothing counted: nothing written"
    budget.spend(10.0)
    book.flush()
    budget.spend(20.0)
    budget.spend(30.0)
    book.flush()

    def reread() -> FalseKillBudget:
        again = StateFile(state.path)
        again.load()
        restored = FalseKillBudget(kills=3, window=100.0)
        again.load_blocks(BlockStats(), restored)
        assert again.errors == 0
        return restored

    restored = reread()
    assert restored.exhausted and restored.spent_at == 30.0 and restored.within_window(50.0) == 3
    book.snapshot()
    assert reread().spent_at == 30.0, "the snapshot keeps it too"


def test_a_malformed_budget_costs_only_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    blocks = json.dumps(["blocks", 1, {"s": [1, 0.5, 0.5, 60, {"9": 1}]}])
    budget = json.dumps(["blocks", 1, {}, {"budget": {"kills": "x"}}])
    path.write_text(header() + "\n" + blocks + "\n" + budget + "\n")
    state = StateFile(path)
    state.load()
    stats, budget = BlockStats(), FalseKillBudget()
    state.load_blocks(stats, budget)
    assert state.errors == 1 and not budget.counted
    assert stats.scopes["s"].count == 1


PREVIOUS_SIDECAR = "7a404c0fed2b02b35e11402f10a9110ec538b1f5"
"""The last commit whose sidecar kept statistics but no false-kill budget in its state file."""


def test_a_sidecar_older_than_the_budget_record_keeps_the_timers_and_learns_afresh(tmp_path: Path) -> None:
    """The budget rides in a statistics entry: the previous sidecar's journal reader (from this
    repository's history) refuses only the statistics, never the file with its armed timers."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{PREVIOUS_SIDECAR}:sidecar/src/expiry_sidecar/state.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "budget" not in source, "not a sidecar older than the budget record"
    previous = types.ModuleType("previous_state")
    sys.modules[previous.__name__] = previous  # its dataclasses look their module up
    try:
        exec(compile(source, "previous_state.py", "exec"), previous.__dict__)  # our own history
    finally:
        del sys.modules[previous.__name__]

    state = StateFile(tmp_path / "state.json")
    stats, budget = BlockStats(), FalseKillBudget()
    book = JournaledBook(state, starttime_of=lambda pid: 7, blocks=stats, budget=budget)
    book.snapshot()
    book.arm(5, "step", 12.5, 9)
    stats.record("step", 0.5, 60.0)
    budget.spend(3.0)
    book.flush()
    book.snapshot()  # and the snapshot carries it too
    book.arm(6, "eval", 20.0, 9)
    budget.spend(4.0)
    book.flush()

    timers, entries = previous.parse_journal(state.path.read_text(), state.boot)
    assert sorted((t.pid, t.scope_id) for t in timers) == [(5, "step"), (6, "eval")]
    with pytest.raises(ValueError, match="not a statistics entry"):
        previous.apply_blocks(entries, BlockStats())
