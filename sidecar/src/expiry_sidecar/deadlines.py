"""Which deadline a block gets: the one its client requested, or one learned from its scope.

The adaptive rule (docs/architecture.md, "Sidecar CLI"): once a scope has ``min_samples`` completed
blocks, a block's effective deadline is
``min(requested, max(floor, factor x the scope's longest completed block))``; before that, the
requested one. The requested deadline is always the upper bound, so adaptive only
ever finds a hang sooner, never later.

The rule is applied when the block is armed, with what the scope had learned by then (a
:class:`~expiry_sidecar.blocks.Learned` snapshot the timer keeps): a kill can then say exactly why
it fired, and a block that later completes can be checked against the deadline adaptive gave it.
With requested deadlines the same check counts the blocks that ran past the adaptive deadline and
then finished: the healthy blocks adaptive would have killed, the figure to read before switching.

No livelock: a block killed at its adaptive deadline teaches its scope. The scope is *held* at its
requested deadlines until a block at least as long as the killed one completes; then the longest
block is at least that long and adaptive resumes above it. So a recurring long block (an evaluation
inside the step) is killed at most once, however often the restarted worker meets it again, and a
true hang in a held scope is still killed at its requested deadline. Holding was chosen over
"count the killed block as if it had completed" (then the next deadline is F x the killed one):
that still kills a block more than F times longer than what was learned again and again (log_F of
the ratio times), while holding costs exactly one kill, and the hold is what a profile carries
to the workload's next pod. Beyond each scope's one kill, the pod's false-kill budget (budget.py)
stops a storm across scopes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from expiry_sidecar.blocks import BlockStats, Learned
from expiry_sidecar.budget import FalseKillBudget

REQUESTED = "requested"
ADAPTIVE = "adaptive"
POLICIES = (REQUESTED, ADAPTIVE)


@dataclass(frozen=True)
class Policy:
    deadlines: str = REQUESTED
    factor: float = 5.0
    min_samples: int = 20
    floor: float = 60.0

    def __post_init__(self) -> None:
        if self.deadlines not in POLICIES:
            raise ValueError(f"deadlines must be one of {', '.join(POLICIES)}: {self.deadlines!r}")
        for name, value in (
            ("factor", self.factor),
            ("min_samples", self.min_samples),
            ("floor", self.floor),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"adaptive {name} must be a positive finite number: {value!r}")

    @property
    def adaptive(self) -> bool:
        return self.deadlines == ADAPTIVE

    def limit(self, learned: Learned | None) -> float | None:
        """Seconds the adaptive rule allows a block, or None while the scope is still warming up."""
        if learned is None or learned.blocks < self.min_samples or learned.held or learned.suspended:
            return None
        return max(self.floor, self.factor * learned.longest)

    def effective(self, armed_at: float, requested: float, learned: Learned | None) -> float:
        """The deadline a block armed at ``armed_at`` gets (monotonic seconds)."""
        limit = self.limit(learned) if self.adaptive else None
        return requested if limit is None else min(requested, armed_at + limit)

    def explain(self, armed_at: float, requested: float, learned: Learned | None) -> str:
        """Which deadline fires for such a block, and why, e.g.
        ``adaptive: 5 x 3.2 s longest of 1,000 blocks; requested 1800 s``."""
        if math.isnan(armed_at):  # not a block a client armed here (an escalation, an old state file)
            return REQUESTED
        asked = f"requested {_s(requested - armed_at)}"
        limit = self.limit(learned)
        if not self.adaptive:
            return asked
        if learned is not None and learned.suspended:
            return f"{asked} (adaptive suspended: this pod spent its false-kill budget)"
        if learned is not None and learned.held:
            return (
                f"{asked} (adaptive held: a block ran {_s(learned.held)} and was killed at its adaptive"
                " deadline; adaptive again once a block that long completes)"
            )
        if learned is None or limit is None:
            count = learned.blocks if learned else 0
            return f"{asked} (adaptive warming up: {count:,} of {self.min_samples:,} blocks)"
        why = f"{_g(self.factor)} x {_s(learned.longest)} longest of {learned.blocks:,} blocks"
        if self.factor * learned.longest < self.floor:
            why = f"floor {_s(self.floor)} ({why})"
        if armed_at + limit < requested:
            return f"adaptive: {why}; {asked}"
        return f"{asked} (adaptive: {why} would be later)"


class Deadlines:
    """The policy and the statistics it learns from, as the server consults them.

    Both methods run once per request, so they are written flat: each scope keeps one snapshot of
    what it has learned, rule applied, until its next completed block.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        stats: BlockStats | None = None,
        budget: FalseKillBudget | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self.stats = stats if stats is not None else BlockStats()
        self.budget = budget or FalseKillBudget()
        self.adaptive_expirations = 0
        """Blocks that expired at their adaptive deadline (killed, or observed)."""
        self._adaptive = self.policy.adaptive

    def learned(self, scope_id: str) -> Learned | None:
        stats = self.stats.scopes.get(scope_id)
        if stats is None:
            return None
        if stats.snapshot is None:
            learned = Learned(stats.count, stats.longest, held=stats.held)
            stats.snapshot = learned._replace(limit=self.policy.limit(learned))
        return stats.snapshot

    @property
    def suspended(self) -> bool:
        """The pod spent its false-kill budget: requested deadlines from now on."""
        return self.budget.exhausted

    def arm(self, scope_id: str, armed_at: float, requested: float) -> tuple[float, Learned | None]:
        """The deadline of a block armed now (Policy.effective), and what its scope had learned."""
        learned = self.learned(scope_id)
        if learned is None or learned.limit is None or not self._adaptive:
            return requested, learned
        if self.budget.exhausted:
            return requested, learned._replace(limit=None, suspended=True)
        deadline = armed_at + learned.limit
        return (deadline if deadline < requested else requested), learned

    def explain(self, scope_id: str, armed_at: float, requested: float, learned: Learned | None) -> str:
        """Policy.explain, with the scope's block count as it is now (a snapshot keeps the count of
        when its longest block last grew)."""
        stats = self.stats.scopes.get(scope_id)
        if learned is not None and learned.limit is not None and stats is not None:
            learned = learned._replace(blocks=stats.count)
        return self.policy.explain(armed_at, requested, learned)

    def expired(self, scope_id: str, armed_at: float, deadline: float, requested: float, now: float) -> bool:
        """A block expired at ``deadline``. If that was its adaptive deadline (lower than the one
        requested), its scope is held (see the module) and the pod's budget is charged; True when this
        expiry spent the budget (say so, once)."""
        if not deadline < requested or math.isnan(armed_at):
            return False
        self.adaptive_expirations += 1
        self.stats.killed(scope_id, deadline - armed_at)
        return self.budget.spend(now)

    def completed(
        self, scope_id: str, armed_at: float, requested: float, learned: Learned | None, now: float
    ) -> None:
        """A block was released at ``now``: learn its duration; count it if it outlived its adaptive
        deadline (a limit past the requested deadline never counts: the block would have been killed)."""
        seconds = now - armed_at
        if not seconds >= 0:  # nan: armed before this sidecar knew when, its duration is unknown
            if math.isnan(seconds):
                return
            seconds = 0.0
        if learned is not None and learned.limit is not None and seconds > learned.limit:
            self.stats.over_adaptive += 1
        self.stats.record(scope_id, seconds, requested - armed_at)


def _g(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _s(seconds: float) -> str:
    return f"{_g(seconds)} s"
