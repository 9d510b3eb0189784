"""The timer server's rules, driven without I/O: a settable clock, and workers that are records."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable

import pytest

from expiry.wire import Request, encode
from expiry_sidecar.kills import Outcome
from expiry_sidecar.lines import LineSplitter
from expiry_sidecar.metrics import ServerCollector
from expiry_sidecar.mode import Mode
from expiry_sidecar.processes import NotAttached, Worker
from expiry_sidecar.server import (
    SCOPE_LABELS_MAX,
    UNKILLABLE_AFTER,
    Clock,
    KillOrder,
    KillReport,
    Listener,
    TimerServer,
)
from expiry_sidecar.timers import TimerBook


class World:
    """Processes that exist, signals that were sent, and the time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.alive: dict[int, int] = {}  # pid -> start time
        self.signals: list[tuple[int, int]] = []
        self.outcome = Outcome.DELIVERED

    def attach(self, pid: int, starttime: int | None) -> Worker:
        if pid not in self.alive:
            raise NotAttached(pid, "gone")
        if starttime is not None and starttime != self.alive[pid]:
            raise NotAttached(pid, "identity")
        return Worker(pid, self.alive[pid], None)

    def send(self, worker: Worker, sig: int) -> Outcome:
        if self.outcome is Outcome.DELIVERED:
            self.signals.append((worker.pid, sig))
        return self.outcome

    def server(self, **options: object) -> TimerServer:
        clock = Clock(monotonic=lambda: self.now, wall=lambda: self.now + 5e8)
        return TimerServer(clock=clock, attach=self.attach, send=self.send, **options)  # type: ignore[arg-type]

    def wall(self, seconds_from_now: float) -> float:
        return self.now + 5e8 + seconds_from_now


def line(pid: int, scope: str, expiration_time: float, sig: int = 9, starttime: int | None = None) -> bytes:
    return encode(Request(pid, scope, expiration_time, sig, starttime))


@pytest.fixture
def world() -> World:
    made = World()
    made.alive = {10: 1, 11: 2, 12: 3}
    return made


def test_a_timer_fires_at_its_deadline_and_not_before(world: World) -> None:
    server = world.server()
    server.receive(line(10, "a", world.wall(2.0)))
    assert server.seconds_to_next_deadline() == pytest.approx(2.0)
    world.now += 1.999
    server.expire_due()
    assert world.signals == []
    world.now += 0.001
    server.expire_due()
    assert world.signals == [(10, 9)]
    assert len(server.book) == 0 and server.stats.expirations == 1


def test_deadlines_follow_the_monotonic_clock_once_received(world: World) -> None:
    wall_offset = 5e8
    server = TimerServer(
        clock=Clock(monotonic=lambda: world.now, wall=lambda: world.now + wall_offset),
        attach=world.attach,
        send=world.send,
    )
    server.receive(line(10, "a", world.now + wall_offset + 3))
    wall_offset += 3600  # the wall clock jumps an hour ahead
    world.now += 1
    server.expire_due()
    assert world.signals == []
    world.now += 2
    server.expire_due()
    assert world.signals == [(10, 9)]


def test_one_worker_is_killed_once_however_many_timers_expired(world: World) -> None:
    server = world.server()
    server.receive(
        line(10, "a", world.wall(1)) + line(10, "b", world.wall(1)) + line(10, "c", world.wall(100))
    )
    world.now += 2
    server.expire_due()
    assert world.signals == [(10, 9)]
    assert server.stats.expirations == 2
    assert len(server.book) == 0, "the worker's other timers outlived its kill"


def test_a_non_positive_signal_expires_without_killing(world: World) -> None:
    server = world.server()
    server.receive(line(10, "watch", world.wall(1), sig=0) + line(10, "guard", world.wall(50)))
    world.now += 2
    server.expire_due()
    assert world.signals == []
    assert server.stats.expirations == 1
    assert len(server.book) == 1, "expiring a watch-only timer cleared the worker's others"


