"""A toy training loop whose fourth step hangs, as a collective waiting on a dead peer would.

Run it under a timer server:  expiry-sidecar run -- python examples/stuck_trainer.py
Each step is guarded by ``expires(after=STEP_TIMEOUT)``; the sidecar kills the process when the
hung step passes its deadline, and the command exits with 137 (128 + SIGKILL).
"""

import os
import threading
import time

from expiry import expires

STEP_TIMEOUT = 2.0


def train_step(step: int) -> float:
    if step == 4:
        print(f"step {step}: waiting for a peer that will never answer...", flush=True)
        threading.Event().wait()  # hangs forever, like a stuck all-reduce
    time.sleep(0.2)
    return 1.0 / step


def main() -> None:
    print(f"trainer pid {os.getpid()}: each step must finish within {STEP_TIMEOUT}s", flush=True)
    for step in range(1, 10):
        with expires(after=STEP_TIMEOUT):
            loss = train_step(step)
        print(f"step {step}: loss {loss:.3f}", flush=True)


if __name__ == "__main__":
    main()
