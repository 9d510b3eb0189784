"""How late is a kill when the sidecar is SIGKILLed and restarted just before the deadline?

    .venv/bin/python -m bench.restart_delay [--trials 10]

Each trial, in a fresh PID namespace (root needed): a sidecar with --state-file; a worker arms a
1 s block and hangs; shortly before the deadline (0.5 s, then 0.05 s: the restart outlasts it) the
sidecar is SIGKILLed and a new one started at once on the same FIFO and state file. Printed: how long
the restart took (start to /readyz) and how late the worker died after its deadline, as the restarted
sidecar's kill-latency histogram and as seen from outside (a blocking wait on the worker).
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


def trial(crash_before: float) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as workdir:
        pod = Pod(Path(workdir))
        try:
            state = str(Path(workdir) / "state.json")
            first = Sidecar(pod, "--state-file", state)
            worker = Worker(pod, first.fifo, "hang", "--after", str(AFTER))
            worker.expect("armed")
            deadline = time.monotonic() + AFTER
            first.wait_metric("expiry_timers_active", 1)
            time.sleep(max(0.0, deadline - crash_before - time.monotonic()))
            first.signal(signal.SIGKILL)
            first.process.wait()
            started = time.monotonic()
            second = Sidecar(pod, "--state-file", state)
            restart = time.monotonic() - started
            assert worker.process.wait() == -signal.SIGKILL  # no timeout: no polling delay
            died_late = time.monotonic() - deadline
            metrics = second.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
            return restart, metrics("expiry_kill_latency_seconds_sum"), died_late
        finally:
            pod.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    count = parser.parse_args().trials
    for crash_before in (0.5, 0.05):
        print(f"sidecar SIGKILLed {crash_before * 1000:g} ms before the deadline, restarted at once:")
        trials = [trial(crash_before) for _ in range(count)]
        for name, values in zip(
            ("restart (start to /readyz)", "kill latency (sidecar)", "worker death past deadline"),
            zip(*trials, strict=True),
            strict=True,
        ):
            median, most = statistics.median(values) * 1000, max(values) * 1000
            print(f"  {name:30} median {median:8.1f} ms   max {most:8.1f} ms")


if __name__ == "__main__":
    main()
