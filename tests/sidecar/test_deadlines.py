"""Block statistics and the deadline policy, driven without I/O: a settable clock, records for workers.

The property test replays generated traces through the real TimerServer and checks every block
against an oracle that computes the rule of DESIGN.md from the trace alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expiry.wire import Request, encode
from expiry_sidecar.blocks import BUCKETS, BlockStats, ScopeStats, bucket_of, upper_bound
from expiry_sidecar.budget import FalseKillBudget
from expiry_sidecar.deadlines import Deadlines, Policy
from expiry_sidecar.kills import Outcome
from expiry_sidecar.processes import NotAttached, Worker
from expiry_sidecar.server import Clock, KillReport, Listener, TimerServer
from expiry_sidecar.state import JournaledBook, StateFile, boot_id, read_blocks

WALL_OFFSET = 1000.0


class World(Listener):
    """One worker at a time (a killed one is replaced by a new pid), the time, the kills."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pid = 10
        self.kills: list[KillReport] = []

    def attach(self, pid: int, starttime: int | None) -> Worker:
        if pid != self.pid:
            raise NotAttached(pid, "gone")
        return Worker(pid, 1, None)

    def send(self, worker: Worker, sig: int) -> Outcome:
        return Outcome.DELIVERED

    def after_kill(self, report: KillReport) -> None:
        self.kills.append(report)

    def server(self, policy: Policy, budget: int = 10**9, stats: BlockStats | None = None) -> TimerServer:
        clock = Clock(monotonic=lambda: self.now, wall=lambda: self.now + WALL_OFFSET)
        return TimerServer(
            clock=clock,
            attach=self.attach,
            send=self.send,
            listeners=[self],
            escalate_after=0,
            deadlines=Deadlines(policy, stats, FalseKillBudget(budget)),
        )

    def acquire(self, server: TimerServer, scope: str, after: float) -> None:
        server.receive(encode(Request(self.pid, scope, self.now + WALL_OFFSET + after, 9)))

    def release(self, server: TimerServer, scope: str) -> None:
        server.receive(encode(Request(self.pid, scope, -1, 0)))


def run_block(
    world: World, server: TimerServer, scope: str, after: float, duration: float | None
) -> float | None:
    """Arm a block, let it run ``duration`` (None: a hang); the seconds to its kill, or None."""
    world.acquire(server, scope, after)
    start = world.now
    until_deadline = server.seconds_to_next_deadline()
    assert until_deadline is not None
    if duration is not None and duration < until_deadline:
        world.now += duration
        world.release(server, scope)
        server.expire_due()
        return None
    killed = len(world.kills)
    world.now += until_deadline
    server.expire_due()
    assert len(world.kills) == killed + 1, "the block was neither released nor killed"
    server.worker_exited(world.pid)
    world.pid += 1  # the restarted worker
    return world.now - start


def oracle(policy: Policy, completed: list[float], requested: float, killed_after: float = 0.0) -> float:
    """The rule of DESIGN.md, from the completed blocks of the scope and the longest one killed at an
    adaptive deadline (the scope is held at requested until a block that long completes)."""
    learned = policy.deadlines == "adaptive" and len(completed) >= policy.min_samples
    if learned and killed_after <= max(completed):
        return min(requested, max(policy.floor, policy.factor * max(completed)))
    return requested


durations = st.one_of(st.none(), st.floats(0.001, 50.0))
blocks = st.tuples(st.sampled_from(["a", "b"]), st.floats(0.5, 100.0), durations)
policies = st.builds(
    Policy,
    st.sampled_from(["requested", "adaptive"]),
    st.floats(1.5, 10.0),
    st.integers(1, 6),
    st.floats(0.01, 5.0),
)


