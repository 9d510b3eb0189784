"""Cutting the FIFO's byte stream into request lines.

Clients write whole lines atomically, but a bulk ``read()`` may end inside a line: the tail is kept
for the next read. A line longer than ``max_line`` cannot be a request (clients stay under PIPE_BUF);
it is dropped whole and counted once, so its pieces never reach the parser as separate lines.
"""

from __future__ import annotations

from expiry.wire import PIPE_BUF


class LineSplitter:
    def __init__(self, max_line: int = 4 * PIPE_BUF) -> None:
        self.max_line = max_line
        self._tail = b""
        self._skipping = False
        """Inside an oversized line: drop everything up to its newline."""

    def feed(self, chunk: bytes) -> tuple[list[bytes], int]:
        """The complete lines in ``chunk`` (newlines removed), and how many oversized lines were dropped."""
        data = self._tail + chunk if self._tail else chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        oversized = 0
        if self._skipping and lines:
            del lines[0]
            self._skipping = False
        if len(self._tail) > self.max_line:
            if not self._skipping:
                oversized += 1
            self._tail = b""
            self._skipping = True
        if lines and max(map(len, lines)) > self.max_line:  # map(len): no Python frame per line
            kept = [line for line in lines if len(line) <= self.max_line]
            oversized += len(lines) - len(kept)
            lines = kept
        return lines, oversized
