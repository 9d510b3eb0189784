"""A process-group store that a restarted torchrun generation can trust: copy this into your trainer.

When expiry (or anything else) kills a worker, torchrun stops the local workers and starts a new
generation. The agent's TCPStore (MASTER_ADDR:MASTER_PORT) outlives the generations, and
``init_process_group(init_method="env://")`` keys the gloo/NCCL rendezvous under the same names in
every generation: a new worker can read the addresses the killed generation published and fail
with ``connectFullMesh ... Connection refused`` or wait forever in ``init_process_group``. Prefixing
the keys with ``TORCHELASTIC_RESTART_COUNT`` (the generation, the same on every node of a c10d
job after each re-rendezvous) gives each generation a clean namespace::

    import torch.distributed as dist
    from torchrun_store import generation_store

    dist.init_process_group("gloo", store=generation_store(), rank=rank, world_size=world_size)

A rendezvous that never completes (a peer that never comes) is a hang too: wrap the call in
``expires`` so the sidecar kills it and torchrun tries again.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist


def generation_store(timeout: timedelta = timedelta(minutes=5)) -> dist.Store:
    """A client of torchrun's store, its keys prefixed by this worker group's restart count."""
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"generation-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