def test_kill_signal_overrides_and_escalates_when_ignored(world: World) -> None:
    server = world.server(kill_signal=signal.SIGTERM, escalate_after=5.0)
    server.receive(line(10, "a", world.wall(1)))
    world.now += 1
    server.expire_due()
    world.now += 5
    server.expire_due()
    assert world.signals == [(10, signal.SIGTERM), (10, signal.SIGKILL)]
    assert server.stats.escalations == 1
    assert server.stats.expirations == 1


def test_an_exit_after_the_softer_signal_cancels_the_escalation(world: World) -> None:
    server = world.server(kill_signal=signal.SIGTERM, escalate_after=5.0)
    server.receive(line(10, "a", world.wall(1)))
    world.now += 1
    server.expire_due()
    server.worker_exited(10)
    world.now += 10
    server.expire_due()
    assert world.signals == [(10, signal.SIGTERM)]
    assert server.stats.worker_exits == 0, "the escalation timer is not a timer the worker held"


def test_a_worker_that_outlives_its_sigkill_is_reported_once(world: World) -> None:
    server = world.server()
    server.receive(line(10, "a", world.wall(1)) + line(11, "b", world.wall(1)))
    world.now += 1
    server.expire_due()
    server.worker_exited(11)  # 11 died as it should; 10 is stuck in the kernel
    world.now += UNKILLABLE_AFTER
    server.expire_due()
    world.now += 3600
    server.expire_due()
    assert server.stats.unkillable == 1
    assert world.signals == [(10, 9), (11, 9)], "no signal is sent again"
    assert server.stats.expirations == 2


def test_scopes_become_labels_only_on_request_and_only_so_many(world: World) -> None:
    quiet, counting = world.server(), world.server(scope_metrics=True)
    for server in (quiet, counting):
        server.receive(b"".join(line(10, f"s{i}", world.wall(1), sig=0) for i in range(SCOPE_LABELS_MAX + 5)))
    world.now += 2
    for server in (quiet, counting):
        server.expire_due()
    assert quiet.stats.expirations_by_scope == {}
    assert len(counting.stats.expirations_by_scope) == SCOPE_LABELS_MAX + 1
    assert counting.stats.expirations_by_scope["other"] == 5
    assert counting.stats.expirations == SCOPE_LABELS_MAX + 5


def test_release_and_release_of_an_unknown_scope(world: World) -> None:
    server = world.server()
    server.receive(line(10, "a", world.wall(1)) + line(10, "a", -1, 0) + line(10, "never", -1, 0))
    world.now += 2
    server.expire_due()
    assert world.signals == []
    assert (server.stats.acquires, server.stats.releases) == (1, 2)


def test_reacquiring_a_scope_moves_its_deadline(world: World) -> None:
    server = world.server()
    server.receive(line(10, "a", world.wall(1)) + line(10, "a", world.wall(10)))
    world.now += 5
    server.expire_due()
    assert world.signals == []
    assert len(server.book) == 1


def test_requests_from_gone_or_impostor_processes_arm_nothing(world: World) -> None:
    server = world.server()
    server.receive(line(99, "gone", world.wall(1)) + line(10, "impostor", world.wall(1), starttime=777))
    assert len(server.book) == 0
    assert server.stats.stale == 2


def test_a_new_process_on_a_known_pid_replaces_the_old_worker(world: World) -> None:
    server = world.server()
    server.receive(line(10, "old", world.wall(1), starttime=1))
    world.alive[10] = 50  # the old worker died unnoticed; the pid now belongs to another process
    server.receive(line(10, "new", world.wall(100), starttime=50))
    assert [t.scope_id for t in server.book] == ["new"]
    assert server.workers[10].starttime == 50


def test_a_worker_exit_disarms_its_timers(world: World) -> None:
    server = world.server()
    server.receive(line(10, "a", world.wall(1)) + line(11, "b", world.wall(1)))
    server.worker_exited(10)
    world.now += 2
    server.expire_due()
    assert world.signals == [(11, 9)]
    assert server.stats.worker_exits == 1


