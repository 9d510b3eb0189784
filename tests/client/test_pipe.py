"""FileTimerClient on a real FIFO: one open pipe, waiting out a full pipe, reconnecting, re-arming."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from expiry import FileTimerClient, ServerUnavailable, procstat
from expiry.wire import decode


class Reader:
    """The server's end of the FIFO, as bare as it gets."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.buffer = b""

    def lines(self) -> list[bytes]:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        return complete

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "timer.fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def reader(fifo: Path) -> Iterator[Reader]:
    made = Reader(fifo)
    yield made
    made.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_requests_carry_pid_signal_and_start_time_over_one_open_pipe(fifo: Path, reader: Reader) -> None:
    client = FileTimerClient(str(fifo), signal=15)
    client.acquire("a", 100.0)
    fds_after_first = open_fds()
    client.release("a")
    client.acquire("b", 200.0)
    assert open_fds() == fds_after_first, "the client opened the FIFO again"
    requests = [decode(line) for line in reader.lines()]
    assert [(r.scope_id, r.expiration_time, r.signal) for r in requests] == [
        ("a", 100.0, 15),
        ("a", -1.0, 0),
        ("b", 200.0, 15),
    ]
    assert {r.pid for r in requests} == {os.getpid()}
    assert {r.starttime for r in requests} == {procstat.starttime()}
    client.close()


def test_no_server_is_a_clear_error_after_a_bounded_retry(fifo: Path) -> None:
    client = FileTimerClient(str(fifo), connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"has no reader after 0\.3s") as raised:
        client.acquire("a", 1.0)
    assert 0.3 <= time.monotonic() - started < 5
    assert isinstance(raised.value, BrokenPipeError), "torch's callers catch BrokenPipeError"
    missing = FileTimerClient(str(fifo.with_name("absent.fifo")), connect_timeout=0.1)
    with pytest.raises(ServerUnavailable, match="does not exist"):
        missing.acquire("a", 1.0)


def test_a_server_that_starts_late_is_waited_for(fifo: Path) -> None:
    client = FileTimerClient(str(fifo), connect_timeout=5)
    readers: list[Reader] = []
    opener = threading.Timer(0.3, lambda: readers.append(Reader(fifo)))
    opener.start()
    client.acquire("late", 1.0)
    opener.join()
    assert [decode(line).scope_id for line in readers[0].lines()] == ["late"]
    readers[0].close()


def test_a_full_pipe_is_waited_out_not_failed(fifo: Path, reader: Reader) -> None:
    client = FileTimerClient(str(fifo))
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:  # fill the pipe to the brim
            os.write(filler, b"x" * 4096)
    except BlockingIOError:
        pass
    drained: list[bytes] = []
    drainer = threading.Timer(0.3, lambda: drained.extend(reader.lines()))
    drainer.start()
    client.acquire("after-the-jam", 1.0)  # blocks until the drainer makes room, then succeeds
    drainer.join()
    os.close(filler)
    assert any(b"after-the-jam" in line for line in drained + reader.lines())


def test_a_pipe_that_stays_full_fails_with_a_timeout(fifo: Path, reader: Reader) -> None:
    client = FileTimerClient(str(fifo), full_timeout=0.2)
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    with pytest.raises(BlockingIOError):
        while True:
            os.write(filler, b"x" * 4096)
    with pytest.raises(TimeoutError, match="stayed full"):
        client.acquire("stuck", 1.0)
    os.close(filler)


def test_after_a_server_restart_the_client_reconnects_and_rearms_its_timers(fifo: Path) -> None:
    first = Reader(fifo)
    client = FileTimerClient(str(fifo))
    client.acquire("outer", 100.0)
    client.acquire("inner", 50.0)
    client.release("inner")
    first.lines()
    first.close()  # the server dies: the next write fails with EPIPE, then reopening with ENXIO
    restarted: list[Reader] = []
    restart = threading.Timer(0.3, lambda: restarted.append(Reader(fifo)))
    restart.start()
    client.acquire("next", 70.0)
    restart.join()
    second = restarted[0]
    scopes = [(r.scope_id, r.expiration_time) for r in map(decode, second.lines())]
    # the replay re-arms what was armed before the loss; the new request follows
    assert scopes[-1] == ("next", 70.0)
    assert ("outer", 100.0) in scopes[:-1]
    assert all(scope != "inner" for scope, _ in scopes)
    second.close()


def test_a_forked_child_speaks_for_itself(fifo: Path, reader: Reader) -> None:
    client = FileTimerClient(str(fifo))
    client.acquire("parent", 100.0)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            client.acquire("child", 5.0)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    requests = {r.scope_id: r for r in map(decode, reader.lines())}
    assert requests["parent"].pid == os.getpid()
    assert requests["child"].pid == child
    assert requests["child"].starttime is not None
    assert requests["child"].starttime != requests["parent"].starttime


def test_errors_other_than_a_missing_reader_are_not_retried(tmp_path: Path) -> None:
    not_a_fifo = tmp_path / "dir"
    not_a_fifo.mkdir()
    client = FileTimerClient(str(not_a_fifo), connect_timeout=30)
    with pytest.raises(OSError) as raised:
        client.acquire("a", 1.0)
    assert raised.value.errno == errno.EISDIR


def test_keep_open_false_closes_the_pipe_after_each_request(fifo: Path, reader: Reader) -> None:
    before = open_fds()
    client = FileTimerClient(str(fifo), keep_open=False)
    client.acquire("a", 1.0)
    assert open_fds() == before
    assert [decode(line).scope_id for line in reader.lines()] == ["a"]


def test_under_torchrun_s_own_timer_server_the_pipe_is_not_kept_open(
    fifo: Path, reader: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHELASTIC_ENABLE_FILE_TIMER", "1")
    before = open_fds()
    FileTimerClient(str(fifo)).acquire("a", 1.0)
    assert open_fds() == before
