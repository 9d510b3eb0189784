"""Stack dumps on request: a real worker process registers faulthandler, announces the signal, and
writes its own stacks when it gets it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from expiry import dumps
from expiry.names import DUMP_DIR_ENV
from expiry.wire import MalformedRequest, Request, decode, encode
from tests.support.sidecar import wait_for

WORKER = textwrap.dedent(
    """
    import os, sys, threading
    from expiry import FileTimerClient

    def stuck_in_a_collective(name):
        print(name, os.getpid(), flush=True)  # from inside: a dump from now on shows this frame
        threading.Event().wait()

    client = FileTimerClient(sys.argv[1])
    client.acquire("step", 4e9)
    client.release("step")
    if sys.argv[2:] == ["fork"]:
        child = os.fork()
        if child == 0:
            client.acquire("child-step", 4e9)
            stuck_in_a_collective("child")
        print("parent", os.getpid(), flush=True)
        os.waitpid(child, 0)
    else:
        stuck_in_a_collective("pid")
    """
)


def start_worker(tmp_path: Path, *args: str, dump_dir: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != DUMP_DIR_ENV}
    if dump_dir is not None:
        env[DUMP_DIR_ENV] = dump_dir
    (tmp_path / "requests").touch()  # a plain file stands in for the FIFO: it keeps what is written
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "requests"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its forked children too can be killed as one group
    )


def requests_written(tmp_path: Path) -> list[Request]:
    return [decode(line) for line in (tmp_path / "requests").read_bytes().splitlines()]


def test_a_worker_announces_the_dump_signal_and_writes_its_stacks_when_sent_it(tmp_path: Path) -> None:
    dump_dir = tmp_path / "dumps"
    worker = start_worker(tmp_path, dump_dir=str(dump_dir))
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline().split()[1])
        acquire, release = requests_written(tmp_path)
        assert acquire.dump_signal == dumps.DUMP_SIGNAL
        assert release.dump_signal is None, "only acquires announce the dump signal"
        stack_file = dump_dir / f"{pid}.stack"
        os.kill(pid, dumps.DUMP_SIGNAL)
        stack = wait_for(lambda: stack_file.exists() and stack_file.read_text(), what="the dump")
        wait_for(lambda: "stuck_in_a_collective" in stack_file.read_text(), what="the whole dump")
        assert "Current thread" in stack or "Thread 0x" in stack
        assert worker.poll() is None, "the dump signal must not end the worker"
    finally:
        worker.kill()
        worker.communicate()


def test_without_the_variable_nothing_is_registered_or_announced(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, dump_dir=None)
    try:
        assert worker.stdout is not None
        worker.stdout.readline()
        acquire, _ = requests_written(tmp_path)
        assert acquire.dump_signal is None
        assert b"dump_signal" not in (tmp_path / "requests").read_bytes()
    finally:
        worker.kill()
        worker.communicate()


def test_a_forked_child_dumps_into_a_file_of_its_own(tmp_path: Path) -> None:
    dump_dir = tmp_path / "dumps"
    worker = start_worker(tmp_path, "fork", dump_dir=str(dump_dir))
    try:
        assert worker.stdout is not None
        said = [worker.stdout.readline() for _ in range(2)]
        lines = dict(line.split() for line in said if len(line.split()) == 2)
        assert lines.keys() == {"child", "parent"}, f"the worker said {said!r}"
        child = int(lines["child"])
        os.kill(child, dumps.DUMP_SIGNAL)
        wait_for(
            lambda: "stuck_in_a_collective" in _read(dump_dir / f"{child}.stack"), what="the child's dump"
        )
        assert "stuck_in_a_collective" not in _read(dump_dir / f"{lines['parent']}.stack")
        child_acquire = next(r for r in requests_written(tmp_path) if r.scope_id == "child-step")
        assert (child_acquire.pid, child_acquire.dump_signal) == (child, dumps.DUMP_SIGNAL)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the child too: it holds the worker's stdout open
        worker.communicate()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_a_directory_that_cannot_be_made_turns_dumps_off_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    monkeypatch.setenv(DUMP_DIR_ENV, str(not_a_directory / "dumps"))
    monkeypatch.setattr(dumps, "_registered", None)
    assert dumps.enable() is None
    assert "no stack dumps" in caplog.text and str(not_a_directory) in caplog.text


def test_the_wire_format_carries_the_dump_signal() -> None:
    request = Request(42, "train.py#7", 1.5e9, 9, 1234, dumps.DUMP_SIGNAL)
    assert decode(encode(request).rstrip(b"\n")) == request


@pytest.mark.parametrize("bad", ["0", "-3", str(signal.NSIG), '"40"', "true", "1.5"])
def test_a_bad_dump_signal_makes_the_request_malformed(bad: str) -> None:
    line = f'{{"version":1,"pid":42,"scope_id":"s","expiration_time":1.0,"signal":9,"dump_signal":{bad}}}'
    with pytest.raises(MalformedRequest, match="dump_signal"):
        decode(line)