def test_refused_kills_are_counted_by_reason_and_clear_the_timers(world: World) -> None:
    server = world.server()
    world.outcome = Outcome.PERMISSION
    server.receive(line(10, "a", world.wall(1)) + line(10, "b", world.wall(1.5)))
    world.now += 2
    server.expire_due()
    assert server.stats.kill_failures == {"permission": 1}
    assert len(server.book) == 0, "a refused kill would be retried forever"


def test_malformed_lines_are_counted_and_their_neighbours_kept(world: World) -> None:
    server = world.server()
    good = line(10, "a", world.wall(1))
    server.receive(b"junk\n" + good[:10])
    server.receive(good[10:] + b'{"version":1}\n' + line(11, "b", world.wall(1)))
    assert server.stats.malformed == 2
    assert sorted(t.pid for t in server.book) == [10, 11]


def test_a_line_longer_than_any_request_is_dropped_whole() -> None:
    splitter = LineSplitter(max_line=100)
    lines, oversized = splitter.feed(b"a" * 80)
    assert (lines, oversized) == ([], 0)
    lines, oversized = splitter.feed(b"b" * 80)  # now 160 bytes without a newline
    assert (lines, oversized) == ([], 1)
    lines, oversized = splitter.feed(b'c{"tail"}\nok\n')
    assert (lines, oversized) == ([b"ok"], 0), "the tail of the long line reached the parser"


def test_the_book_compacts_released_entries() -> None:
    book = TimerBook()
    for i in range(10_000):
        book.arm(1, f"s{i}", float(i), 9)
        book.release(1, f"s{i}")
    assert len(book) == 0
    assert len(book._heap) <= 2048
    assert book.next_deadline() is None


# -- hostile input -------------------------------------------------------------------------------

# Any bytes cut anywhere: tests/fuzz (the "fifo" surface), with the other input surfaces.


def test_garbage_that_is_valid_json_but_not_a_request_is_counted(world: World) -> None:
    server = world.server()
    server.receive(b"\n".join(json.dumps(v).encode() for v in [None, 1, [], {}, {"pid": 10}]) + b"\n")
    assert server.stats.malformed == 5


def test_a_scrape_waits_for_the_loop_s_turn_to_end(world: World) -> None:
    """The loop holds the server's lock during a turn; a scrape in the HTTP thread reads under it."""
    server = world.server()
    collector = ServerCollector(server)
    server.receive(line(10, "a", world.wall(5)))
    scraped = threading.Event()
    families: list[str] = []

    def scrape() -> None:
        families.extend(family.name for family in collector.collect())
        scraped.set()

    with server.lock:  # a turn in progress
        thread = threading.Thread(target=scrape)
        thread.start()
        assert not scraped.wait(0.2), "the scrape read the server while the loop was changing it"
    assert scraped.wait(5)
    thread.join()
    assert "expiry_timers_active" in families


# -- kills carried out later (off the loop, as in the daemon) ----------------------------------------------