@settings(max_examples=150, deadline=None)
@given(policy=policies, trace=st.lists(blocks, max_size=60))
def test_no_false_kill_within_the_rule_and_no_hang_found_later(
    policy: Policy, trace: list[tuple[str, float, float | None]]
) -> None:
    world = World()
    server = world.server(policy)
    completed: dict[str, list[float]] = {"a": [], "b": []}
    held: dict[str, float] = {"a": 0.0, "b": 0.0}
    over_adaptive = 0
    for scope, requested, duration in trace:
        expected = oracle(policy, completed[scope], requested, held[scope])
        adaptive = oracle(replace(policy, deadlines="adaptive"), completed[scope], math.inf, held[scope])
        killed_after = run_block(world, server, scope, requested, duration)
        if killed_after is not None and expected < requested:
            held[scope] = max(held[scope], killed_after)
        if duration is None or duration > expected + 1e-6:
            assert killed_after == pytest.approx(expected, abs=1e-6), (
                "a hang found later (or sooner) than the rule"
            )
        elif duration < expected - 1e-6:
            assert killed_after is None, f"a {duration} s block was killed; the rule allows {expected} s"
        if killed_after is None:  # (at the very deadline either outcome is within float error)
            assert duration is not None
            over_adaptive += duration > adaptive and adaptive < requested
            completed[scope].append(duration)
    assert {s: stats.count for s, stats in server.deadlines.stats.scopes.items()} == {
        s: len(d) for s, d in completed.items() if d
    }
    if policy.deadlines == "requested":
        assert server.deadlines.stats.over_adaptive == over_adaptive


def test_a_kill_says_which_deadline_fired_and_why() -> None:
    world = World()
    server = world.server(Policy("adaptive", factor=5, min_samples=3, floor=0.5))
    run_block(world, server, "s", 1800, None)
    assert world.kills[-1].rule == "requested 1800 s (adaptive warming up: 0 of 3 blocks)"
    for _ in range(3):
        run_block(world, server, "s", 1800, 3.2)
    assert run_block(world, server, "s", 1800, None) == pytest.approx(16.0)
    assert world.kills[-1].rule == "adaptive: 5 x 3.2 s longest of 3 blocks; requested 1800 s"
    assert run_block(world, server, "s", 10, None) == pytest.approx(10.0)
    assert world.kills[-1].rule == (
        "requested 10 s (adaptive held: a block ran 16 s and was killed at its adaptive deadline;"
        " adaptive again once a block that long completes)"
    )
    assert run_block(world, server, "s", 1800, 17.0) is None, "held: the requested deadline"
    assert run_block(world, server, "s", 10, None) == pytest.approx(10.0)
    assert world.kills[-1].rule == "requested 10 s (adaptive: 5 x 17 s longest of 4 blocks would be later)"
    for _ in range(3):
        run_block(world, server, "quick", 1800, 0.01)
    assert run_block(world, server, "quick", 1800, None) == pytest.approx(0.5)
    assert world.kills[-1].rule == "adaptive: floor 0.5 s (5 x 0.01 s longest of 3 blocks); requested 1800 s"


def test_requested_deadlines_say_so_and_learn_all_the_same() -> None:
    world = World()
    server = world.server(Policy("requested", factor=2, min_samples=2, floor=0.1))
    for duration in (1.0, 1.0, 5.0):  # the third outlives 2 x 1 s: adaptive would have killed it
        run_block(world, server, "s", 60, duration)
    assert server.deadlines.stats.over_adaptive == 1
    assert run_block(world, server, "s", 60, None) == pytest.approx(60.0)
    assert world.kills[-1].rule == "requested 60 s"


def test_expired_replaced_and_orphaned_blocks_are_not_completed_blocks() -> None:
    world = World()
    server = world.server(Policy("adaptive", min_samples=1, floor=0.01))
    run_block(world, server, "s", 1.0, None)  # expired
    world.acquire(server, "s", 60)
    world.acquire(server, "s", 60)  # re-armed: the first never completed
    world.now += 2
    world.release(server, "s")
    world.acquire(server, "s", 60)
    server.worker_exited(world.pid)  # exited holding it
    world.release(server, "s")  # a release of nothing armed
    stats = server.deadlines.stats.get("s")
    assert stats is not None and stats.count == 1 and stats.longest == pytest.approx(2.0)


@pytest.mark.parametrize("seconds", [0.0005, 0.001, 0.0011, 0.5, 1.0, 3.2, 1800.0, 1e6])
def test_a_duration_lands_in_the_bucket_whose_bounds_hold_it(seconds: float) -> None:
    index = bucket_of(seconds)
    assert seconds <= upper_bound(index) * (1 + 1e-9)
    assert index == 0 or seconds > upper_bound(index - 1)
    assert index <= BUCKETS


