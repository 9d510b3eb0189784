"""The client's debug channel: a real worker process answers on its socket with its stacks while its
main thread waits; nothing listens without ``EXPIRY_DUMP_DIR``; torch is never imported for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from expiry.debug import socket_path
from expiry.names import DUMP_DIR_ENV
from expiry.procstat import starttime
from expiry_sidecar.askworker import NoAnswer, ask, told_ranks
from tests.support.sidecar import wait_for

WORKER = textwrap.dedent(
    """
    import sys, threading
    from expiry import FileTimerClient

    def waiting_in_a_collective():
        print("ready", flush=True)
        threading.Event().wait()

    FileTimerClient(sys.argv[1]).acquire("step", 4e9)
    waiting_in_a_collective()
    """
)


@pytest.fixture
def worker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    env = {k: v for k, v in os.environ.items() if k not in (DUMP_DIR_ENV, "RANK", "LOCAL_RANK")}
    if request.param is not None:  # the extra environment of a worker with a dump directory
        env.update({DUMP_DIR_ENV: str(tmp_path / "dumps"), **request.param})
    (tmp_path / "requests").touch()
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "requests")], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


@pytest.mark.parametrize("worker", [{}], indirect=True)
def test_the_worker_answers_with_its_stacks_while_its_main_thread_waits(
    worker: subprocess.Popen[str], tmp_path: Path
) -> None:
    path = socket_path(tmp_path / "dumps", worker.pid)
    wait_for(path.is_socket, what="the debug socket")
    reply = ask(path, starttime(worker.pid))
    assert reply["pid"] == worker.pid
    stack = str(reply["stack"])
    assert "in waiting_in_a_collective" in stack and '"MainThread"' in stack, stack
    assert reply["flight_recorder"] is None and "flight_recorder_error" not in reply
    assert ask(path, starttime(worker.pid))["pid"] == worker.pid, "it answers every time it is asked"


@pytest.mark.parametrize(
    ("worker", "told"),
    [
        ({"RANK": "3", "LOCAL_RANK": "1"}, {"rank": 3, "local_rank": 1}),
        ({"RANK": "12", "LOCAL_RANK": "-1"}, {"rank": 12}),
        ({}, {}),
    ],
    indirect=["worker"],
)
def test_the_worker_tells_its_ranks(
    worker: subprocess.Popen[str], tmp_path: Path, told: dict[str, int]
) -> None:
    """The sidecar may not read the environment of a worker that holds capabilities it lacks."""
    path = socket_path(tmp_path / "dumps", worker.pid)
    wait_for(path.is_socket, what="the debug socket")
    assert told_ranks(ask(path, starttime(worker.pid))) == told


@given(st.dictionaries(st.sampled_from(["rank", "local_rank", "pid"]), st.from_type(object) | st.integers()))
def test_only_non_negative_integers_are_taken_for_ranks(reply: dict[str, object]) -> None:
    told = told_ranks(reply)
    assert set(told) <= {"rank", "local_rank"}
    assert all(type(value) is int and value >= 0 and reply[key] == value for key, value in told.items())
    assert told.keys() == {k for k in ("rank", "local_rank") if type(reply.get(k)) is int and reply[k] >= 0}


def connect_as(uid: int, path: Path) -> bytes:
    """What a process of ``uid`` reads on the socket (a forked child that drops to it; no exec, so it
    needs no access to this interpreter's files)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.chdir(path.parent)  # as root: the directories above need not be open to ``uid``
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(5)
                connection.connect(path.name)
                while chunk := connection.recv(1 << 16):
                    os.write(write_end, chunk)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        read = pipe.read()
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0, "the child could not connect"
    return read


@pytest.mark.parametrize("worker", [{}], indirect=True)
def test_only_the_worker_s_uid_and_root_are_answered(worker: subprocess.Popen[str], tmp_path: Path) -> None:
    """The socket file is open to all (a root sidecar without CAP_DAC_OVERRIDE must connect to a trainer
    of another uid); the worker itself refuses any other uid, by the kernel's word on the peer."""
    path = socket_path(tmp_path / "dumps", worker.pid)
    wait_for(path.is_socket, what="the debug socket")
    assert oct(path.stat().st_mode & 0o777) == oct(0o666)
    assert b'"stack"' in connect_as(os.getuid(), path)
    assert connect_as(4321, path) == b"", "another uid gets nothing"


@pytest.mark.parametrize("worker", [{}], indirect=True)
def test_an_answer_from_another_process_than_the_one_killed_is_refused(
    worker: subprocess.Popen[str], tmp_path: Path
) -> None:
    path = socket_path(tmp_path / "dumps", worker.pid)
    wait_for(path.is_socket, what="the debug socket")
    with pytest.raises(NoAnswer, match="another process"):
        ask(path, starttime(worker.pid) + 1)


@pytest.mark.parametrize("worker", [None], indirect=True)
def test_without_a_dump_directory_nothing_listens(worker: subprocess.Popen[str], tmp_path: Path) -> None:
    threads = os.listdir(f"/proc/{worker.pid}/task")
    assert len(threads) == 1, "no debug thread"
    assert not (tmp_path / "dumps").exists()


def test_answering_never_imports_torch() -> None:
    code = "import sys; from expiry import debug; debug.answer(1, 2); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "False\n"


def test_a_trainer_on_torch_s_client_starts_the_channel_with_one_call(tmp_path: Path) -> None:
    """No expiry timer client at all: ``expiry.debug.start()`` reads the directory from the env."""
    code = "import os, expiry.debug; print(expiry.debug.start()); print(expiry.debug.start() is not None)"
    env = {**os.environ, DUMP_DIR_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    first, again = done.stdout.splitlines()
    assert first.startswith(str(tmp_path)) and first.endswith(".sock") and again == "True"
    without = {k: v for k, v in os.environ.items() if k != DUMP_DIR_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=without
    )
    assert done.stdout.splitlines() == ["None", "False"]
