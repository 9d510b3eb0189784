"""A torchrun trainer guarded by expiry: every step (its collective included) must finish in time.

    expiry-sidecar run -- torchrun --nproc-per-node 2 --max-restarts 3 examples/torchrun_trainer.py \
        --hang-rank 1 --checkpoint-dir "$(mktemp -d)"

Each step all-reduces a tensor under ``expires(after=--deadline)`` and then saves a checkpoint (the
next step to run) in --checkpoint-dir, a directory of this run's own (a checkpoint left by an
earlier run would make this one resume past the step that hangs); a restarted worker group resumes
from it. ``--hang-rank R`` makes rank R hang once, before the step's collective, in the first
generation only, so the other ranks block in the all-reduce: the sidecar kills every worker of the
group at its deadline, torchrun starts the next generation, and training completes. ``--hang-how``
says where rank R hangs: ``before`` the collective (the others wait in it), in ``data`` loading at
the start of the step (with ``--hang-step 0``: before any collective at all), or in a ``mismatch``ed
collective (a broadcast where the others all-reduce). ``--wait-on-peer-failure`` makes a rank whose
collective fails because a peer died wait forever, as NCCL ranks usually do (gloo fails fast): then
only its timer ends it. ``--client torch`` uses torch's own ``torch.distributed.elastic.timer``
(unchanged torch code) instead of expiry's client.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchrun_store import generation_store


def say(*words: object) -> None:
    """One line in one write, so the lines of ranks sharing the output never interleave."""
    who = f"[rank {os.environ['RANK']} gen {os.environ['TORCHELASTIC_RESTART_COUNT']}]"
    sys.stdout.write(" ".join(map(str, (who, *words))) + "\n")
    sys.stdout.flush()


def timer(client: str) -> Any:
    """The ``expires`` to use: expiry's (needs nothing), or torch's own with its client configured."""
    if client == "torch":
        from torch.distributed.elastic import timer as torch_timer

        torch_timer.configure(torch_timer.FileTimerClient(os.environ["TORCHELASTIC_TIMER_FILE"]))
        return torch_timer.expires
    from expiry import expires

    return expires


def load(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        return int(path.read_text())
    return 0


def save(path: Path, step: int) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(str(step))
    partial.replace(path)


def load_batch(step: int) -> None:
    """A data loader that never returns (a dead NFS server, a stuck shard): no collective involved."""
    say("hanging in data loading in step", step)
    threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds each step may take")
    parser.add_argument("--init-deadline", type=float, default=60.0, help="seconds the rendezvous may take")
    parser.add_argument("--hang-rank", type=int, default=-1)
    parser.add_argument("--hang-step", type=int, default=1)
    parser.add_argument("--hang-how", choices=["before", "data", "mismatch"], default="before")
    parser.add_argument("--client", choices=["expiry", "torch"], default="expiry")
    parser.add_argument(
        "--checkpoint-dir", type=Path, required=True, help="this run's own directory, e.g. $(mktemp -d)"
    )
    parser.add_argument(
        "--wait-on-peer-failure",
        action="store_true",
        help="when a collective fails because a peer died, hang (as NCCL usually does) instead of raising",
    )
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    generation = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    expires = timer(args.client)
    say("pid", os.getpid())

    with expires(after=args.init_deadline):  # a rendezvous that never completes is a hang too
        dist.init_process_group(
            "gloo", store=generation_store(), rank=rank, world_size=world, timeout=timedelta(minutes=5)
        )
    checkpoint = args.checkpoint_dir / "checkpoint"  # each node's own; a node's group rank may change
    start = load(checkpoint)
    say("resuming at step", start)
    for step in range(start, args.steps):
        with expires(after=args.deadline):
            hang = rank == args.hang_rank and step == args.hang_step and generation == 0
            if hang and args.hang_how == "data":
                load_batch(step)
            if hang and args.hang_how == "before":
                say("hanging before the collective of step", step)
                threading.Event().wait()
            total = torch.ones(1)
            try:
                if hang and args.hang_how == "mismatch":
                    say("entering a mismatched collective in step", step)
                    dist.broadcast(total, src=rank)
                    threading.Event().wait()  # should it ever complete
                dist.all_reduce(total)
            except RuntimeError:
                if not args.wait_on_peer_failure:
                    raise
                say("a peer died in the collective of step", step, "; waiting as NCCL would")
                threading.Event().wait()
            assert int(total.item()) == world
        if os.environ["LOCAL_RANK"] == "0":
            save(checkpoint, step + 1)
        say("step", step, "done")
    dist.destroy_process_group()
    say("finished")


if __name__ == "__main__":
    main()
