"""Edges of the timer server's rules that the mutation report (docs/testing.md) found unchecked."""

from __future__ import annotations

import dataclasses
import logging
import signal

import pytest

from expiry.wire import Request, encode
from expiry_sidecar.server import UNKILLABLE_AFTER, KillOrder, KillReport, Listener, signal_name
from expiry_sidecar.state import SavedTimer
from expiry_sidecar.timers import TimerBook
from tests.sidecar.test_core import World, line


def world() -> World:
    made = World()
    made.alive = {10: 1}
    return made


def test_a_late_request_from_an_earlier_holder_of_the_pid_never_arms_on_the_current_one() -> None:
    here = world()
    server = here.server()
    server.receive(line(10, "current", here.wall(100), starttime=1))
    server.receive(line(10, "stale", here.wall(1), starttime=0))  # its writer held pid 10 before
    here.now += 2
    server.expire_due()
    assert here.signals == []
    assert server.stats.stale == 1
    assert [t.scope_id for t in server.book] == ["current"], "the current holder keeps its timer"
    here.now += 100
    server.expire_due()
    assert [pid for pid, _ in here.signals] == [10], "and is killed at its own deadline"


@pytest.mark.parametrize("softer", [signal.SIGINT, signal.SIGTERM])
def test_a_softer_signal_without_escalation_is_never_reported_as_unkillable(softer: int) -> None:
    here = world()
    server = here.server(kill_signal=softer, escalate_after=0)
    server.receive(line(10, "a", here.wall(1)))
    here.now += 1
    server.expire_due()
    here.now += UNKILLABLE_AFTER + 1  # the worker heeds SIGTERM slowly, or handles it and lives on
    server.expire_due()
    assert here.signals == [(10, softer)]
    assert server.stats.unkillable == 0


def test_rearming_a_scope_at_the_same_deadline_keeps_only_the_latest_request() -> None:
    book = TimerBook()
    book.arm(1, "s", 5.0, signal.SIGKILL)
    book.arm(1, "s", 5.0, 0)  # the same deadline, now watch-only: a Timer equal in value to the first
    assert [(t.scope_id, t.signal) for t in book.pop_due(6.0)] == [("s", 0)]
    assert len(book) == 0


def test_release_returns_the_timer_it_disarmed_if_one_was_armed() -> None:
    book = TimerBook()
    armed = book.arm(1, "s", 5.0, signal.SIGKILL)
    assert book.release(1, "s") is armed
    assert book.release(1, "s") is None
    assert book.release(2, "never") is None


class Reports(Listener):
    def __init__(self, world: World) -> None:
        self.world = world
        self.reports: list[KillReport] = []
        self.before: list[tuple[int, str, int]] = []
        """(pid, scope, signals sent so far) at each before_kill."""

    def before_kill(self, order: KillOrder) -> None:
        self.before.append((order.worker.pid, order.scope_id, len(self.world.signals)))

    def after_kill(self, report: KillReport) -> None:
        self.reports.append(report)


def test_a_kill_reports_how_late_it_came_after_the_deadline() -> None:
    here = world()
    here.now = 1.0  # a monotonic clock that started a second ago: lateness is not deadline-sized
    reports = Reports(here)
    server = here.server(listeners=[reports])
    server.receive(line(10, "a", here.wall(1)))
    here.now += 1 + 3.25  # the loop woke 3.25 s late
    server.expire_due()
    assert reports.before == [(10, "a", 0)], "listeners hear of the kill before the signal goes"
    [report] = reports.reports
    assert report.lateness == pytest.approx(3.25)
    assert (report.scope_id, report.signal, report.escalation) == ("a", 9, False)
    assert server.stats.kills == {"SIGKILL": 1}


def test_a_request_already_past_its_deadline_on_arrival_fires_at_once() -> None:
    here = world()
    server = here.server()
    server.receive(line(10, "late", here.wall(-5)))  # written 5 s before a busy sidecar read it
    assert server.seconds_to_next_deadline() == 0.0
    server.expire_due()
    assert here.signals == [(10, 9)]


