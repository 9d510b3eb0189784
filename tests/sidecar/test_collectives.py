"""A kill's ``collective``: the newest entry of the worker's flight-recorder dump, in the kill entry
of the Event; and the debug channel's stacks read like faulthandler's. No I/O."""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from typing import Any

import pytest

from expiry import debug
from expiry_sidecar.collectives import group_name, latest
from expiry_sidecar.events import kill_entry
from expiry_sidecar.kills import Outcome
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import KillReport
from expiry_sidecar.stackdumps import innermost_frames


def entry(
    record: int, seq: int, state: str, op: str = "gloo:all_reduce", group: Any = ("0", "default_pg")
) -> dict[str, Any]:
    return {
        "record_id": record,
        "pg_id": 0,
        "process_group": list(group),
        "collective_seq_id": seq,
        "p2p_seq_id": 0,
        "profiling_name": op,
        "state": state,
        "is_p2p": False,
    }


def test_the_newest_entry_is_the_worker_s_collective() -> None:
    dump = {
        "version": "2.10",
        "entries": [entry(0, 1, "completed"), entry(2, 3, "started"), entry(1, 2, "completed")],
    }
    assert latest(dump) == {"group": "default_pg", "seq": 3, "op": "all_reduce", "state": "started"}


def test_across_groups_the_newest_record_wins_and_an_unnamed_group_is_its_number() -> None:
    dump = {
        "entries": [entry(5, 9, "completed"), entry(6, 1, "scheduled", "nccl:broadcast", ("3", "undefined"))]
    }
    assert latest(dump) == {"group": "3", "seq": 1, "op": "broadcast", "state": "scheduled"}
    assert group_name(["1", "tp_group"]) == "tp_group"


@pytest.mark.parametrize(
    "dump",
    [
        None,
        {},
        {"entries": []},
        {"entries": "x"},
        [1],
        {"entries": [{**entry(1, 1, "started"), "is_p2p": True}]},
        {"entries": [{**entry(1, 1, "started"), "state": "lost"}]},
        {"entries": [{**entry(1, 1, "started"), "collective_seq_id": True}]},
    ],
)
def test_no_entries_or_unreadable_ones_are_no_collective(dump: object) -> None:
    assert latest(dump) is None


def test_the_kill_entry_carries_the_collective_or_null() -> None:
    worker = Worker(42, 1, None, "python train.py")
    stuck = {"group": "default_pg", "seq": 7, "op": "all_reduce", "state": "started"}
    with_one = KillReport(
        worker, "s", signal.SIGKILL, Outcome.DELIVERED, 0.01, deadline=1e9, collective=stuck
    )
    without = KillReport(worker, "s", signal.SIGKILL, Outcome.DELIVERED, 0.01, deadline=1e9)
    assert kill_entry(with_one, (3, 1))["collective"] == stuck
    assert kill_entry(without, (3, 1))["collective"] is None


def test_the_kill_entry_names_the_node_or_null() -> None:
    report = KillReport(Worker(42, 1, None, "python t.py"), "s", signal.SIGKILL, Outcome.DELIVERED, 0.01)
    assert kill_entry(report, (3, 1), "gpu-node-7")["node"] == "gpu-node-7"
    assert kill_entry(report, (3, 1))["node"] is None, "no EXPIRY_NODE_NAME: null, not a guess"


def waiting_here(done: threading.Event) -> None:
    done.wait()


def test_the_debug_channel_s_stacks_name_the_main_thread_innermost_last() -> None:
    """Asked from another thread (as the channel's own thread is), while this one waits for it."""
    answered: list[str] = []
    done = threading.Event()

    def ask() -> None:
        main = threading.main_thread().ident
        assert main is not None
        while "waiting_here" not in str(traceback.extract_stack(sys._current_frames()[main])):
            time.sleep(0.01)
        answered.append(debug.stacks())
        done.set()

    threading.Thread(target=ask, name="asker").start()
    waiting_here(done)
    (text,) = answered
    assert '"MainThread"' in text and '"asker"' not in text, "the answering thread is left out"
    frames = innermost_frames(text)
    assert any(frame.endswith(" in waiting_here") for frame in frames), frames
    assert frames[-1].endswith(" in wait"), "innermost last"


def test_a_retired_entry_is_completed_whatever_its_state() -> None:
    """gloo never moves ``state`` past scheduled; torch retires the entry when the work is done."""
    dump = {"entries": [{**entry(0, 1, "scheduled"), "retired": True}]}
    assert latest(dump) == {"group": "default_pg", "seq": 1, "op": "all_reduce", "state": "completed"}
    assert latest({"entries": [{**entry(0, 1, "scheduled"), "retired": False}]})["state"] == "scheduled"  # type: ignore[index]
