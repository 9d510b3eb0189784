"""The sidecar guarding real worker processes in a real PID namespace, observed through /metrics."""

from __future__ import annotations

import math
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from expiry_sidecar import __version__
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, raw_write, request, wait_for

StartSidecar = Callable[..., Sidecar]


def test_blocks_that_finish_in_time_kill_nothing(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    worker = Worker(pod, server.fifo, "blocks", "--count", "50", "--after", "30")
    worker.expect("done 50")
    assert worker.wait() == 0
    metrics = server.wait_metric("expiry_requests_total", 50, kind="release")
    assert metrics("expiry_requests_total", kind="acquire") == 50
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    assert metrics("expiry_timers_active") == 0


def test_the_series_a_scrape_finds_from_start_to_a_kill(pod: Pod, sidecar: StartSidecar) -> None:
    """The names of the upgrade notes (CHANGELOG 0.2): build info says which component, the next
    deadline is there when nothing is armed (+Inf), no _created series, per-scope expirations named
    without their label."""
    server = sidecar("--scope-metrics")
    idle = server.metrics()
    assert idle("expiry_build_info", version=__version__, component="sidecar") == 1
    assert idle("expiry_next_deadline_seconds") == math.inf
    worker = Worker(pod, server.fifo, "hang", "--after", "3")
    worker.expect("armed")
    assert 0 < server.wait_metric("expiry_timers_active", 1)("expiry_next_deadline_seconds") <= 3
    assert worker.wait() == -signal.SIGKILL
    killed = server.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
    (scope,) = [
        dict(labels)["scope"] for name, labels in killed.samples if name == "expiry_timer_expirations_total"
    ]
    assert scope.endswith(tuple(f"worker.py#{n}" for n in range(1, 1000))), scope
    assert killed("expiry_timer_expirations_total", scope=scope) == 1
    assert killed("expiry_next_deadline_seconds") == math.inf
    assert not [name for name in killed.names() if name.endswith("_created") or "by_scope" in name]


def test_a_stuck_block_is_killed_at_its_deadline(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    started = time.monotonic()  # before the worker armed: its deadline is at least 0.5 s after this
    worker = Worker(pod, server.fifo, "hang", "--after", "0.5")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5, "killed before its deadline"
    metrics = server.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
    assert metrics("expiry_expirations_total") == 1
    assert metrics("expiry_kill_latency_seconds_count") == 1
    assert metrics("expiry_kill_latency_seconds_sum") < 1.0, "the kill came long after the deadline"
    assert metrics("expiry_timers_active") == 0
    kill = next(entry for entry in server.logs() if entry["message"] == "killed a stuck worker")
    assert kill["pid"] == worker.pid
    assert kill["signal"] == "SIGKILL"
    assert "worker.py hang" in kill["cmdline"]


def test_an_inner_release_does_not_disarm_the_outer_block(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    worker = Worker(pod, server.fifo, "nested", "--after", "0.5")
    worker.expect("inner")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    assert server.wait_metric("expiry_kills_total", 1, signal="SIGKILL")


def test_each_level_of_a_recursive_decorated_call_has_its_own_timer(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    worker = Worker(pod, server.fifo, "recurse", "--after", "60", "--depth", "3")
    worker.expect("armed")
    metrics = server.wait_metric("expiry_timers_active", 4)
    assert metrics("expiry_requests_total", kind="acquire") == 4
    worker.kill()
    assert server.wait_metric("expiry_worker_exits_total", 1)("expiry_timers_active") == 0


def test_many_clients_at_once_are_counted_exactly(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    workers = [Worker(pod, server.fifo, "blocks", "--count", "500", "--after", "60") for _ in range(8)]
    for worker in workers:
        worker.expect("done 500")
        assert worker.wait() == 0
    metrics = server.wait_metric("expiry_requests_total", 4000, kind="release")
    assert metrics("expiry_requests_total", kind="acquire") == 4000
    assert metrics("expiry_malformed_requests_total") == 0
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0


def test_a_worker_that_exits_holding_a_timer_clears_it_and_is_not_killed(
    pod: Pod, sidecar: StartSidecar
) -> None:
    server = sidecar()
    worker = Worker(pod, server.fifo, "exit", "--after", "0.5")
    worker.expect("armed")
    server.wait_metric("expiry_timers_active", 1)
    worker.tell("exit")
    assert worker.wait() == 0
    metrics = server.wait_metric("expiry_worker_exits_total", 1)
    assert metrics("expiry_timers_active") == 0
    time.sleep(0.7)  # past the deadline the worker no longer holds
    metrics = server.metrics()
    assert metrics("expiry_expirations_total") == 0
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    assert (
        sum(value for (name, _), value in metrics.samples.items() if name == "expiry_kill_failures_total")
        == 0
    )


def test_one_expired_timer_kills_once_and_clears_the_others(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    worker = Worker(pod, server.fifo, "two", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    metrics = server.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
    assert metrics("expiry_expirations_total") == 1
    assert metrics("expiry_timers_active") == 0
    assert metrics("expiry_worker_exits_total") == 0


def test_malformed_lines_around_a_valid_request_in_one_write_do_not_hide_it(
    pod: Pod, sidecar: StartSidecar
) -> None:
    server = sidecar()
    victim = Worker(pod, server.fifo, "hang", "--after", "3600")
    victim.expect("armed")
    garbage = b'not json\n{"version": 1, "pid": -1, "scope_id": "x", "expiration_time": 1, "signal": 9}\n'
    deadline = time.time() + 0.3
    raw_write(server.fifo, garbage + request(victim.pid, "raw", deadline) + b"\x00\xff{\n[1, 2]\n")
    assert victim.wait() == -signal.SIGKILL
    assert time.time() >= deadline, "killed before the deadline the test itself set"
    metrics = server.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
    assert metrics("expiry_malformed_requests_total") == 4
    assert any(entry["message"].startswith("skipped 4 malformed") for entry in server.logs())


def test_release_and_release_of_an_unknown_scope(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    victim = Worker(pod, server.fifo, "hang", "--after", "3600")
    victim.expect("armed")
    raw_write(server.fifo, request(victim.pid, "raw", time.time() + 0.5))
    server.wait_metric("expiry_timers_active", 2)
    raw_write(server.fifo, request(victim.pid, "raw", -1, 0) + request(victim.pid, "never-armed", -1, 0))
    metrics = server.wait_metric("expiry_timers_active", 1)
    assert metrics("expiry_requests_total", kind="release") == 2
    time.sleep(0.7)
    assert victim.alive(), "a released timer fired"
    assert server.metrics()("expiry_expirations_total") == 0


def test_the_sidecar_never_signals_itself_or_pid_1(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    sidecar_pid = int(
        wait_for(lambda: next((e.get("pid") for e in server.logs() if e["message"] == "serving"), None))
    )
    raw_write(
        server.fifo, request(sidecar_pid, "self", time.time() + 0.2) + request(1, "init", time.time() + 0.2)
    )
    metrics = server.wait_metric("expiry_kill_failures_total", 2, reason="protected")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    assert server.process.poll() is None
    assert server.ready()


def test_a_pid_reused_by_an_innocent_process_is_never_signalled(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    worker = Worker(pod, server.fifo, "exit", "--after", "0.5")
    worker.expect("armed")
    server.wait_metric("expiry_timers_active", 1)
    worker.tell("exit")
    assert worker.wait() == 0
    server.wait_metric("expiry_worker_exits_total", 1)
    innocent = pod.reuse_pid(worker.pid)
    time.sleep(0.8)  # past the dead worker's deadline
    assert innocent.poll() is None, "the innocent process holding the reused pid was killed"
    assert server.metrics()("expiry_kills_total", signal="SIGKILL") == 0


def test_a_request_read_after_its_pid_was_reused_arms_nothing(pod: Pod, sidecar: StartSidecar) -> None:
    """The sidecar is paused while the worker writes, dies and an innocent takes its pid."""
    server = sidecar()
    server.signal(signal.SIGSTOP)
    worker = Worker(pod, server.fifo, "exit", "--after", "0.3")
    worker.expect("armed")
    worker.tell("exit")
    assert worker.wait() == 0
    innocent = pod.reuse_pid(worker.pid)
    server.signal(signal.SIGCONT)
    metrics = server.wait_metric("expiry_stale_requests_total", 1)
    assert metrics("expiry_timers_active") == 0
    time.sleep(0.5)
    assert innocent.poll() is None


def test_a_softer_signal_is_escalated_to_sigkill_when_ignored(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar("--kill-signal", "SIGTERM", "--escalate-after", "0.3")
    worker = Worker(pod, server.fifo, "hang", "--after", "0.2", "--ignore-term")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    metrics = server.wait_metric("expiry_escalations_total", 1)
    assert metrics("expiry_kills_total", signal="SIGTERM") == 1
    assert metrics("expiry_kills_total", signal="SIGKILL") == 1
    # The log says what was sent (not what the client asked for), and no internal scope id.
    (expired,) = [e for e in server.logs() if e["message"] == "timer expired"]
    assert (expired["signal"], expired["client_signal"]) == ("SIGTERM", signal.SIGKILL)
    kills = [e for e in server.logs() if e["message"] == "killed a stuck worker"]
    assert [(e["signal"], e["escalation"]) for e in kills] == [("SIGTERM", False), ("SIGKILL", True)]
    assert kills[0]["scope"].startswith("/") and "worker.py#" in kills[0]["scope"] and kills[1]["scope"] == ""


def test_a_worker_that_heeds_the_softer_signal_is_not_escalated(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar("--kill-signal", "SIGTERM", "--escalate-after", "0.3")
    worker = Worker(pod, server.fifo, "hang", "--after", "0.2")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGTERM
    server.wait_metric("expiry_kills_total", 1, signal="SIGTERM")
    time.sleep(0.5)
    metrics = server.metrics()
    assert metrics("expiry_escalations_total") == 0
    assert metrics("expiry_timers_active") == 0


def test_a_refused_kill_is_loud_and_names_what_is_missing(pod: Pod, sidecar: StartSidecar) -> None:
    """The worker runs as uid 4242, the sidecar as uid 1000 without CAP_KILL: EPERM."""
    shared = Path(tempfile.mkdtemp(prefix="expiry-eperm-"))  # pytest's tmp_path is private to root
    shared.chmod(0o777)
    server = sidecar(fifo=shared / "timer.fifo", user=1000)
    worker = Worker(pod, server.fifo, "hang", "--after", "0.2", user=4242)
    worker.expect("armed")
    metrics = server.wait_metric("expiry_kill_failures_total", 1, reason="permission")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    assert worker.alive()
    refusal = next(entry for entry in server.logs() if entry.get("reason") == "permission")
    assert "runs as uid 4242" in refusal["message"]
    assert "as uid 1000 without CAP_KILL" in refusal["message"]


def test_sigterm_stops_the_sidecar_cleanly(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar()
    assert server.stop() == 0
    assert any(entry["message"] == "stopped" for entry in server.logs())


@pytest.mark.torch
def test_torch_clients_are_served_unchanged(pod: Pod, sidecar: StartSidecar) -> None:
    pytest.importorskip("torch")
    server = sidecar()
    worker = Worker(pod, server.fifo, "torch", "--after", "0.3")
    worker.expect("armed")
    assert worker.wait() == -signal.SIGKILL
    assert server.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