def test_restore_takes_over_only_the_timers_of_the_same_process() -> None:
    here = world()
    here.alive = {10: 50}
    server = here.server()
    server.restore(
        [
            SavedTimer(10, 99, "a later holder of pid 10", here.now + 1, 9),
            SavedTimer(10, 50, "mine", here.now + 60, 9),
            SavedTimer(10, 20, "an earlier holder", here.now + 1, 9),
        ]
    )
    assert [t.scope_id for t in server.book] == ["mine"]
    assert (server.stats.restored, server.stats.restore_dropped) == (1, 2)
    here.now += 2
    server.expire_due()
    assert here.signals == []


def test_the_dump_signal_a_worker_announced_is_kept_until_it_announces_another() -> None:
    here = world()
    server = here.server()
    server.receive(encode(Request(10, "a", here.wall(60), 9, dump_signal=signal.SIGUSR1)))
    server.receive(encode(Request(10, "b", here.wall(60), 9)))
    assert server.workers[10].dump_signal == signal.SIGUSR1
    server.receive(encode(Request(10, "c", here.wall(60), 9, dump_signal=signal.SIGUSR2)))
    assert server.workers[10].dump_signal == signal.SIGUSR2


def test_a_fresh_server_has_counted_nothing() -> None:
    for name, value in dataclasses.asdict(world().server().stats).items():
        assert not value, f"{name} starts at {value!r}"


def test_the_next_deadline_is_the_earliest_live_one() -> None:
    book = TimerBook()
    for scope, deadline in (("a", 5.0), ("b", 1.0), ("c", 3.0), ("d", 4.0)):
        book.arm(1, scope, deadline, signal.SIGKILL)
    assert book.next_deadline() == 1.0
    book.release(1, "b")
    assert book.next_deadline() == 3.0, "a released timer's deadline is no deadline"


def test_the_heap_stays_within_twice_the_live_timers_plus_1024_and_compacts_only_past_that() -> None:
    """Memory bounded by the live timers; compaction (a pass over the heap) amortised over >= 1024 arms."""
    book = TimerBook()
    for i in range(600):  # 2 x 600 shares a bit with 1024: "+ 1024" is not "| 1024" here
        book.arm(1, f"live{i}", 1e9, signal.SIGKILL)
    compactions = 0
    for i in range(4000):
        before = len(book._heap)
        book.arm(2, f"s{i}", float(i), signal.SIGKILL)
        after, limit = len(book._heap), 2 * len(book) + 1024
        if after <= before:
            compactions += 1
            assert before + 1 > limit, f"compacted at {before + 1} entries, under the limit {limit}"
            assert after == len(book)
        assert after <= limit
        book.release(2, f"s{i}")
    assert compactions >= 2


def test_an_expiration_time_of_zero_is_an_acquire_long_past_not_a_release() -> None:
    here = world()
    server = here.server()
    server.receive(line(10, "epoch", 0.0))  # only a negative time releases
    server.expire_due()
    assert here.signals == [(10, 9)]
    assert (server.stats.acquires, server.stats.releases) == (1, 0)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_every_positive_signal_is_sent(sig: int) -> None:
    here = world()
    server = here.server(escalate_after=0)
    server.receive(line(10, "a", here.wall(1), sig=sig))
    here.now += 1
    server.expire_due()
    assert here.signals == [(10, sig)]


@pytest.mark.parametrize("softer", [signal.SIGINT, signal.SIGTERM])
def test_an_escalation_under_a_second_still_escalates(softer: int) -> None:
    here = world()
    server = here.server(kill_signal=softer, escalate_after=0.5)
    server.receive(line(10, "a", here.wall(1)))
    here.now += 1
    server.expire_due()
    here.now += 0.75  # the loop woke after the escalation was due
    server.expire_due()
    assert here.signals == [(10, softer), (10, signal.SIGKILL)]


def test_by_default_a_softer_signal_is_escalated_after_10_seconds() -> None:
    here = world()
    server = here.server(kill_signal=signal.SIGTERM)
    server.receive(line(10, "a", here.wall(1)))
    here.now += 1
    server.expire_due()
    here.now += 9.9
    server.expire_due()
    assert here.signals == [(10, signal.SIGTERM)]
    here.now += 0.1
    server.expire_due()
    assert here.signals == [(10, signal.SIGTERM), (10, signal.SIGKILL)]


