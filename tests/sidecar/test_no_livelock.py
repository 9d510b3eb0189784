"""No livelock under adaptive deadlines, and the false-kill budget, driven without I/O.

A killed worker is restarted and resumes at the very block that was killed (torchrun restarts it
from its last checkpoint, which is before that block), as in a real job. Without a rule against it
a recurring long block is then killed each time it is met: these tests bound false kills per scope.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expiry_sidecar import profile
from expiry_sidecar.blocks import BlockStats, ScopeStats
from expiry_sidecar.budget import FalseKillBudget
from expiry_sidecar.deadlines import Policy
from expiry_sidecar.server import TimerServer
from tests.sidecar.test_deadlines import World, run_block

RETRIES = 6
"""How often a restarted worker meets a killed block again before the trace gives up on it."""
REQUESTED = 1000.0


def replay(
    world: World, server: TimerServer, trace: list[tuple[str, float | None]]
) -> tuple[dict[str, int], list[float]]:
    """Run the trace, retrying a healthy block that was killed (a restarted worker meets it again).
    False kills per scope, and the seconds each hang (None) ran before its kill."""
    false_kills: dict[str, int] = {}
    hangs: list[float] = []
    for scope, duration in trace:
        for _ in range(RETRIES):
            killed_after = run_block(world, server, scope, REQUESTED, duration)
            if duration is None:
                assert killed_after is not None
                hangs.append(killed_after)
                break
            if killed_after is None:
                break
            false_kills[scope] = false_kills.get(scope, 0) + 1
    return false_kills, hangs


@st.composite
def traces(draw: st.DrawFn) -> tuple[Policy, list[tuple[str, float | None]], dict[str, set[float]]]:
    """Scopes with steady blocks (never over F x the shortest, so never killed once learned), a few
    recurring long durations (an evaluation, a checkpoint) at random places, and hangs."""
    policy = Policy(
        "adaptive",
        factor=draw(st.floats(1.5, 10.0)),
        min_samples=draw(st.integers(1, 8)),
        floor=draw(st.floats(0.01, 2.0)),
    )
    trace: list[tuple[str, float | None]] = []
    long: dict[str, set[float]] = {}
    for scope in draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True)):
        low = draw(st.floats(0.01, 5.0))
        durations = st.floats(low, low * policy.factor * 0.99)
        recurring = draw(st.lists(st.floats(0.01, REQUESTED / 2), min_size=1, max_size=3))
        long[scope] = set(recurring)
        blocks: list[float | None] = draw(
            st.lists(st.one_of(durations, st.sampled_from(recurring), st.none()), max_size=40)
        )
        trace += [(scope, duration) for duration in blocks]
    return policy, draw(st.permutations(trace)), long


@settings(max_examples=200, deadline=None)
@given(case=traces())
def test_a_recurring_duration_costs_at_most_one_false_kill_per_scope(
    case: tuple[Policy, list[tuple[str, float | None]], dict[str, set[float]]],
) -> None:
    policy, trace, long = case
    world = World()
    server = world.server(policy)
    false_kills, hangs = replay(world, server, trace)
    for scope, kills in false_kills.items():
        assert kills <= len(long[scope]), f"scope {scope}: {kills} false kills for durations {long[scope]}"
    assert all(ran <= REQUESTED + 1e-6 for ran in hangs), "a hang was killed later than requested"


def test_the_restarted_worker_passes_the_block_that_was_killed_and_a_hang_is_still_found() -> None:
    world = World()
    server = world.server(Policy("adaptive", factor=5, min_samples=3, floor=0.5))
    for _ in range(30):
        assert run_block(world, server, "step", REQUESTED, 0.06) is None
    assert run_block(world, server, "step", REQUESTED, 15.0) == pytest.approx(0.5), "the first: killed"
    assert world.kills[-1].rule == "adaptive: floor 0.5 s (5 x 0.06 s longest of 30 blocks); requested 1000 s"
    assert run_block(world, server, "step", REQUESTED, 15.0) is None, "the restarted worker passes it"
    assert run_block(world, server, "step", REQUESTED, None) == pytest.approx(75.0), "5 x 15 s"
    assert run_block(world, server, "step", REQUESTED, 15.0) is None


def test_a_held_scope_finds_a_hang_at_its_requested_deadline_and_says_why() -> None:
    world = World()
    server = world.server(Policy("adaptive", factor=5, min_samples=3, floor=0.5))
    for _ in range(3):
        run_block(world, server, "step", REQUESTED, 0.06)
    assert run_block(world, server, "step", REQUESTED, 15.0) == pytest.approx(0.5)
    assert run_block(world, server, "step", REQUESTED, 0.06) is None, "a short block does not lift the hold"
    assert run_block(world, server, "step", 30.0, None) == pytest.approx(30.0)
    assert world.kills[-1].rule == (
        "requested 30 s (adaptive held: a block ran 0.5 s and was killed at its adaptive deadline;"
        " adaptive again once a block that long completes)"
    )


def test_observe_mode_is_held_the_same_way() -> None:
    """An observed block at its adaptive deadline runs on and completes: it teaches by completing."""
    world = World()
    server = world.server(Policy("adaptive", factor=5, min_samples=3, floor=0.5))
    stats = server.deadlines.stats
    for _ in range(3):
        run_block(world, server, "s", REQUESTED, 0.06)
    server.deadlines.expired("s", 0.0, 0.5, REQUESTED, 1.0)
    scope = stats.get("s")
    assert scope is not None and scope.held == 0.5
    stats.record("s", 0.7, REQUESTED)
    assert scope.held == 0.0 and server.deadlines.learned("s") == (4, 0.7, 3.5, 0.0, False)


@pytest.mark.parametrize("order", ["killed first", "completed first"])
def test_merging_statistics_keeps_the_hold_in_any_order(order: str) -> None:
    killed, completed = ScopeStats(), ScopeStats()
    for stats in (killed, completed):
        stats.record(0.1, 60)
    killed.killed(0.5)
    completed.record(0.8, 60)
    first, second = (killed, completed) if order == "killed first" else (completed, killed)
    merged = ScopeStats()
    merged.merge(first)
    merged.merge(second)
    assert merged.held == 0.0 and merged.longest == 0.8, "the longer completed block lifts the hold"
    lone = ScopeStats()
    lone.merge(killed)
    assert lone.held == 0.5
    assert ScopeStats.from_json(lone.to_json()).held == 0.5
    assert len(completed.to_json()) == 5, "no kill, the format an older sidecar reads"


def test_the_budget_suspends_adaptive_deadlines_once_and_for_the_pod() -> None:
    world = World()
    notices: list[tuple[int, float]] = []
    world.adaptive_suspended = lambda kills, window: notices.append((kills, window))  # type: ignore[method-assign]
    server = world.server(Policy("adaptive", factor=5, min_samples=2, floor=0.5), budget=2)
    for scope in "abc":
        for _ in range(2):
            run_block(world, server, scope, REQUESTED, 0.06)
    assert run_block(world, server, "a", REQUESTED, 10.0) == pytest.approx(0.5)
    assert notices == [] and not server.deadlines.suspended
    assert run_block(world, server, "b", REQUESTED, 10.0) == pytest.approx(0.5)
    assert notices == [(2, 3600.0)] and server.deadlines.suspended
    assert run_block(world, server, "c", REQUESTED, 10.0) is None, "scope c keeps requested deadlines now"
    assert run_block(world, server, "c", 20.0, None) == pytest.approx(20.0)
    assert world.kills[-1].rule == "requested 20 s (adaptive suspended: this pod spent its false-kill budget)"
    assert notices == [(2, 3600.0)], "said once"
    assert server.deadlines.adaptive_expirations == 2


def test_the_budget_counts_only_kills_within_its_window() -> None:
    budget = FalseKillBudget(kills=3, window=100.0)
    assert not budget.spend(0.0) and not budget.spend(50.0)
    assert not budget.spend(120.0), "the kill at 0 s fell out of the window"
    assert budget.within_window(120.0) == 2
    assert budget.spend(130.0) and budget.exhausted and budget.spent_at == 130.0
    assert not budget.spend(131.0), "spent once"
    for kills, window in ((0, 10.0), (1, 0.0), (1, math.inf)):
        with pytest.raises(ValueError):
            FalseKillBudget(kills, window)


def test_requested_deadlines_never_hold_or_charge_the_budget() -> None:
    world = World()
    server = world.server(Policy("requested", factor=5, min_samples=1, floor=0.5), budget=1)
    run_block(world, server, "s", REQUESTED, 0.06)
    assert run_block(world, server, "s", 2.0, None) == pytest.approx(2.0)
    assert not server.deadlines.suspended and server.deadlines.adaptive_expirations == 0
    scope = server.deadlines.stats.get("s")
    assert scope is not None and scope.killed_after == 0.0


@settings(max_examples=100, deadline=None)
@given(case=traces(), cuts=st.lists(st.integers(0, 120), max_size=4), new_pod_per_kill=st.booleans())
def test_at_most_one_false_kill_per_scope_across_pod_replacements_through_a_profile(
    case: tuple[Policy, list[tuple[str, float | None]], dict[str, set[float]]],
    cuts: list[int],
    new_pod_per_kill: bool,
) -> None:
    """The same trace, the pod replaced before each cut, and (a Job with restartPolicy Never) after
    every kill when ``new_pod_per_kill``: the next pod's sidecar starts from the profile (what the
    previous pods learned, merged through the DeadlineProfile object and read back, as profile_sync
    does it), so the bound on false kills holds for the whole workload."""
    policy, trace, long = case
    world = World()
    stored: dict[str, ScopeStats] = {}
    server, baseline = world.server(policy), {}
    false_kills: dict[str, int] = {}

    def replace_pod() -> None:
        nonlocal stored, server, baseline
        stored = profile.merged(stored, profile.difference(server.deadlines.stats.scopes, baseline))
        seed = profile.scopes_of(profile.body("p", "ml", None, stored, policy, writer="", now=""))
        stats = BlockStats()
        stats.load({scope: s.to_json() for scope, s in seed.items()})
        server, baseline = world.server(policy, stats=stats), seed

    for n, (scope, duration) in enumerate(trace):
        if n in cuts:
            replace_pod()
        for _ in range(RETRIES):
            killed_after = run_block(world, server, scope, REQUESTED, duration)
            if duration is None:
                assert killed_after is not None and killed_after <= REQUESTED + 1e-6
                break
            if killed_after is None:
                break
            false_kills[scope] = false_kills.get(scope, 0) + 1
            if new_pod_per_kill:
                replace_pod()
    for scope, kills in false_kills.items():
        assert kills <= len(long[scope]), f"scope {scope}: {kills} false kills for durations {long[scope]}"
