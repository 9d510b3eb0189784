"""Default scope ids: the caller's ``file#line``, made unique among the blocks open in this process.

torch computes the default scope from ``inspect.stack()[1]``, which inside a ``@contextmanager`` is
always ``contextlib.py#137``: every block shares one scope, so an inner block's release disarms the
outer one. Here the scope is the line that wrote ``expires(...)``; when that line is already open
(recursion, or two threads in the same code) the next block gets ``file#line@2``, then ``@3``...
"""

from __future__ import annotations

import os
import threading

_open: set[str] = set()
_lock = threading.Lock()


def _forget_parent() -> None:
    """A forked child starts with none of its parent's blocks open (and a lock nobody holds)."""
    global _lock
    _open.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_parent)


def site(filename: str, lineno: int) -> str:
    return f"{filename}#{lineno}"


def claim(base: str) -> str:
    """A scope id for a new block at ``base`` that no open block uses; give it back with release()."""
    with _lock:
        scope = base
        n = 1
        while scope in _open:
            n += 1
            scope = f"{base}@{n}"
        _open.add(scope)
        return scope


def release(scope: str) -> None:
    with _lock:
        _open.discard(scope)
