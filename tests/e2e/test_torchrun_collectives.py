"""Real torchrun and gloo: the sidecar asks every worker's debug channel before the kills, each kill
names the worker's latest collective, and the operator's hang report names the rank that broke it.

One node (a pod, 2 workers) and two nodes (two pods, 2 workers each, c10d rendezvous). Stack dumps
are on (``expiry.io/stack-dumps: client``), so the operator gave the trainers ``EXPIRY_DUMP_DIR``
and ``TORCH_FR_BUFFER_SIZE``. The workers wait on a peer's failure, as NCCL ranks do, and torchrun
does not restart them: what is checked is what the kills said. The kill lines of the sidecars go
through the same path as their Events: the kills annotation entries, the operator's parser, the
incident and its report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from expiry_operator.hang_report import HangReport, report
from expiry_operator.incidents import IncidentTracker
from expiry_operator.kill_events import parse_kill_event
from expiry_operator.owners import Workload
from expiry_sidecar.stackdumps import innermost_frames
from tests.e2e.torchrun_pod import CHECKPOINTS, TRAINER, TorchrunPod
from tests.operator.operator_harness import kill_event
from tests.support.pod import can_make_pods
from tests.support.sidecar import free_port

pytestmark = pytest.mark.torch

JOB = Workload("kubeflow.org/v1", "PyTorchJob", "ml", "llm", "u")
TRAINING = (
    TRAINER,
    "--deadline",
    "3",
    "--steps",
    "3",
    "--checkpoint-dir",
    CHECKPOINTS,
    "--wait-on-peer-failure",
)
AGENT = ("--nproc-per-node", "2", "--max-restarts", "0", "--monitor-interval", "1")


@pytest.fixture
def pods(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[TorchrunPod]]:
    reason = can_make_pods()
    if reason:
        pytest.skip(reason)
    made: list[TorchrunPod] = []
    try:
        for index in range(request.param):
            made.append(
                TorchrunPod(tmp_path, f"llm-worker-{index}", stack_dumps="client", node=f"gpu-node-{index}")
            )
        yield made
    finally:
        for pod in made:
            pod.close()


def run(pods: Sequence[TorchrunPod], *trainer: str, env: dict[str, str] | None = None) -> HangReport:
    """Train on every pod until the hang's kills; the hang report made of the pods' kills."""
    if len(pods) == 1:
        runs = [pods[0].torchrun("--standalone", *AGENT, *TRAINING, *trainer, env=env)]
    else:
        endpoint = f"127.0.0.1:{free_port()}"
        runs = [
            pod.torchrun(
                "--nnodes",
                "2",
                *AGENT,
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "llm",
                "--rdzv-conf",
                f"is_host={int(index == 0)}",
                "--local-addr",
                f"127.0.0.{index + 1}",
                *TRAINING,
                *trainer,
                env=env,
            )
            for index, pod in enumerate(pods)
        ]
    for pod, started in zip(pods, runs, strict=True):
        assert pod.finish(started) != 0, "torchrun may not restart: the hung generation must fail"
    tracker = IncidentTracker(window=1, max_span=10)
    for pod in pods:
        event = parse_kill_event(
            kill_event({"metadata": {"name": pod.name, "namespace": "ml"}}, entries(pod))
        )
        assert event is not None
        tracker.add(JOB, event, now=0)
    (incident,) = tracker.pop_due(5)
    return report(incident)


def entries(pod: TorchrunPod) -> list[dict[str, Any]]:
    """The pod's kills as the kills annotation lists them (the sidecar's log has what its Event has)."""
    ranks = {int(pid): int(rank) for rank, pid in re.findall(r"\[rank (\d+) gen 0\] pid (\d+)", pod.output())}
    stacks = {
        line["pid"]: line["stack"]
        for line in pod.sidecar_lines()
        if line["message"] == "stack of the stuck worker"
    }
    kills = pod.kills()
    assert sorted(kill["pid"] for kill in kills) == sorted(ranks), pod.tail()
    return [
        {
            "pid": kill["pid"],
            "rank": ranks[kill["pid"]],
            "scope": kill["scope"],
            "deadline": 0.0,
            "outcome": kill["outcome"],
            "frames": innermost_frames(stacks.get(kill["pid"], "")),
            "collective": kill["collective"],
            "node": kill["node"],
        }
        for kill in kills
    ]


@pytest.mark.parametrize("pods", [1], indirect=True)
def test_one_node_the_rank_that_never_entered_the_all_reduce_is_named(pods: list[TorchrunPod]) -> None:
    hang = run(pods, "--hang-rank", "1")
    assert hang.findings is not None, pods[0].tail()
    assert [(odd.worker.rank, odd.worker.pod) for odd in hang.findings.behind] == [(1, "llm-worker-0")]
    assert (
        "rank 1 (pod llm-worker-0, node gpu-node-0) never entered all_reduce #2 of default_pg;"
        " 1 rank waits in it." in hang.message()
    )
    assert hang.findings.mismatched == hang.findings.outside == ()


@pytest.mark.parametrize("pods", [2], indirect=True)
def test_two_nodes_the_rank_that_never_entered_the_all_reduce_is_named(pods: list[TorchrunPod]) -> None:
    hang = run(pods, "--hang-rank", "3")
    assert hang.findings is not None
    assert [(odd.worker.rank, odd.worker.pod) for odd in hang.findings.behind] == [(3, "llm-worker-1")]
    assert (
        "rank 3 (pod llm-worker-1, node gpu-node-1) never entered all_reduce #2 of default_pg;"
        " 3 ranks wait in it." in hang.message()
    )


@pytest.mark.parametrize("pods", [1], indirect=True)
def test_a_rank_hung_in_data_loading_before_any_collective_is_outside_any_collective(
    pods: list[TorchrunPod],
) -> None:
    hang = run(pods, "--hang-rank", "1", "--hang-how", "data", "--hang-step", "0")
    assert hang.findings is not None
    assert [odd.worker.rank for odd in hang.findings.outside] == [1]
    assert "rank 1 (pod llm-worker-0, node gpu-node-0) is outside any collective." in hang.message()


@pytest.mark.parametrize("pods", [1], indirect=True)
def test_a_rank_in_a_different_collective_is_a_mismatch(pods: list[TorchrunPod]) -> None:
    hang = run(pods, "--hang-rank", "1", "--hang-how", "mismatch")
    assert hang.findings is not None, pods[0].tail()
    assert [odd.worker.rank for odd in hang.findings.mismatched] == [1], hang.message()
    assert (
        "Mismatch: rank 1 (pod llm-worker-0, node gpu-node-0) is in broadcast #2 of default_pg"
        in hang.message()
    )


@pytest.mark.parametrize("pods", [1], indirect=True)
def test_with_the_flight_recorder_off_the_frames_tell_it(pods: list[TorchrunPod]) -> None:
    """The trainer's own TORCH_FR_BUFFER_SIZE=0 wins over the operator's."""
    hang = run(pods, "--hang-rank", "1", env={"TORCH_FR_BUFFER_SIZE": "0"})
    assert hang.findings is None
    assert all(kill["collective"] is None for kill in pods[0].kills())
    message = hang.message()
    assert "No majority: the workers stopped in 2 different places." in message, "two workers: as before"
    assert "collective" not in message
    places = {frames[-1] for (_, frames) in hang.incident.places}
    assert any("in all_reduce" in place for place in places) and any(
        "in main" in p or "wait" in p for p in places
    )
