"""What an expired timer does to its worker: the mode (``--mode enforce|observe``), as a rule.

- A timer whose signal is <= 0 only expires: nothing happens to its worker, in either mode.
- ``enforce``: the worker gets the signal (``--kill-signal`` overrides the client's choice), after
  the pod condition when ``--pod-condition`` is on.
- ``observe``: everything an enforced expiry does (stack dump, log, Event, metrics) except the
  signal and the pod condition: the worker runs on, and the expiry is counted as observed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    OBSERVE = "observe"


@dataclass(frozen=True)
class Action:
    signal: int
    """The signal the worker gets (or, observing, would have got)."""
    send: bool
    """False: observe only."""
    condition: bool
    """Mark the pod with the hang condition before the signal."""


def on_expiry(mode: Mode, requested: int, kill_signal: int | None, pod_condition: bool) -> Action | None:
    """The action for a timer that expired with the client's ``requested`` signal; None: nothing."""
    if requested <= 0:
        return None
    enforce = mode is Mode.ENFORCE
    return Action(kill_signal or requested, send=enforce, condition=enforce and pod_condition)
