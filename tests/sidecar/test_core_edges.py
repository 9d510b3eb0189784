"""Edges of the timer server's rules that the mutation report (docs/testing.md) found unchecked."""

from __future__ import annotations

import signal

from expiry_sidecar.server import UNKILLABLE_AFTER
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


def test_a_softer_signal_without_escalation_is_never_reported_as_unkillable() -> None:
    here = world()
    server = here.server(kill_signal=signal.SIGTERM, escalate_after=0)
    server.receive(line(10, "a", here.wall(1)))
    here.now += 1
    server.expire_due()
    here.now += UNKILLABLE_AFTER + 1  # the worker heeds SIGTERM slowly, or handles it and lives on
    server.expire_due()
    assert here.signals == [(10, signal.SIGTERM)]
    assert server.stats.unkillable == 0


def test_rearming_a_scope_at_the_same_deadline_keeps_only_the_latest_request() -> None:
    book = TimerBook()
    book.arm(1, "s", 5.0, signal.SIGKILL)
    book.arm(1, "s", 5.0, 0)  # the same deadline, now watch-only: a Timer equal in value to the first
    assert [(t.scope_id, t.signal) for t in book.pop_due(6.0)] == [("s", 0)]
    assert len(book) == 0


def test_release_says_whether_a_timer_was_armed() -> None:
    book = TimerBook()
    book.arm(1, "s", 5.0, signal.SIGKILL)
    assert book.release(1, "s") is True
    assert book.release(1, "s") is False
    assert book.release(2, "never") is False
