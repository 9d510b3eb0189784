"""Find the host pids of processes a pod runs (the node stand-in starts them; the tests signal them as
the kernel or a crash would), by an environment entry and a piece of their command line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def processes(environ_entry: bytes, in_cmdline: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """(pid, environment) of each live process whose environment holds ``environ_entry`` exactly
    (``b"KEY="`` alone matches any value of KEY) and whose command line contains ``in_cmdline``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        prefix = environ_entry.endswith(b"=")
        if in_cmdline in cmdline and any(
            var.startswith(environ_entry) if prefix else var == environ_entry for var in environ
        ):
            yield int(entry.name), environ


def pid_of(environ_entry: bytes, in_cmdline: bytes) -> int | None:
    return next((pid for pid, _ in processes(environ_entry, in_cmdline)), None)
