"""Asking a worker over its debug channel (the client's :mod:`expiry.debug`): one connection, one answer.

The worker writes one JSON object and closes the connection: the close is the acknowledgement that
the answer is complete, so nothing waits for a file to stop growing. A worker that does not answer
within ``timeout`` (stuck in C code holding the GIL, or not expiry's client) is :class:`NoAnswer`;
the caller falls back to the faulthandler signal.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from expiry.debug import socket_path

TIMEOUT = 0.5
"""Seconds a worker gets to answer. A worker that answers at all does within milliseconds (its
thread only needs the GIL, which a worker waiting in a collective has released); the rest is room for
a loaded machine. Only the fallback (the faulthandler signal) waits longer."""
LIMIT = 16 * 1024 * 1024
"""Bytes an answer may have: a flight recorder of 20,000 entries with stacks stays far below."""


class NoAnswer(Exception):
    pass


def channel(directory: Path, pid: int) -> Path | None:
    """The worker's debug socket, if it opened one."""
    path = socket_path(directory, pid)
    return path if path.is_socket() else None


def ask(path: Path, starttime: int, timeout: float = TIMEOUT) -> dict[str, object]:
    """The worker's answer; it must come from the process started at ``starttime``."""
    give_up = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(path))
            while chunk := connection.recv(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > LIMIT:
                    raise NoAnswer(f"the answer is longer than {LIMIT} bytes")
                connection.settimeout(max(0.001, give_up - time.monotonic()))
    except TimeoutError:
        raise NoAnswer(f"no answer within {timeout:g}s (a thread holding the GIL?)") from None
    except OSError as exc:
        raise NoAnswer(f"cannot ask on {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise NoAnswer("the answer is not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("stack"), str):
        raise NoAnswer("the answer has no stack")
    if reply.get("starttime") != starttime:
        raise NoAnswer("the answer comes from another process (its pid was reused)")
    return reply


def told_ranks(reply: dict[str, object]) -> dict[str, int]:
    """``rank`` and ``local_rank`` as the worker told them, those that are non-negative integers."""
    return {
        key: value
        for key in ("rank", "local_rank")
        if isinstance(value := reply.get(key), int) and not isinstance(value, bool) and value >= 0
    }