def test_quantiles_are_within_one_bucket_and_never_above_the_longest() -> None:
    stats = ScopeStats()
    for n in range(1, 1001):
        stats.record(n / 1000, 60)  # 1 ms .. 1 s, evenly
    assert stats.count == 1000 and stats.longest == 1.0
    assert 0.5 <= stats.quantile(0.5) <= 0.5 * 2**0.25
    assert 0.99 <= stats.quantile(0.99) <= 1.0
    assert stats.quantile(1.0) == 1.0
    assert stats.cumulative()[-1] == 1000


def test_scopes_past_the_bound_are_pooled_and_counted() -> None:
    stats = BlockStats(max_scopes=3)
    for n in range(10):
        stats.record(f"scope-{n}", 0.1, 60)
    assert sorted(stats.scopes) == ["scope-0", "scope-1", "scope-2"]
    assert stats.pooled.count == 7
    assert stats.total().count == 10
    deadlines = Deadlines(Policy("adaptive", min_samples=1, floor=0.01), stats)
    assert deadlines.learned("scope-9") is None, "a pooled scope learns no deadline"


def test_statistics_survive_the_state_file_and_bad_ones_are_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    stats = BlockStats()
    book = JournaledBook(StateFile(path), lambda pid: 1, blocks=stats)
    book.snapshot()
    stats.record("step", 0.25, 60)
    book.flush()
    stats.record("step", 0.5, 60)
    stats.record("eval", 4.0, 600)
    book.flush()
    again = BlockStats()
    state = StateFile(path)
    state.load()
    state.load_blocks(again)
    assert state.errors == 0
    assert {s: (x.count, x.longest, x.requested) for s, x in again.scopes.items()} == {
        "step": (2, 0.5, 60.0),
        "eval": (1, 4.0, 600.0),
    }
    assert read_blocks(path).scopes["step"].count == 2  # the advisor's view

    header = json.dumps({"expiry_state": 1, "boot_id": boot_id()})
    arm = json.dumps(["arm", 10, 1, "s", 5.0, 9, 1.0, 5.0])
    for bad in (
        ["blocks", 1, {"step": [2, 0.5, 1.0, 60, {"9": 1}]}],  # bucket counts do not add up
        ["blocks", 1, {"step": "garbage"}],
        ["blocks", 2, {"step": [1, 0.5, 0.5, 60, {"9": 1}]}],  # a future version
    ):
        path.write_text("\n".join([header, arm, json.dumps(bad)]) + "\n")
        state = StateFile(path)
        saved = state.load()
        fresh = BlockStats()
        state.load_blocks(fresh)
        assert [t.scope_id for t in saved] == ["s"], "bad statistics cost the timers"
        assert saved[0].armed_at == 1.0 and saved[0].requested == 5.0
        assert fresh.scopes == {} and state.errors == 1
        aside = list(tmp_path.glob("state.json.blocks-corrupt-*"))
        assert aside and json.loads(aside[0].read_text()) == bad
        for file in aside:
            file.unlink()


def test_policy_rejects_what_is_not_a_positive_finite_number() -> None:
    for bad in (
        {"factor": 0},
        {"factor": math.inf},
        {"min_samples": 0},
        {"floor": -1.0},
        {"floor": math.nan},
    ):
        with pytest.raises(ValueError):
            Policy("adaptive", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Policy("sometimes")


def test_a_longer_completed_block_raises_the_deadline_of_the_next() -> None:
    world = World()
    server = world.server(Policy("adaptive", factor=5, min_samples=2, floor=0.1))
    for duration in (1.0, 1.0, 4.0):  # 4 s is within 5 x 1 s
        assert run_block(world, server, "s", 600, duration) is None
    assert run_block(world, server, "s", 600, 10.0) is None, "5 x 4 s = 20 s allows a 10 s block"
    assert run_block(world, server, "s", 600, None) == pytest.approx(50.0)
    assert world.kills[-1].rule == "adaptive: 5 x 10 s longest of 4 blocks; requested 600 s"
