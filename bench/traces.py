"""Step-time traces of a training job, each ending in one hang, in training seconds.

A block is (scope, seconds it runs, requested deadline); the last block is the hang (seconds None).
The shapes are the ones that decide whether a learned deadline is safe and useful: steady steps
with jitter, a first step that compiles, checkpoint and evaluation spikes inside the step's own
scope or in scopes of their own, and a hang in a step or in a checkpoint. Seeded: the same trace
every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STEP = 2.0
JITTER = 0.1
"""Steps take STEP x (1 +- JITTER), uniformly."""
COMPILE = 120.0
CHECKPOINT = 90.0
EVALUATION = 30.0
REQUESTED = 1800.0
"""What a careful user writes around a 2 s step: 30 minutes, "to be safe"."""
CHECKPOINT_EVERY = 40
EVALUATION_EVERY = 50


@dataclass(frozen=True)
class Block:
    scope: str
    seconds: float | None
    """None: the hang."""
    requested: float = REQUESTED


@dataclass(frozen=True)
class Trace:
    name: str
    blocks: list[Block]

    @property
    def hang(self) -> Block:
        return self.blocks[-1]

    def longest_healthy(self, scope: str) -> float:
        """The longest block of ``scope`` before the hang (0 if none)."""
        return max((b.seconds or 0.0 for b in self.blocks[:-1] if b.scope == scope), default=0.0)


def make(name: str, steps: int, *, compile_first: bool, spikes: str, hang_in: str, seed: int = 7) -> Trace:
    """``spikes``: "none", "same" (inside the step block) or "own" (blocks of their own scopes)."""
    rng = random.Random(seed)
    blocks = []
    for n in range(steps):
        step = STEP * (1 + rng.uniform(-JITTER, JITTER))
        if n == 0 and compile_first:
            step += COMPILE
        extra = []
        if n and spikes != "none":
            if n % CHECKPOINT_EVERY == 0:
                extra.append(("checkpoint", CHECKPOINT))
            if n % EVALUATION_EVERY == 0:
                extra.append(("evaluation", EVALUATION))
        if spikes == "same":
            step += sum(seconds for _, seconds in extra)
        blocks.append(Block("step", step))
        if spikes == "own":
            blocks.extend(Block(scope, seconds) for scope, seconds in extra)
    blocks.append(Block(hang_in, None))
    return Trace(name, blocks)


def all_traces(steps: int) -> list[Trace]:
    return [
        make("steady steps", steps, compile_first=False, spikes="none", hang_in="step"),
        make("compile on the first step", steps, compile_first=True, spikes="none", hang_in="step"),
        make("checkpoint/eval inside the step", steps, compile_first=False, spikes="same", hang_in="step"),
        make("checkpoint/eval in own scopes", steps, compile_first=True, spikes="own", hang_in="step"),
        make("hang in a checkpoint", steps, compile_first=True, spikes="own", hang_in="checkpoint"),
    ]
