"""Worker processes forked from the harness, so they start in milliseconds with both clients imported.

A child runs ``body(channel)`` and exits; ``channel.wait_go()`` blocks until the parent says go, and
``channel.send(obj)`` reports a JSON-able object back. A child that raises prints its traceback and
exits 1; the parent then gets a :class:`ChildFailed` instead of a report.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any


class ChildFailed(RuntimeError):
    pass


class Channel:
    """The child's side."""

    def __init__(self, go: int, out: int) -> None:
        self._go = go
        self._out = os.fdopen(out, "w")

    def wait_go(self) -> None:
        os.read(self._go, 1)

    def send(self, obj: Any) -> None:
        self._out.write(json.dumps(obj) + "\n")
        self._out.flush()


class Child:
    """The parent's side of one forked child."""

    def __init__(self, body: Callable[[Channel], None]) -> None:
        go_r, self._go = os.pipe()
        out_r, out_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                os.close(self._go)
                os.close(out_r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                body(Channel(go_r, out_w))
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)
        os.close(go_r)
        os.close(out_w)
        self._out = os.fdopen(out_r)
        self.status: int | None = None

    def go(self) -> None:
        os.write(self._go, b"g")

    def receive(self) -> Any:
        line = self._out.readline()
        if not line:
            self.wait()
            raise ChildFailed(f"child {self.pid} exited with status {self.status} before reporting")
        return json.loads(line)

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def wait(self) -> int:
        """Reap the child; its wait status."""
        if self.status is None:
            self.status = os.waitpid(self.pid, 0)[1]
        return self.status

    def kill(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()

    def close(self) -> None:
        self.kill()
        self._out.close()
        os.close(self._go)
