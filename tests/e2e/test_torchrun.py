"""Real torchrun in an injected pod: a rank hangs before a collective, the other waits in it.

Both workers are killed by the sidecar at their deadline, torchrun's agent starts the next
generation, which resumes from the checkpoint on the pod's tmpfs and completes. Two workers per pod
and few steps: most of each test's time is torch's import in every worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.torchrun_pod import CHECKPOINTS, TRAINER, TorchrunPod
from tests.support.pod import can_make_pods

pytestmark = pytest.mark.torch

DEADLINE = "3"
"""Seconds a step may take: far above a step's time on a loaded machine, short for the test."""
COMPETING = "another process reads the timer FIFO"


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[TorchrunPod]:
    reason = can_make_pods()
    if reason:
        pytest.skip(reason)
    made = TorchrunPod(tmp_path, "llm-worker-0")
    yield made
    made.close()


def train(pod: TorchrunPod, *trainer_args: str, launcher: tuple[str, ...] = ()) -> int:
    run = pod.torchrun(
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "3",
        "--monitor-interval",
        "1",
        TRAINER,
        "--hang-rank",
        "1",
        "--deadline",
        DEADLINE,
        "--steps",
        "3",
        "--checkpoint-dir",
        CHECKPOINTS,
        *trainer_args,
        launcher=launcher,
    )
    return pod.finish(run)


def assert_hung_and_recovered(pod: TorchrunPod) -> None:
    out = pod.output()
    assert "[rank 1 gen 0] hanging before the collective of step 1" in out
    assert "[rank 0 gen 0] step 0 done" in out and "[rank 1 gen 0] step 0 done" in out
    pod.assert_resumed_and_finished()


@pytest.mark.parametrize("client", ["expiry", "torch"])
def test_both_workers_are_killed_on_time_and_torchrun_resumes_from_the_checkpoint(
    pod: TorchrunPod, client: str
) -> None:
    assert train(pod, "--client", client) == 0, pod.tail()
    assert_hung_and_recovered(pod)
    pod.assert_killed_on_time(pod.worker_pids(generation=0))


def test_torchrun_s_own_file_timer_set_in_a_launch_script_is_displaced_and_named(pod: TorchrunPod) -> None:
    """TORCHELASTIC_ENABLE_FILE_TIMER=1 where the operator cannot see it: the run still finishes,
    the sidecar alone kills, and the agent running torch's FileTimerServer is named."""
    launcher = ("sh", "-c", 'TORCHELASTIC_ENABLE_FILE_TIMER=1 exec "$@"', "launch.sh")
    assert train(pod, "--client", "torch", launcher=launcher) == 0, pod.tail()
    assert_hung_and_recovered(pod)
    pod.assert_killed_on_time(pod.worker_pids(generation=0))
    replaced = [line for line in pod.sidecar_lines() if "replaced by another FIFO" in line["message"]]
    assert len(replaced) >= 2, "torchrun's agent makes its FIFO at the start of every generation"
    reports = [line for line in pod.sidecar_lines() if line["message"].startswith(COMPETING)]
    assert reports, pod.tail()
    assert all("torch.distributed.run" in report["cmdline"] for report in reports), reports
