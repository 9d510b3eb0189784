"""Server memory: resident set size (VmRSS) at idle and with 100,000 timers armed.

For scale, a bare Python interpreter (the same one, importing nothing) is measured too: it is the
floor under any Python server.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench import procfs
from bench.context import Context, Row
from bench.holders import hold
from bench.idle import touch
from bench.table import compare, mb

ARMED = 100_000
GOAL = 40 * 2**20


def interpreter_baseline() -> int:
    bare = subprocess.Popen(
        [sys.executable, "-S", "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        time.sleep(0.3)
        return procfs.rss_bytes(bare.pid)
    finally:
        bare.communicate(b"")


def run(ctx: Context) -> list[Row]:
    armed = ctx.size(ARMED, 1_000)
    idle: dict[str, float | str] = {}
    loaded: dict[str, float | str] = {}
    for name in ctx.peers:
        with ctx.server(name) as peer:
            touch(peer)
            idle[name] = procfs.rss_bytes(peer.pid)
            holder, _ = hold(peer, armed)
            loaded[name] = rss = procfs.rss_bytes(peer.pid)
            ctx.notes.append(
                f"Memory, {name}: of the {mb(rss)} MB with {armed:,} timers,"
                f" {mb(procfs.rss_bytes(peer.pid, 'RssFile'))} MB are mapped files (the interpreter and"
                " shared libraries, shared with other processes using them)."
            )
            holder.close()
    ctx.notes.append(
        f"Memory: a bare Python interpreter (python -S) has {mb(interpreter_baseline())} MB resident."
    )
    return [
        compare("server RSS, idle", "MB", idle, mb),
        compare(
            f"server RSS, {armed:,} timers armed",
            "MB",
            loaded,
            mb,
            goal="<= 40 MB",
            met=lambda v: v <= GOAL,
        ),
    ]
