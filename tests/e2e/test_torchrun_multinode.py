"""Real torchrun across two injected pods ("nodes"), each with its own sidecar and its own agent.

A rank on one node hangs before an all_reduce; every other rank, on both nodes, waits in it. The
workers use ``--wait-on-peer-failure``: when a peer dies, a gloo collective fails at once, while an
NCCL one (what GPU jobs run) usually hangs; waiting makes the CPU job behave as a GPU job would, so
each node's workers end only by their own timers. Each sidecar kills its own pod's workers on time,
both agents start the next generation, and the job completes from the nodes' checkpoints.

- c10d rendezvous (torchrun --rdzv-backend c10d, Kubeflow Trainer, JobSet): the agents meet again in
  a new rendezvous round.
- static rendezvous (a PyTorchJob's ``PET_*`` variables): no agent hears of the other's failure;
  the healthy node learns of it only through its own workers' timers, which is why every node must
  wrap its collectives in ``expires``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.torchrun_pod import CHECKPOINTS, TRAINER, TorchrunPod
from tests.support.pod import can_make_pods
from tests.support.sidecar import free_port

pytestmark = pytest.mark.torch

TRAINING = (
    TRAINER,
    "--deadline",
    "4",
    "--steps",
    "3",
    "--checkpoint-dir",
    CHECKPOINTS,
    "--wait-on-peer-failure",
)
AGENT = ("--nnodes", "2", "--nproc-per-node", "2", "--max-restarts", "3", "--monitor-interval", "1")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[TorchrunPod, TorchrunPod]]:
    reason = can_make_pods()
    if reason:
        pytest.skip(reason)
    made: list[TorchrunPod] = []
    try:
        made.append(TorchrunPod(tmp_path, "llm-worker-0"))
        made.append(TorchrunPod(tmp_path, "llm-worker-1"))
        yield made[0], made[1]
    finally:
        for pod in made:
            pod.close()


def assert_recovered(pods: tuple[TorchrunPod, TorchrunPod], hung: int) -> None:
    """Every worker of generation 0 killed on time by its own pod's sidecar; generation 1 finished."""
    assert f"[rank {hung} gen 0] hanging before the collective of step 1" in "".join(p.output() for p in pods)
    for pod in pods:
        pod.assert_killed_on_time(pod.worker_pids(generation=0))
        pod.assert_resumed_and_finished()


def test_c10d_both_sidecars_kill_and_both_agents_meet_again(nodes: tuple[TorchrunPod, TorchrunPod]) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    rendezvous = ("--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "llm")
    runs = [
        pod.torchrun(
            *AGENT,
            *rendezvous,
            "--rdzv-conf",
            f"is_host={int(index == 0)}",
            # Each pod has an address of its own. (The agents' pids, which also tell nodes apart,
            # may be equal in two pods.)
            "--local-addr",
            f"127.0.0.{index + 1}",
            *TRAINING,
            "--hang-rank",
            "1",
        )
        for index, pod in enumerate(nodes)
    ]
    assert [pod.finish(run) for pod, run in zip(nodes, runs, strict=True)] == [0, 0], nodes[0].tail()
    assert_recovered(nodes, hung=1)


def test_static_the_healthy_node_learns_of_the_hang_from_its_own_timers(
    nodes: tuple[TorchrunPod, TorchrunPod],
) -> None:
    port = str(free_port())
    runs = [
        pod.torchrun(  # as a PyTorchJob runs it: torchrun reads its arguments from PET_* variables
            *TRAINING,
            "--hang-rank",
            "3",  # on node 1: node 0, which hosts the store, is the healthy one
            env={
                "PET_NNODES": "2",
                "PET_NPROC_PER_NODE": "2",
                "PET_NODE_RANK": str(rank),
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": port,
                "PET_MAX_RESTARTS": "3",
                "PET_MONITOR_INTERVAL": "1",
            },
        )
        for rank, pod in enumerate(nodes)
    ]
    assert [pod.finish(run) for pod, run in zip(nodes, runs, strict=True)] == [0, 0], nodes[1].tail()
    assert_recovered(nodes, hung=3)