class Deferred:
    """A dispatch that keeps the kill jobs until the test runs them, as a slow dump would."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], KillReport]] = []

    def __call__(self, job: Callable[[], KillReport]) -> None:
        self.jobs.append(job)

    def finish(self, server: TimerServer) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            server.killed(job())


class Slow(Listener):
    """Work before the signal (a stack dump, the pod condition): the kill goes to the dispatch."""

    def slow(self, order: KillOrder) -> bool:
        return True


def test_a_kill_nothing_slow_precedes_is_signalled_on_the_loop_at_once(world: World) -> None:
    kills = Deferred()
    server = world.server(dispatch=kills)
    server.receive(line(10, "a", world.wall(1)))
    world.now += 1
    server.expire_due()
    assert kills.jobs == [] and world.signals == [(10, 9)]
    assert server.stats.kills == {"SIGKILL": 1} and not server.killing
    slow = world.server(dispatch=kills, listeners=[Slow()])
    slow.receive(line(11, "a", world.wall(1)))
    world.now += 1
    slow.expire_due()
    assert len(kills.jobs) == 1 and world.signals == [(10, 9)], "a slow kill ran on the loop"


def test_the_loop_signals_every_worker_of_the_turn_before_any_bookkeeping(world: World) -> None:
    """The daemon gives the CPU to the dying workers between the signals and their bookkeeping."""
    seen: list[str] = []

    class Books(Listener):
        def after_kill(self, report: KillReport) -> None:
            seen.append(f"books {report.worker.pid} after {len(world.signals)} signals")

    server = world.server(listeners=[Books()], after_signals=lambda: seen.append("cpu given away"))
    server.receive(line(10, "a", world.wall(1)) + line(11, "b", world.wall(1)))
    world.now += 1
    server.expire_due()
    assert seen == ["cpu given away", "books 10 after 2 signals", "books 11 after 2 signals"]
    assert server.stats.kills == {"SIGKILL": 2} and not server.killing
    server.expire_due()
    assert seen[3:] == [], "a turn without a kill gives nothing away"


def test_a_worker_is_not_ordered_killed_again_while_its_kill_is_under_way(world: World) -> None:
    kills = Deferred()
    server = world.server(dispatch=kills, listeners=[Slow()])
    server.receive(line(10, "a", world.wall(1)) + line(11, "b", world.wall(1)))
    world.now += 1
    server.expire_due()
    assert len(kills.jobs) == 2 and world.signals == [], "the loop waited for a kill"
    server.receive(line(10, "again", world.wall(0.5)))  # armed while the kill is being prepared
    world.now += 1
    server.expire_due()
    assert len(kills.jobs) == 2, "ordered twice"
    assert server.stats.expirations == 3
    kills.finish(server)
    assert sorted(world.signals) == [(10, 9), (11, 9)]
    assert len(server.book) == 0, "what it armed meanwhile outlived its kill"
    assert server.stats.kills == {"SIGKILL": 2}


def test_a_worker_that_exits_during_its_kill_keeps_its_handle_until_the_report(world: World) -> None:
    kills = Deferred()
    closed: list[int] = []
    server = world.server(dispatch=kills, listeners=[Slow()])
    server.receive(line(10, "a", world.wall(1)))
    worker = server.workers[10]
    worker.close = lambda: closed.append(worker.pid)  # type: ignore[method-assign]
    world.now += 1
    server.expire_due()
    server.worker_exited(10)
    assert closed == [], "the pidfd was closed while the kill still needed it"
    world.outcome = Outcome.GONE
    kills.finish(server)
    assert closed == [10]
    assert server.stats.kill_failures == {"gone": 1}
    assert server.seconds_to_next_deadline() is None, "a follow-up for a worker that is gone"


def test_observe_mode_reports_without_a_signal_and_without_follow_ups(world: World) -> None:
    server = world.server(mode=Mode.OBSERVE, kill_signal=signal.SIGTERM)
    reports: list[KillReport] = []
    listener = Listener()
    listener.after_kill = reports.append  # type: ignore[method-assign]
    server.listeners.append(listener)
    server.receive(line(10, "a", world.wall(1)) + line(10, "b", world.wall(1)) + line(10, "c", world.wall(9)))
    world.now += 1
    server.expire_due()
    world.now += 100
    server.expire_due()
    assert world.signals == []
    assert [(r.outcome, r.signal) for r in reports] == [(Outcome.OBSERVED, signal.SIGTERM)]
    assert (server.stats.observed, server.stats.expirations, sum(server.stats.kills.values())) == (1, 2, 0)
    assert len(server.book) == 0, "one hang is one observation, as it is one kill"


def test_a_signal_that_lands_as_the_worker_exits_schedules_nothing_after(world: World) -> None:
    kills = Deferred()
    server = world.server(dispatch=kills, listeners=[Slow()])
    server.receive(line(10, "a", world.wall(1)))
    world.now += 1
    server.expire_due()
    server.worker_exited(10)  # its exit was read before the report of the signal that caused it
    kills.finish(server)
    world.now += UNKILLABLE_AFTER
    server.expire_due()
    assert server.stats.kills == {"SIGKILL": 1}
    assert server.stats.unkillable == 0, "a worker that exited was reported as unkillable"
