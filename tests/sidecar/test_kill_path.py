"""The kill path off the loop: workers expiring together are dumped and signalled in parallel, a
deadline due during a dump is kept, and observe mode reports everything and kills nothing. Real
workers in a pod, a real sidecar, its metrics scraped over HTTP and its log read."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from expiry.names import DUMP_DIR_ENV
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, hang_together, wait_for

StartSidecar = Callable[..., Sidecar]
WORKERS = 8
DUMP_WAIT = 1.0
"""The sidecar's bound on a faulthandler dump that never arrives (stackdumps.WAIT)."""


def kill_logs(server: Sidecar) -> dict[int, dict[str, Any]]:
    return {e["pid"]: e for e in server.logs() if e["message"] == "killed a stuck worker"}


def ready_to_hang(pod: Pod, server: Sidecar, dump_dir: str) -> Worker:
    return Worker(pod, server.fifo, "hang", "--at-from-stdin", env={DUMP_DIR_ENV: dump_dir})


def test_workers_expiring_together_are_dumped_and_killed_in_parallel(pod: Pod, sidecar: StartSidecar) -> None:
    """Each announced a dump signal but writes its dump elsewhere, so each kill waits the whole dump
    bound (1 s): in parallel all are signalled about 1 s late, one after another it would be 8 s."""
    server = sidecar("--stack-dumps", str(pod.workdir / "dumps"))
    workers = [ready_to_hang(pod, server, str(pod.workdir / "elsewhere")) for _ in range(WORKERS)]
    hang_together(workers)
    for worker in workers:
        assert worker.wait() == -signal.SIGKILL
    metrics = server.wait_metric("expiry_stack_dumps_total", WORKERS, result="failed")
    assert metrics("expiry_kills_total", signal="SIGKILL") == WORKERS
    late = [kill_logs(server)[w.pid]["late_seconds"] for w in workers]
    assert min(late) >= DUMP_WAIT * 0.9, f"the kills did not wait for the dumps: {late}"
    assert max(late) < 3 * DUMP_WAIT, f"the dumps ran one after another: {late}"


def test_workers_expiring_together_all_dump_their_stacks(pod: Pod, sidecar: StartSidecar) -> None:
    dumps = pod.workdir / "dumps"
    server = sidecar("--stack-dumps", str(dumps))
    workers = [ready_to_hang(pod, server, str(dumps)) for _ in range(WORKERS)]
    hang_together(workers)
    for worker in workers:
        assert worker.wait() == -signal.SIGKILL
    metrics = server.wait_metric("expiry_stack_dumps_total", WORKERS, result="ok")
    assert metrics("expiry_stack_dumps_total", result="failed") == 0
    stacks = {e["pid"]: e["stack"] for e in server.logs() if e["message"] == "stack of the stuck worker"}
    assert sorted(stacks) == sorted(w.pid for w in workers)
    assert all("in hang" in stack for stack in stacks.values()), "a dump was cut short"


def test_a_deadline_due_during_a_dump_is_not_delayed_by_it(pod: Pod, sidecar: StartSidecar) -> None:
    """The first worker's dump never arrives (the sidecar waits 1 s for it); the second's deadline
    passes 0.3 s into that wait and its kill (with its own quick dump) is on time."""
    dumps = pod.workdir / "dumps"
    server = sidecar("--stack-dumps", str(dumps))
    slow = ready_to_hang(pod, server, str(pod.workdir / "elsewhere"))
    quick = ready_to_hang(pod, server, str(dumps))
    for worker in (slow, quick):
        worker.expect("ready")
    first_deadline = time.time() + 1.0
    slow.tell(repr(first_deadline))
    quick.tell(repr(first_deadline + 0.3))
    for worker in (slow, quick):
        worker.expect("armed")
    assert time.time() < first_deadline, "arming took longer than the deadline allowed"
    assert quick.wait() == -signal.SIGKILL
    assert slow.wait() == -signal.SIGKILL
    server.wait_metric("expiry_kills_total", 2, signal="SIGKILL")
    logs = kill_logs(server)
    assert logs[slow.pid]["late_seconds"] >= DUMP_WAIT * 0.9
    assert logs[quick.pid]["late_seconds"] < 0.4, "the second kill waited for the first one's dump"


def test_observe_mode_kills_nothing_and_reports_everything(pod: Pod, sidecar: StartSidecar) -> None:
    dumps = pod.workdir / "dumps"
    server = sidecar("--mode", "observe", "--stack-dumps", str(dumps))
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3", env={DUMP_DIR_ENV: str(dumps)})
    worker.expect("armed")
    metrics = server.wait_metric("expiry_observed_expirations_total", 1)
    assert metrics("expiry_expirations_total") == 1
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    assert metrics("expiry_stack_dumps_total", result="ok") == 1
    assert sum(v for (name, _), v in metrics.samples.items() if name == "expiry_kill_failures_total") == 0
    time.sleep(0.3)  # a kill would have landed by now
    assert worker.alive(), "observe mode killed the worker"
    (observed,) = [e for e in server.logs() if e["message"].startswith("observed a stuck worker")]
    assert (observed["pid"], observed["outcome"], observed["signal"]) == (worker.pid, "observed", "SIGKILL")
    assert "killed a stuck worker" not in [e["message"] for e in server.logs()]
    worker.kill()
    worker.wait()


def test_a_worker_that_exits_while_its_kill_is_prepared_is_not_signalled(
    pod: Pod, sidecar: StartSidecar
) -> None:
    """Its dump never arrives; it exits during the wait: the signal goes to that very process (the
    pidfd), which is gone, and never to a process that took its pid meanwhile."""
    server = sidecar("--stack-dumps", str(pod.workdir / "dumps"))
    worker = Worker(pod, server.fifo, "hang", "--after", "0.3", env={DUMP_DIR_ENV: str(pod.workdir / "x")})
    worker.expect("armed")
    wait_for(lambda: any(e["message"] == "timer expired" for e in server.logs()), what="the expiry")
    worker.kill(signal.SIGTERM)
    assert worker.wait() == -signal.SIGTERM
    innocent = pod.reuse_pid(worker.pid)
    metrics = server.wait_metric("expiry_kill_failures_total", 1, reason="gone")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    assert innocent.poll() is None, "the innocent process that reused the pid was killed"


@pytest.mark.parametrize("mode", ["enforce", "observe"])
def test_the_mode_is_named_at_start(pod: Pod, sidecar: StartSidecar, mode: str) -> None:
    server = sidecar("--mode", mode)
    (serving,) = [e for e in server.logs() if e["message"] == "serving"]
    assert serving["mode"] == mode