def test_restoring_several_timers_of_one_process_attaches_to_it_once() -> None:
    here = world()
    here.alive = {10: 123_456}  # a start time past the small ints Python caches: compared by value
    attached: list[int] = []
    attach = here.attach
    here.attach = lambda pid, starttime: attached.append(pid) or attach(pid, starttime)  # type: ignore[method-assign]
    server = here.server()
    server.restore([SavedTimer(10, int("123456"), scope, here.now + 60, 9) for scope in ("a", "b", "c")])
    assert attached == [10]
    assert server.stats.restored == 3


def test_malformed_lines_are_logged_once_per_chunk_with_an_example_and_valid_ones_not_at_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    here = world()
    server = here.server()
    caplog.set_level(logging.INFO, logger="expiry.sidecar")
    server.receive(line(10, "a", here.wall(60)))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    bad = b"x" * 300
    server.receive(bad + b"\n" + b"{}\n" + line(10, "b", here.wall(60)))
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith("skipped 2 malformed line(s)")
    assert warning.__dict__["malformed"] == 2
    assert warning.__dict__["example"] == "x" * 120


def test_restore_says_what_it_took_over_and_nothing_when_there_was_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    here = world()
    caplog.set_level(logging.INFO, logger="expiry.sidecar")
    here.server().restore([])
    assert not caplog.records
    here.server().restore([SavedTimer(10, 1, "a", here.now + 60, 9)])
    [record] = caplog.records
    assert (record.__dict__["restored"], record.__dict__["dropped"]) == (1, 0)


def test_workers_are_unwatched_when_they_exit_and_when_the_server_closes() -> None:
    here = world()
    here.alive = {10: 1, 11: 2}
    unwatched: list[int] = []
    server = here.server(on_unwatch=lambda worker: unwatched.append(worker.pid))
    server.receive(line(10, "a", here.wall(60)) + line(11, "b", here.wall(60)))
    server.worker_exited(99)  # never heard of: nothing to do
    server.worker_exited(10)
    assert unwatched == [10]
    server.close()
    assert unwatched == [10, 11]
    assert server.workers == {}


def test_a_chunk_counts_each_malformed_and_each_oversized_line_once() -> None:
    here = world()
    server = here.server()
    huge = b"a" * 20_000 + b"\n"  # longer than any request may be
    server.receive(huge + b"not json\n" + huge + b"{}\n" + line(10, "a", here.wall(60)))
    assert server.stats.malformed == 4
    assert len(server.book) == 1


def test_requests_repeating_a_known_worker_s_start_time_keep_its_timers() -> None:
    here = world()
    here.alive = {10: 123_456}
    server = here.server()
    server.receive(line(10, "a", here.wall(60), starttime=123_456))
    server.receive(line(10, "b", here.wall(60), starttime=123_456))  # the same value, another int object
    assert sorted(t.scope_id for t in server.book) == ["a", "b"]


def test_a_negative_signal_expires_without_killing() -> None:
    here = world()
    server = here.server()
    server.receive(line(10, "watch", here.wall(1), sig=-9))
    here.now += 2
    server.expire_due()
    assert here.signals == []
    assert server.stats.expirations == 1


def test_the_state_journal_is_told_each_worker_s_start_time_and_minus_1_for_none() -> None:
    here = world()
    here.alive = {10: 123_456}
    server = here.server()
    server.receive(line(10, "a", here.wall(60)))
    assert server.starttime_of(10) == 123_456
    assert server.starttime_of(11) == -1


def test_signals_are_named_even_without_a_name() -> None:
    assert signal_name(signal.SIGKILL) == "SIGKILL"
    assert signal_name(33) == "SIG33"  # real-time range: no name in the signal module


def test_a_kill_in_an_empty_scope_is_no_escalation() -> None:
    here = world()
    reports = Reports(here)
    server = here.server(listeners=[reports])
    server.receive(line(10, "", here.wall(1)))
    here.now += 1
    server.expire_due()
    assert [r.escalation for r in reports.reports] == [False]
    assert server.stats.escalations == 0
