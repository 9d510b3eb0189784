"""The kill Event contract, end to end in code: what the sidecar writes is what the operator reads.

The sidecar builds its burst Event with ``expiry_sidecar.events.burst_event``; the operator's hang
report parses Events with ``expiry_operator.kill_events.parse_kill_event``. Each side has its own
tests; this one feeds the first into the second, so a renamed key or reason on either side fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from expiry_operator.kill_events import Collective, Kill, parse_kill_event
from expiry_sidecar.apiwriter import PodRef
from expiry_sidecar.events import burst_event
from expiry_sidecar.kills import Outcome
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import KillReport

FRAMES = ("train.py:88 in step", "distributed_c10d.py:2050 in all_reduce")


WAITING = {"group": "default_pg", "seq": 1042, "op": "all_reduce", "state": "scheduled"}


def report(
    pid: int,
    scope: str,
    outcome: Outcome,
    frames: tuple[str, ...] = FRAMES,
    collective: dict[str, object] | None = None,
) -> KillReport:
    return KillReport(
        Worker(pid, 1, None, "python train.py"),
        scope,
        9,
        outcome,
        0.002,
        rule="adaptive: 5 x 3.2 s longest of 1,000 blocks; requested 1800 s",
        deadline=1_790_000_000.25 + pid,
        frames=frames,
        collective=collective,
    )


def test_the_operator_reads_every_worker_the_sidecar_writes() -> None:
    pod = PodRef("llama-workers-0-7", "ml", "uid-7")
    burst = [
        (report(41, "train.py:88", Outcome.DELIVERED, collective=WAITING), (4, 0)),
        (report(42, "train.py:88", Outcome.DELIVERED, ("data.py:41 in next_batch",)), (5, 1)),
        (report(43, "train.py:90", Outcome.DELIVERED, ()), (None, None)),
    ]
    event = burst_event(pod, burst, datetime(2026, 11, 29, 17, 20, 1, tzinfo=UTC), "gpu-node-3")

    parsed = parse_kill_event(event)

    assert parsed is not None
    assert (parsed.namespace, parsed.pod, parsed.pod_uid, parsed.reason) == (
        "ml",
        pod.name,
        "uid-7",
        "WorkerKilled",
    )
    assert parsed.truncated == 0 and parsed.workers == 3
    assert parsed.kills == (
        Kill(
            4,
            "train.py:88",
            1_790_000_041.25,
            FRAMES,
            Collective("default_pg", 1042, "all_reduce", "scheduled"),
            "gpu-node-3",
        ),
        Kill(5, "train.py:88", 1_790_000_042.25, ("data.py:41 in next_batch",), node="gpu-node-3"),
        Kill(None, "train.py:90", 1_790_000_043.25, (), node="gpu-node-3"),
    )
    assert (
        parsed.time is not None
        and abs(parsed.time - datetime(2026, 11, 29, 17, 20, 1, tzinfo=UTC).timestamp()) < 1
    )


def test_an_observed_burst_is_a_kill_event_too() -> None:
    event = burst_event(
        PodRef("p", "ml"), [(report(7, "train.py:88", Outcome.OBSERVED), (0, 0))], datetime.now(UTC)
    )

    parsed = parse_kill_event(event)

    assert parsed is not None and parsed.reason == "WorkerHangObserved"
    assert [kill.rank for kill in parsed.kills] == [0]
