"""What torch's flight recorder costs a training loop: a gloo all_reduce loop, recorder off and on.

Two ranks on this machine (a FileStore, gloo) all-reduce a small tensor (latency-bound: the
recorder's per-collective bookkeeping weighs most there) and a 4 MiB one, ``STEPS`` times each after
a warm-up; each run is timed by rank 0. Runs alternate between ``TORCH_FR_BUFFER_SIZE=0`` (off) and
the value the operator injects, so the machine's drift hits both. Needs torch (the interop group).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from bench.context import Context, Row
from bench.stats import median
from bench.table import compare, us
from expiry.names import FLIGHT_RECORDER_ENTRIES, FLIGHT_RECORDER_ENV

RANK = """
import json, sys, time
import torch, torch.distributed as dist
rank, store, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
out = {}
for name, size in (("small", 1), ("4MiB", 1 << 20)):
    tensor = torch.ones(size)
    for _ in range(steps // 10):
        dist.all_reduce(tensor)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        dist.all_reduce(tensor)
    out[name] = (time.perf_counter() - start) / steps
dist.destroy_process_group()
if rank == 0:
    print(json.dumps(out))
"""


def one_run(entries: int, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        store = os.path.join(directory, "store")
        env = {**os.environ, FLIGHT_RECORDER_ENV: str(entries)}
        ranks = [
            subprocess.Popen(
                [sys.executable, "-c", RANK, str(rank), store, str(steps)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for rank in (0, 1)
        ]
        outputs = [rank.communicate(timeout=600)[0] for rank in ranks]
        if any(rank.returncode for rank in ranks):
            raise RuntimeError("a gloo rank failed")
        return {k: float(v) for k, v in json.loads(outputs[0]).items()}


def run(ctx: Context) -> list[Row]:
    steps, rounds = ctx.size(2000, 20), ctx.size(5, 1)
    runs: dict[int, list[dict[str, float]]] = {0: [], FLIGHT_RECORDER_ENTRIES: []}
    for _ in range(rounds):
        for entries, results in runs.items():
            results.append(one_run(entries, steps))
    rows = []
    for size in ("small", "4MiB"):
        off = median([r[size] for r in runs[0]])
        on = median([r[size] for r in runs[FLIGHT_RECORDER_ENTRIES]])
        rows.append(compare(f"gloo all_reduce {size}, recorder off", "µs", {"expiry": off}, us))
        rows.append(
            compare(f"gloo all_reduce {size}, recorder {FLIGHT_RECORDER_ENTRIES}", "µs", {"expiry": on}, us)
        )
    ctx.notes.append(
        f"Flight recorder: 2 gloo ranks, {steps} all_reduces per size and run, {rounds} alternating runs per"
        " setting, median of the runs' mean time per all_reduce (the 'expiry' column is torch's cost here)."
    )
    return rows
