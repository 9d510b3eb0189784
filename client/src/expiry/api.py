"""``expires()`` and ``configure()``: the trainer-facing API, torch's ``expires`` semantics.

>>> with expires(after=60):       # the sidecar kills this process if the block runs past 60 s
...     train_step()

>>> @expires(after=600)           # each call of the function is one block
... def evaluate(): ...

- A block arms a timer on entry and releases it on exit, also when it raises.
- Without ``scope`` the scope id is the file and line that wrote ``expires(...)`` (see
  :mod:`expiry.scopes`), so nested blocks, recursion and threads each get a timer of their own.
- Without ``client`` the one given to :func:`configure` is used; with none configured, a
  :class:`~expiry.timer_client.FileTimerClient` on ``$TORCHELASTIC_TIMER_FILE`` (the FIFO the
  operator injects) is made on first use.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, Protocol, TypeVar

from expiry import scopes
from expiry.names import TIMER_FILE_ENV
from expiry.timer_client import FileTimerClient

P = ParamSpec("P")
R = TypeVar("R")


class TimerClient(Protocol):
    """What ``expires`` needs of a client: expiry's and torch's FileTimerClient both qualify."""

    def acquire(self, scope_id: str, expiration_time: float) -> None: ...

    def release(self, scope_id: str) -> None: ...


_configured: TimerClient | None = None
_configure_lock = threading.Lock()


def configure(timer_client: TimerClient) -> None:
    """Make ``timer_client`` the one every ``expires`` without an explicit client uses."""
    global _configured
    _configured = timer_client


def _default_client() -> TimerClient:
    global _configured
    if _configured is None:
        with _configure_lock:
            if _configured is None:
                path = os.environ.get(TIMER_FILE_ENV)
                if not path:
                    raise RuntimeError(
                        f"expiry has no timer client: call expiry.configure(FileTimerClient(path)) or set"
                        f" {TIMER_FILE_ENV} (the expiry operator sets it in injected pods)"
                    )
                _configured = FileTimerClient(path)
    return _configured


class expires:  # lower case like torch's expires, which it replaces
    """Kill this process if the block (or each call of the decorated function) outlives ``after`` s."""

    __slots__ = ("_after", "_base", "_client", "_explicit", "_open")

    def __init__(self, after: float, scope: str | None = None, client: TimerClient | None = None) -> None:
        if (
            isinstance(after, bool)
            or not isinstance(after, int | float)
            or not math.isfinite(after)
            or after <= 0
        ):
            raise ValueError(f"expires(after=...) takes a positive number of seconds, not {after!r}")
        self._after = float(after)
        self._client = client
        self._explicit = scope is not None
        if scope is None:
            caller = sys._getframe(1)
            scope = scopes.site(caller.f_code.co_filename, caller.f_lineno)
        self._base = scope
        self._open: list[str] = []

    def __enter__(self) -> None:
        client = self._client or _default_client()
        scope = self._base if self._explicit else scopes.claim(self._base)
        try:
            client.acquire(scope, time.time() + self._after)
        except BaseException:
            if not self._explicit:
                scopes.release(scope)
            raise
        self._open.append(scope)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        scope = self._open.pop()
        try:
            (self._client or _default_client()).release(scope)
        finally:
            if not self._explicit:
                scopes.release(scope)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``func``: every call is a block of its own, scoped at the decorator's line."""

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._fresh():
                return func(*args, **kwargs)

        return guarded

    def _fresh(self) -> expires:
        """A new block with this one's settings: calls may recurse or run in several threads at once."""
        block = copy.copy(self)
        block._open = []
        return block

    def __repr__(self) -> str:
        return f"expires(after={self._after!r}, scope={self._base!r})"
