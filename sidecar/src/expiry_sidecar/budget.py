"""The false-kill budget: how many adaptive kills a pod may make before it stops trusting adaptive.

A block killed at its adaptive deadline (not the requested one) may have been healthy: adaptive
guessed from what the scope had learned. Each scope pays at most one such kill per duration it had
not seen (deadlines.py holds it at requested deadlines until a longer block completes), but a pod has
many scopes, and a cause outside the job (a storage slowdown that makes every checkpoint slower)
hits them all at once. So the pod as a whole has a budget: after ``kills`` adaptive kills within
``window`` seconds it falls back to requested deadlines for the rest of its life (a new pod starts
afresh) and says so once. The requested deadline still finds every true hang.

What the budget has counted is kept in the state file (state.py, beside the statistics) with
its monotonic times, valid across the sidecars of one boot: a sidecar SIGKILLed and restarted keeps the
kills of the window and a spent budget, so a restart is no way to get three more false kills.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

WINDOW = 3600.0
"""Seconds over which adaptive kills are counted against the budget."""
DEFAULT_KILLS = 3


class FalseKillBudget:
    def __init__(self, kills: int = DEFAULT_KILLS, window: float = WINDOW) -> None:
        if kills < 1 or not (math.isfinite(window) and window > 0):
            raise ValueError(f"a false-kill budget needs kills >= 1 and a window > 0: {kills!r}, {window!r}")
        self.kills = kills
        self.window = window
        self._times: deque[float] = deque()
        self.spent_at: float | None = None
        """Monotonic seconds the budget ran out (None: not yet)."""
        self.changed = False
        """Counted something since the state file last took it (:meth:`take`)."""

    @property
    def exhausted(self) -> bool:
        return self.spent_at is not None

    def spend(self, now: float) -> bool:
        """Count an adaptive kill at ``now``; True exactly once: when this kill spends the budget."""
        if self.spent_at is not None:
            return False
        self._times.append(now)
        self.changed = True
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) < self.kills:
            return False
        self.spent_at = now
        return True

    def within_window(self, now: float) -> int:
        """Adaptive kills counted in the window ending at ``now``."""
        return sum(1 for t in self._times if t > now - self.window)

    @property
    def counted(self) -> bool:
        """Anything to keep: a kill in the window, or the budget spent."""
        return bool(self._times) or self.spent_at is not None

    def to_json(self) -> dict[str, Any]:
        return {"kills": list(self._times), "spent_at": self.spent_at}

    def take(self) -> dict[str, Any]:
        """:meth:`to_json`, and forget that it changed."""
        self.changed = False
        return self.to_json()

    def load(self, data: Any) -> None:
        """Take what :meth:`to_json` wrote (a previous sidecar of this pod, same boot); ValueError,
        changing nothing, if it is anything else."""
        match data:
            case {"kills": list(times), "spent_at": None | float() | int() as spent_at} if all(
                isinstance(t, float | int) and not isinstance(t, bool) and math.isfinite(t) for t in times
            ) and (spent_at is None or math.isfinite(spent_at)):
                pass
            case _:
                raise ValueError(f"not a false-kill budget: {str(data)[:80]!r}")
        self._times = deque(float(t) for t in times[-self.kills :])
        self.spent_at = None if spent_at is None else float(spent_at)
        self.changed = False
