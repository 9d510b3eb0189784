"""False kills across worker restarts and pod replacements: requested vs adaptive vs adaptive + profile.

    .venv/bin/python -m bench.restarts

Two traces (training seconds, time-scaled as in :mod:`bench.detection`: 1 training second = 5 ms),
replayed by real workers (:mod:`bench.replay`) under a real ``expiry-sidecar serve`` per pod:

- recurring evaluation inside the step: one pod, 2 s steps with a 150 s evaluation inside every
  25th step, then a hang in a step. A worker killed in a healthy block is restarted *at that block*
  (torchrun restarts it from its checkpoint, before the block), so a rule that kills the evaluation
  again each time livelocks the job: after ``RETRIES`` kills of one block the job counts as stuck.
- pod replacement: the same job in three pods one after the other (a Job's pods replaced, each with
  a fresh state file): 50 steps, 50 steps, then 10 steps and a hang; a 150 s evaluation inside every
  45th step of the job. Each pod's sidecar starts from the workload's DeadlineProfile under
  "adaptive + profile" (served by kmock here; the real API server's run comes with tests/cluster).

Rules: requested (1800 s, all torch's server offers), adaptive 5x (floor 60 s, warm-up 20 blocks),
and adaptive 5x with ``--deadline-profile``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.detection import FLOOR, WARM_UP, _wait_ready
from bench.replay import until_death
from bench.traces import JITTER, REQUESTED, STEP
from tests.support.kubeapi import KubeApi
from tests.support.sidecar import free_port, serve_command

SCALE = 0.005
EVALUATION = 150.0
RETRIES = 5
"""Kills of one block after which the job counts as stuck (a livelock)."""
OWNER = json.dumps({"apiVersion": "batch/v1", "kind": "Job", "name": "bench", "uid": "b-1"})
Block = tuple[str, float | None, float]
"""(scope, seconds or None for the hang, requested) in training seconds."""


@dataclass(frozen=True)
class Rule:
    name: str
    flags: tuple[str, ...]
    profile: bool = False


RULES = [
    Rule("requested (torch's server)", ("--deadlines", "requested")),
    Rule("adaptive 5x", ("--deadlines", "adaptive", "--adaptive-factor", "5")),
    Rule("adaptive 5x + profile", ("--deadlines", "adaptive", "--adaptive-factor", "5"), profile=True),
]


@dataclass
class Outcome:
    delay: float | None = None
    """Training seconds from the hang's acquire to the worker's death (None: not killed)."""
    false_kills: int = 0
    stuck: bool = False
    """A block was killed RETRIES times: the job would never get past it."""


def steps(first: int, count: int, every: int, rng: random.Random) -> list[Block]:
    """Steps ``first`` .. ``first + count - 1`` of the job, an evaluation inside every ``every``-th."""
    blocks: list[Block] = []
    for n in range(first, first + count):
        seconds = STEP * (1 + rng.uniform(-JITTER, JITTER))
        if n and n % every == 0:
            seconds += EVALUATION
        blocks.append(("step", seconds, REQUESTED))
    return blocks


def traces() -> dict[str, list[list[Block]]]:
    """Per trace, the pods one after the other, each a list of blocks; the last pod ends in the hang."""
    hang: Block = ("step", None, REQUESTED)
    rng = random.Random(7)
    recurring = [[*steps(0, 100, 25, rng), hang]]
    rng = random.Random(7)
    replaced = [steps(0, 50, 45, rng), steps(50, 50, 45, rng), [*steps(100, 10, 45, rng), hang]]
    return {"recurring evaluation inside the step": recurring, "pod replacement (3 pods)": replaced}


@contextmanager
def sidecar(rule: Rule, pod: int, workdir: Path, env: dict[str, str]) -> Iterator[Path]:
    """A real sidecar for pod ``pod`` (its own FIFO and state file); stopped with SIGTERM, as kubelet does."""
    flags = [*rule.flags, "--adaptive-min-samples", str(WARM_UP), "--adaptive-floor", repr(FLOOR * SCALE)]
    flags += ["--state-file", str(workdir / f"pod{pod}.state"), "--log-level", "warning"]
    if rule.profile:
        flags += ["--deadline-profile", "job-bench", "--profile-owner", OWNER]
    fifo, port = workdir / f"pod{pod}.fifo", free_port()
    with (workdir / "sidecar.log").open("a") as log:
        process = subprocess.Popen(
            serve_command(fifo, port, *flags),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "EXPIRY_POD_NAME": f"bench-{pod}"},
        )
    try:
        _wait_ready(port)
        yield fifo
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def replay(blocks: list[Block], fifo: Path, workdir: Path, outcome: Outcome) -> None:
    """Run one pod's blocks, restarting a killed worker at the block it was killed in."""
    path = workdir / "blocks.json"
    path.write_text(json.dumps([[s, None if t is None else t * SCALE, r * SCALE] for s, t, r in blocks]))
    start, kills_here = 0, 0
    while True:
        death = until_death(path, start, fifo, lambda i: blocks[i][1] is None, REQUESTED * SCALE + 30.0)
        if death.status == 0:
            return
        if blocks[death.index][1] is None:
            outcome.delay = death.seconds / SCALE if death.status == -signal.SIGKILL else None
            return
        outcome.false_kills += 1
        kills_here = kills_here + 1 if death.index == start else 1
        if kills_here >= RETRIES:
            outcome.stuck = True
            return
        start = death.index


def run(pods: list[list[Block]], rule: Rule, workdir: Path) -> Outcome:
    outcome = Outcome()
    env = {"EXPIRY_POD_NAMESPACE": f"bench-{time.monotonic_ns()}", "KUBECONFIG": str(workdir / "kubeconfig")}
    for pod, blocks in enumerate(pods):
        with sidecar(rule, pod, workdir, env) as fifo:
            replay(blocks, fifo, workdir, outcome)
        if outcome.stuck:
            break
    return outcome


def cell(outcome: Outcome) -> str:
    if outcome.stuck:
        return f"**stuck: the same block killed {RETRIES} times**"
    text = "never killed" if outcome.delay is None else f"{outcome.delay:,.0f} s"
    kills = outcome.false_kills
    return text + (f", **{kills} false kill{'s' if kills > 1 else ''}**" if kills else ", 0 false kills")


def measure(workdir: Path) -> dict[tuple[str, str], Outcome]:
    results = {}
    with KubeApi(resources={"expiry.io/v1alpha1/deadlineprofiles": ("DeadlineProfile", True)}) as api:
        api.kubeconfig(workdir / "kubeconfig")
        for name, pods in traces().items():
            for rule in RULES:
                with tempfile.TemporaryDirectory(dir=workdir) as own:
                    (Path(own) / "kubeconfig").write_bytes((workdir / "kubeconfig").read_bytes())
                    results[(name, rule.name)] = run(pods, rule, Path(own))
    return results


def table(results: dict[tuple[str, str], Outcome]) -> str:
    header = ["trace (hang in a step)", *(rule.name for rule in RULES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in traces():
        lines.append(f"| {name} | " + " | ".join(cell(results[(name, r.name)]) for r in RULES) + " |")
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="expiry-restarts-") as workdir:
        results = measure(Path(workdir))
    print(f"1 training second = {SCALE * 1000:g} ms; warm-up {WARM_UP} blocks, floor {FLOOR:g} s\n")
    print(table(results))


if __name__ == "__main__":
    main()
