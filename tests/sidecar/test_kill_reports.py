"""What a kill reports, without I/O: the mode's rule, the innermost frames of a real dump, the ranks
from a worker's environment, and the kills annotation within its size limit."""

from __future__ import annotations

import faulthandler
import json
import signal
import tempfile
import threading

import pytest

from expiry_sidecar.events import (
    KILLS_ANNOTATION,
    MAX_KILLS_ANNOTATION,
    TRUNCATED_ANNOTATION,
    kill_entry,
    kills_annotations,
    ranks_from_environ,
)
from expiry_sidecar.kills import Outcome
from expiry_sidecar.mode import Action, Mode, on_expiry
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import KillReport
from expiry_sidecar.stackdumps import innermost_frames


@pytest.mark.parametrize(
    ("mode", "requested", "kill_signal", "condition", "expected"),
    [
        (Mode.ENFORCE, 0, None, True, None),
        (Mode.OBSERVE, -1, None, True, None),
        (Mode.ENFORCE, 9, None, False, Action(9, send=True, condition=False)),
        (Mode.ENFORCE, 9, 15, True, Action(15, send=True, condition=True)),
        (Mode.OBSERVE, 9, 15, True, Action(15, send=False, condition=False)),
    ],
)
def test_the_mode_decides_signal_and_condition(
    mode: Mode, requested: int, kill_signal: int | None, condition: bool, expected: Action | None
) -> None:
    assert on_expiry(mode, requested, kill_signal, condition) == expected


def innermost() -> str:
    """A real faulthandler dump of this process while a second thread waits in ``parked``."""
    started, stop = threading.Event(), threading.Event()

    def parked() -> None:
        started.set()
        stop.wait()

    thread = threading.Thread(target=parked)
    thread.start()
    started.wait()
    with tempfile.TemporaryFile("w+") as file:
        faulthandler.dump_traceback(file, all_threads=True)
        file.seek(0)
        text = file.read()
    stop.set()
    thread.join()
    return text


def test_the_innermost_frames_of_a_faulthandler_dump_are_the_main_thread_s() -> None:
    dump = innermost()
    assert "parked" in dump, "the dump has the other thread too"
    frames = innermost_frames(dump)
    assert len(frames) == 5
    assert frames[-1].endswith(" in innermost"), "innermost last, the main thread's"
    assert __file__ in frames[-1]
    assert not any("parked" in frame for frame in frames)


def test_the_innermost_frames_of_a_py_spy_dump_are_the_main_thread_s() -> None:
    dump = (
        "Process 42: python train.py\nPython v3.11.7 (/usr/bin/python3.11)\n\n"
        'Thread 43 (idle): "Thread-1 (worker)"\n    wait (threading.py:327)\n    run (threading.py:982)\n\n'
        'Thread 42 (idle): "MainThread"\n    wait (threading.py:327)\n    all_reduce (dist.py:12)\n'
        "    step (train.py:30)\n    <module> (train.py:50)\n"
    )
    assert innermost_frames(dump) == [
        "train.py:50 in <module>",
        "train.py:30 in step",
        "dist.py:12 in all_reduce",
        "threading.py:327 in wait",
    ]


def test_no_stack_no_frames() -> None:
    assert innermost_frames("") == []
    assert innermost_frames("py-spy: permission denied\n") == []


def test_ranks_come_from_the_worker_s_environment() -> None:
    assert ranks_from_environ(b"PATH=/bin\0RANK=12\0LOCAL_RANK=4\0WORLD_SIZE=16\0") == (12, 4)
    assert ranks_from_environ(b"PATH=/bin\0") == (None, None)
    assert ranks_from_environ(b"RANK=x\0LOCAL_RANK=3") == (None, 3)
    assert ranks_from_environ(b"GROUP_RANK=1\0") == (None, None)


def report(pid: int, frames: tuple[str, ...] = ()) -> KillReport:
    worker = Worker(pid, 1, None, "python train.py")
    killed = (signal.SIGKILL, Outcome.DELIVERED, 0.01)
    return KillReport(worker, "train.py#12", *killed, deadline=1e9, frames=frames)


def test_the_kills_annotation_keeps_what_fits_and_counts_the_rest() -> None:
    deep = tuple(f"/opt/venv/lib/python3.11/site-packages/torch/{'x' * 150}.py:{n} in f" for n in range(5))
    entries = [kill_entry(report(pid, deep), (pid, pid % 8)) for pid in range(200)]
    annotations = kills_annotations(entries)
    kept = json.loads(annotations[KILLS_ANNOTATION])
    assert len(annotations[KILLS_ANNOTATION].encode()) <= MAX_KILLS_ANNOTATION
    assert 0 < len(kept) < 200
    assert int(annotations[TRUNCATED_ANNOTATION]) == 200 - len(kept)
    assert kept[0] == entries[0]
    small = kills_annotations(entries[:3])
    assert TRUNCATED_ANNOTATION not in small and len(json.loads(small[KILLS_ANNOTATION])) == 3
