"""How late is a kill when the sidecar is SIGKILLed and restarted just before the deadline?

    .venv/bin/python -m bench.restart_delay [--trials 10]

Each trial, in a fresh PID namespace (root needed): a sidecar with --state-file; a worker arms a
1 s block and hangs; at 0.5 s the sidecar is SIGKILLed and a new one started at once on the same FIFO
and state file. Printed: how long the restart took (start to /readyz) and how late the worker died
after its deadline, as the restarted sidecar's kill-latency histogram and as seen from outside.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from pathlib import Path

from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker

AFTER = 1.0


def trial() -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as workdir:
        pod = Pod(Path(workdir))
        try:
            state = str(Path(workdir) / "state.json")
            first = Sidecar(pod, "--state-file", state)
            worker = Worker(pod, first.fifo, "hang", "--after", str(AFTER))
            worker.expect("armed")
            deadline = time.monotonic() + AFTER
            first.wait_metric("expiry_timers_active", 1)
            time.sleep(max(0.0, deadline - 0.5 - time.monotonic()))
            first.signal(signal.SIGKILL)
            first.process.wait()
            started = time.monotonic()
            second = Sidecar(pod, "--state-file", state)
            restart = time.monotonic() - started
            assert worker.wait() == -signal.SIGKILL
            died_late = time.monotonic() - deadline
            metrics = second.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
            return restart, metrics("expiry_kill_latency_seconds_sum"), died_late
        finally:
            pod.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    trials = [trial() for _ in range(parser.parse_args().trials)]
    for name, values in zip(
        ("restart (start to /readyz)", "kill latency (sidecar)", "worker death past deadline"),
        zip(*trials, strict=True),
        strict=True,
    ):
        print(
            f"{name:30} median {statistics.median(values) * 1000:8.1f} ms   max {max(values) * 1000:8.1f} ms"
        )


if __name__ == "__main__":
    main()
