"""torch's FileTimerServer as its own process: ``python -m bench.torch_server FIFO``.

Configured as torchrun configures it (``max_interval=0.1``). Prints ``ready`` once its watchdog
thread runs; on SIGUSR1 prints ``<requests registered> <timers armed>``; exits on SIGTERM.

One deviation from torch: after reaping a worker, torch's server also sends the signal to its own
process (it expects to be the agent that torchrun restarts). Here it spares itself, so one server
serves every kill-latency trial; that self-signal comes after the worker's, so latency is unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from torch.distributed.elastic.timer.file_based_local_timer import FileTimerServer

MAX_INTERVAL = 0.1
"""What torchrun's elastic agent passes (torch/distributed/elastic/agent/server/local_elastic_agent.py)."""


class SparingServer(FileTimerServer):
    def _reap_worker(self, worker_pid: int, signal: int) -> bool:
        if worker_pid == os.getpid():
            return True
        return bool(super()._reap_worker(worker_pid, signal))


def main() -> None:
    server = SparingServer(sys.argv[1], run_id="bench", max_interval=MAX_INTERVAL)

    def report(signum: int, frame: FrameType | None) -> None:
        print(server._request_count, len(server._timers), flush=True)

    signal.signal(signal.SIGUSR1, report)
    server.start()
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
