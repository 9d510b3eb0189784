"""The debug channel: the worker tells the sidecar what it is doing, on request, before a kill.

When ``$EXPIRY_DUMP_DIR`` is set, the first timer client of a process starts one daemon thread
listening on the Unix socket ``$EXPIRY_DUMP_DIR/<pid>.sock`` (:func:`socket_path`). The sidecar
connects before it signals the worker; the thread writes one JSON object (:func:`answer`) and closes
the connection, which is the sidecar's acknowledgement that the answer is complete. Anyone may open
the socket; only the worker's own uid and root get an answer (:func:`may_ask`). The answer:

- ``pid``, ``starttime``: who answers (the sidecar checks them against the worker it is killing);
- ``rank``, ``local_rank``: its ``RANK`` and ``LOCAL_RANK`` (null when unset or not a number): the
  sidecar cannot read the environment of a worker holding capabilities it lacks (a root trainer);
- ``stack``: every thread's Python stack, in faulthandler's text layout (the main thread named);
- ``flight_recorder``: torch's flight-recorder dump (``_dump_fr_trace_json``), when
  ``torch.distributed`` was already imported by the trainer and a process group is initialised;
  otherwise null, with ``flight_recorder_error`` saying why when it failed.

Nothing here imports torch, and nothing runs on the timer requests' path: the thread sleeps in
``accept()`` until asked. It answers while the main thread waits in a collective (gloo and NCCL
release the GIL while they wait); a worker stuck in C code holding the GIL cannot answer, and the
sidecar falls back to the faulthandler signal (see :mod:`expiry.dumps`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import struct
import sys
import threading
from pathlib import Path
from types import FrameType

from expiry import procstat
from expiry.names import DUMP_DIR_ENV

_started_for: int | None = None
"""The pid the thread was started for; a forked child starts its own."""
_lock = threading.Lock()


def socket_path(directory: str | os.PathLike[str], pid: int) -> Path:
    """Where the worker ``pid`` answers (shared with the sidecar)."""
    return Path(directory) / f"{pid}.sock"


def start(directory: str | None = None) -> Path | None:
    """Start answering on ``directory/<pid>.sock`` (once per process); the path, or None if it cannot.

    ``directory`` defaults to ``$EXPIRY_DUMP_DIR`` (nothing starts without it). expiry's timer client
    calls this itself; a trainer using torch's own client calls it once per worker (docs/torchrun.md).
    """
    global _started_for
    directory = directory or os.environ.get(DUMP_DIR_ENV)
    if not directory:
        return None
    pid = os.getpid()
    with _lock:
        if _started_for == pid:
            return socket_path(directory, pid)
        path = socket_path(directory, pid)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # an earlier process's, with the same pid
            listener.bind(str(path))
            os.chmod(path, 0o666)  # who may ask is decided per connection: see may_ask
            listener.listen(4)
        except OSError:
            listener.close()
            return None
        starttime = procstat.starttime()
        thread = threading.Thread(
            target=_serve, args=(listener, pid, starttime), name="expiry-debug", daemon=True
        )
        thread.start()
        _started_for = pid
        return path


def _serve(listener: socket.socket, pid: int, starttime: int) -> None:
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection, contextlib.suppress(OSError):
            if may_ask(connection):
                connection.sendall(json.dumps(answer(pid, starttime)).encode())


def may_ask(connection: socket.socket) -> bool:
    """Only the worker's own uid and root are answered. A sidecar that cannot share the trainer's uid
    (the trainer runs as its image's user) is root with no capability but KILL, so a socket file only
    the worker's uid may open would keep it out; the kernel's word on the peer (SO_PEERCRED) keeps
    everyone else out instead."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", credentials)
    return uid in (0, os.getuid())


def answer(pid: int, starttime: int) -> dict[str, object]:
    """What the worker says about itself: stacks and, when torch has one, its flight recorder."""
    recorder, error = flight_recorder()
    reply: dict[str, object] = {
        "pid": pid,
        "starttime": starttime,
        "rank": _number(os.environ.get("RANK")),
        "local_rank": _number(os.environ.get("LOCAL_RANK")),
        "stack": stacks(),
        "flight_recorder": recorder,
    }
    if error:
        reply["flight_recorder_error"] = error
    return reply


def _number(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() else None


def stacks() -> str:
    """All threads' stacks, innermost frame first, the main thread last: faulthandler's layout."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    me, main = threading.get_ident(), threading.main_thread().ident
    frames = sys._current_frames()
    order = sorted((ident for ident in frames if ident != me), key=lambda ident: ident == main)
    blocks = [
        "\n".join(
            [
                f'Thread 0x{ident:016x} "{names.get(ident, "?")}" (most recent call first):',
                *_frames(frames[ident]),
            ]
        )
        for ident in order  # without this thread, answering: never what the worker is stuck in
    ]
    return "\n\n".join(blocks) + "\n"


def _frames(frame: FrameType | None) -> list[str]:
    """Innermost first; without reading source files (traceback would, through linecache)."""
    lines = []
    while frame is not None:
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno} in {code.co_name}')
        frame = frame.f_back
    return lines


def flight_recorder() -> tuple[object, str | None]:
    """torch's flight-recorder dump as parsed JSON, or (None, why not); never imports torch."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None:
        return None, None
    try:
        if not distributed.is_available() or not distributed.is_initialized():
            return None, None
        c10d = importlib.import_module("torch._C._distributed_c10d")  # loaded with torch.distributed
        return json.loads(c10d._dump_fr_trace_json(includeCollectives=True, onlyActive=False)), None
    except Exception as exc:  # an old torch, no recorder: the stacks still go
        return None, f"{type(exc).__name__}: {exc}"[:200]
