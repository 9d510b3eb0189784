"""A bounded soak: 32 processes, mixed blocks, exact accounting, no client error, flat memory.

EXPIRY_SOAK_SECONDS sets the length (default 8 s in the suite; the reliability figures in
docs/failure-modes.md come from a 60 s run).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker

StartSidecar = Callable[..., Sidecar]

SECONDS = float(os.environ.get("EXPIRY_SOAK_SECONDS", "8"))
WORKERS = 32
RSS_DRIFT_LIMIT_KIB = 16 * 1024


def test_a_soak_of_32_processes_loses_no_request(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar("--state-file", str(pod.workdir / "state.json"))
    rss_start = server.rss_kib()
    workers = [Worker(pod, server.fifo, "soak", "--seconds", str(SECONDS)) for _ in range(WORKERS)]
    sent = [0, 0, 0]
    for worker in workers:
        words = worker.readline().split()
        assert words[0] == "done", f"a client failed: {words}"
        for i, count in enumerate(map(int, words[1:])):
            sent[i] += count
        assert worker.wait(timeout=60) == 0
    acquires, releases, watches = sent
    metrics = server.wait_metric("expiry_requests_total", releases, timeout=60, kind="release")
    rss_end = server.rss_kib()
    sys.stderr.write(
        f"soak: {WORKERS} processes x {SECONDS:g}s, {acquires} blocks ({watches} watch-only), "
        f"sidecar RSS {rss_start} KiB -> {rss_end} KiB\n"
    )
    assert metrics("expiry_requests_total", kind="acquire") == acquires
    assert metrics("expiry_malformed_requests_total") == 0
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    assert 0 < metrics("expiry_expirations_total") <= watches
    assert metrics("expiry_timers_active") == 0
    assert rss_end - rss_start < RSS_DRIFT_LIMIT_KIB, "the sidecar's memory grew under load"
