"""Adaptive deadlines with real workers, a real sidecar and real signals, in a real PID namespace.

Small floors and factors keep each test to a second or two; the bounds are generous where a loaded
machine could stretch a duration, and the rule the sidecar reports is checked against what it did.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from expiry_sidecar import cli
from expiry_sidecar.budget import FalseKillBudget
from expiry_sidecar.state import apply_budget, parse_journal, read_blocks
from tests.support.pod import Pod
from tests.support.sidecar import SIDECAR, Sidecar, Worker, wait_for

StartSidecar = Callable[..., Sidecar]
ADAPTIVE = ("--deadlines", "adaptive", "--adaptive-min-samples", "5")
RULE = re.compile(r"adaptive: (\S+) x (\S+) s longest of (\d+) blocks; requested (\S+) s")


def killed_after(worker: Worker) -> float:
    """Seconds from just before the worker armed its block to its death by SIGKILL as seen here: at
    least the time the sidecar let it live (CLOCK_MONOTONIC is one clock for the whole machine)."""
    said, armed_at = worker.readline().split()
    assert said == "armed"
    assert worker.wait() == -signal.SIGKILL
    return time.monotonic() - float(armed_at)


def kill_rule(server: Sidecar) -> str:
    kill = wait_for(lambda: next((e for e in server.logs() if e["message"] == "killed a stuck worker"), None))
    rule: str = kill["rule"]
    return rule


def blocks(server: Sidecar) -> dict[str, dict[str, float]]:
    doc = requests.get(f"{server.url}/blocks", timeout=5).json()
    return {entry["scope"]: entry for entry in doc["scopes"]}


@pytest.mark.parametrize("client", ["expiry", "torch"])
def test_a_learned_scope_hang_is_killed_at_factor_times_its_longest_block(
    pod: Pod, sidecar: StartSidecar, client: str
) -> None:
    server = sidecar(*ADAPTIVE, "--adaptive-factor", "5", "--adaptive-floor", "0.2")
    worker = Worker(
        pod,
        server.fifo,
        "steps",
        "--count",
        "5",
        "--step",
        "0.1",
        "--after",
        "3600",
        "--hang",
        "--client",
        client,
    )
    worker.expect("done 5")
    elapsed = killed_after(worker)
    match = RULE.fullmatch(kill_rule(server))
    assert match, kill_rule(server)
    factor, longest, count, requested = float(match[1]), float(match[2]), int(match[3]), float(match[4])
    assert (factor, count, requested) == (5.0, 5, 3600.0)
    assert 0.09 <= longest < 0.6, (
        "the longest block is the worker's 0.1 s step, give or take a loaded machine"
    )
    assert elapsed >= 5 * longest * 0.99, "killed before 5 x the longest block"
    assert elapsed < 5 * longest + 3.0, "not killed at 5 x the longest block"
    metrics = server.metrics()
    assert metrics("expiry_kills_total", signal="SIGKILL") == 1
    assert metrics("expiry_block_duration_seconds_count") == 5


def test_blocks_within_factor_times_the_longest_are_never_killed(pod: Pod, sidecar: StartSidecar) -> None:
    """Each block is ~5x the longest before it, inside the 10x rule: the longest grows with them (and
    a short block between does not shrink it)."""
    server = sidecar(*ADAPTIVE, "--adaptive-factor", "10", "--adaptive-floor", "0.01")
    durations = "0.04,0.04,0.04,0.04,0.04,0.2,0.05,1.0"
    worker = Worker(pod, server.fifo, "steps", "--durations", durations, "--after", "3600")
    worker.expect("done 8")
    assert worker.wait() == 0
    metrics = server.wait_metric("expiry_requests_total", 8, kind="release")
    assert metrics("expiry_expirations_total") == 0
    assert metrics("expiry_blocks_over_adaptive_deadline_total") == 0
    assert blocks(server)["step"]["longest"] >= 0.9


def test_before_warm_up_the_requested_deadline_holds(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar(*ADAPTIVE, "--adaptive-factor", "5", "--adaptive-floor", "0.05")
    worker = Worker(pod, server.fifo, "steps", "--count", "4", "--step", "0.01", "--after", "1.5", "--hang")
    worker.expect("done 4")
    assert killed_after(worker) >= 1.5, "adaptive fired before the scope had 5 blocks"
    assert kill_rule(server) == "requested 1.5 s (adaptive warming up: 4 of 5 blocks)"


def test_the_floor_holds_for_quick_blocks(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar(*ADAPTIVE, "--adaptive-factor", "5", "--adaptive-floor", "0.8")
    worker = Worker(pod, server.fifo, "steps", "--count", "5", "--step", "0.01", "--after", "3600", "--hang")
    worker.expect("done 5")
    elapsed = killed_after(worker)
    assert 0.8 <= elapsed < 3.0
    assert kill_rule(server).startswith("adaptive: floor 0.8 s (5 x ")


def test_the_requested_deadline_stays_the_upper_bound(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar(*ADAPTIVE, "--adaptive-factor", "50", "--adaptive-floor", "0.01")
    worker = Worker(pod, server.fifo, "steps", "--count", "5", "--step", "0.1", "--after", "0.6", "--hang")
    worker.expect("done 5")
    elapsed = killed_after(worker)
    assert 0.6 <= elapsed < 4.0, "50 x 0.1 s = 5 s is later than the 0.6 s requested"
    # The sidecar counts the 0.6 s from when the block reached it: a loaded machine shows 0.599 s.
    assert re.match(r"requested 0\.(6|59\d) s \(adaptive: 50 x ", kill_rule(server)), kill_rule(server)


def test_requested_deadlines_count_the_blocks_adaptive_would_have_killed(
    pod: Pod, sidecar: StartSidecar, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    server = sidecar(
        "--adaptive-min-samples",
        "5",
        "--adaptive-factor",
        "2",
        "--adaptive-floor",
        "0.05",
        "--state-file",
        str(state),
    )
    worker = Worker(
        pod, server.fifo, "steps", "--durations", "0.05,0.05,0.05,0.05,0.05,0.6", "--after", "3600"
    )
    worker.expect("done 6")
    assert worker.wait() == 0, "requested deadlines kill nothing the client did not ask for"
    metrics = server.wait_metric("expiry_blocks_over_adaptive_deadline_total", 1)
    assert metrics("expiry_block_duration_seconds_count") == 6
    assert metrics("expiry_block_duration_seconds_bucket", le="0.256") == 5
    assert metrics("expiry_block_duration_seconds_bucket", le="1048.576") == 6
    assert metrics("expiry_block_duration_seconds_sum") >= 0.7  # arrivals, not sleeps, are timed
    step = blocks(server)["step"]
    assert step["blocks"] == 6 and step["requested"] == pytest.approx(3600, abs=1)
    assert 0.04 <= step["p50"] <= 0.2 and step["longest"] >= 0.5

    rule = ["--adaptive-min-samples", "5", "--adaptive-factor", "2", "--adaptive-floor", "0.05"]
    for source in (["--url", server.url], ["--state-file", str(state), *rule]):
        advice = subprocess.run(
            [SIDECAR, "advise", *source], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        row = next(line for line in advice.splitlines() if line.startswith("step "))
        assert row.split()[1] == "6", advice
        suggested = 2 * step["longest"]
        assert f"3,600 s today, {suggested:.3g} s with the suggestion" in row, advice


def test_a_sigkilled_sidecar_keeps_what_it_learned(pod: Pod, sidecar: StartSidecar, tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    args = (*ADAPTIVE, "--adaptive-factor", "5", "--adaptive-floor", "0.2", "--state-file", state)
    first = sidecar(*args)
    learner = Worker(pod, first.fifo, "steps", "--count", "5", "--step", "0.1", "--after", "3600")
    learner.expect("done 5")
    assert learner.wait() == 0
    first.wait_metric("expiry_block_duration_seconds_count", 5)
    first.signal(signal.SIGKILL)
    first.process.wait(timeout=10)

    second = sidecar(*args)
    assert blocks(second)["step"]["blocks"] == 5
    hang = Worker(pod, second.fifo, "steps", "--count", "0", "--after", "3600", "--hang")
    hang.expect("done 0")
    elapsed = killed_after(hang)
    match = RULE.fullmatch(kill_rule(second))
    assert match and int(match[3]) == 5, kill_rule(second)
    assert 5 * float(match[2]) * 0.99 <= elapsed < 5 * float(match[2]) + 3.0


def test_blocks_is_json_per_scope(pod: Pod, sidecar: StartSidecar) -> None:
    server = sidecar("--deadlines", "adaptive")
    response = requests.get(f"{server.url}/blocks", timeout=5)
    assert response.headers["Content-Type"] == "application/json"
    doc = response.json()
    assert doc["policy"] == {
        "deadlines": "adaptive",
        "adaptive_factor": 5.0,
        "adaptive_min_samples": 20,
        "adaptive_floor": 60.0,
    }
    assert doc["scopes"] == [] and doc["pooled"]["blocks"] == 0
    assert json.dumps(doc)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--adaptive-factor", "0"),
        ("--adaptive-factor", "-5"),
        ("--adaptive-factor", "nan"),
        ("--adaptive-factor", "inf"),
        ("--adaptive-floor", "0"),
        ("--adaptive-floor", "-1"),
        ("--adaptive-floor", "infinity"),
        ("--adaptive-min-samples", "0"),
        ("--adaptive-min-samples", "-3"),
        ("--adaptive-min-samples", "2.5"),
        ("--deadlines", "sometimes"),
        ("--mode", "audit"),
    ],
)
def test_bad_policy_flags_are_rejected_at_start_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_the_sidecar_refuses_to_start_on_a_bad_flag(tmp_path: Path) -> None:
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "expiry_sidecar.cli",
            "serve",
            "--fifo",
            str(tmp_path / "f"),
            "--adaptive-factor",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert started.returncode == 2
    assert "--adaptive-factor" in started.stderr and not (tmp_path / "f").exists()


def test_block_durations_by_scope_only_under_scope_metrics(pod: Pod, sidecar: StartSidecar) -> None:
    plain, by_scope = sidecar(), sidecar("--scope-metrics", fifo=pod.workdir / "by-scope.fifo")
    for server in (plain, by_scope):
        worker = Worker(pod, server.fifo, "steps", "--count", "3", "--step", "0.01", "--after", "60")
        worker.expect("done 3")
        assert worker.wait() == 0
    assert (
        plain.wait_metric("expiry_block_duration_seconds_count", 3)(
            "expiry_block_duration_seconds_count", scope="step"
        )
        == 0
    )
    metrics = by_scope.wait_metric("expiry_block_duration_seconds_count", 3, scope="step")
    assert metrics("expiry_block_duration_seconds_count", scope="other") == 0
    assert "expiry_block_duration_seconds_count" not in {
        name for (name, labels) in metrics.samples if not labels
    }, "with scope labels, no unlabelled series beside them"


def test_a_recurring_long_block_costs_one_kill_across_worker_and_sidecar_restarts(
    pod: Pod, sidecar: StartSidecar, tmp_path: Path
) -> None:
    """30 quick steps, then a step with an evaluation inside, 15x longer: killed once at the adaptive
    deadline; the restarted worker resumes at that same step (as torchrun restarts it from its
    checkpoint) and passes it, even after the sidecar itself was SIGKILLed in between; then a hang is
    still found at 2 x the evaluation, long before the requested hour."""
    state = str(tmp_path / "state.json")
    args = (*ADAPTIVE, "--adaptive-factor", "2", "--adaptive-floor", "0.1", "--state-file", state)
    first = sidecar(*args)
    learner = Worker(pod, first.fifo, "steps", "--count", "30", "--step", "0.005", "--after", "3600")
    learner.expect("done 30")
    assert learner.wait() == 0
    first.wait_metric("expiry_requests_total", 30, kind="release")
    evaluation = ("steps", "--durations", "1.5,0.005", "--after", "3600")
    killed = Worker(pod, first.fifo, *evaluation)
    assert killed.wait() == -signal.SIGKILL, "the first evaluation is killed at the adaptive deadline"
    assert kill_rule(first).startswith("adaptive: floor 0.1 s")
    first.wait_metric("expiry_adaptive_expirations_total", 1)
    wait_for(lambda: read_blocks(Path(state)).scopes["step"].held, what="the hold in the state file")
    first.signal(signal.SIGKILL)
    first.process.wait(timeout=10)

    second = sidecar(*args)
    restarted = Worker(pod, second.fifo, *evaluation)
    restarted.expect("done 2")
    assert restarted.wait() == 0, "the restarted worker passes the block that was killed"
    metrics = second.wait_metric("expiry_requests_total", 2, kind="release")
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0
    again = Worker(pod, second.fifo, *evaluation)
    again.expect("done 2")
    assert again.wait() == 0, "and every later one"
    hang = Worker(pod, second.fifo, "steps", "--count", "0", "--after", "3600", "--hang")
    hang.expect("done 0")
    elapsed = killed_after(hang)
    match = RULE.fullmatch(kill_rule(second))
    # The longest is the evaluation's (1.5 s slept), not a 5 ms step's; timed between the arrivals at the
    # sidecar, so an acquire read late on a loaded machine makes it a little shorter (1.49 s seen).
    assert match and float(match[1]) == 2 and float(match[2]) >= 1.0, kill_rule(second)
    assert 2 * float(match[2]) * 0.99 <= elapsed < 2 * float(match[2]) + 3.0


def test_a_held_scope_says_so_and_finds_a_hang_at_the_requested_deadline(
    pod: Pod, sidecar: StartSidecar
) -> None:
    server = sidecar(*ADAPTIVE, "--adaptive-factor", "2", "--adaptive-floor", "0.1")
    learner = Worker(pod, server.fifo, "steps", "--count", "5", "--step", "0.005", "--after", "3600")
    learner.expect("done 5")
    assert learner.wait() == 0
    killed = Worker(pod, server.fifo, "steps", "--durations", "1.5", "--after", "3600")
    assert killed.wait() == -signal.SIGKILL
    hang = Worker(pod, server.fifo, "steps", "--count", "0", "--after", "1.0", "--hang")
    hang.expect("done 0")
    assert killed_after(hang) >= 1.0, "a held scope keeps its requested deadline"
    rules = [e["rule"] for e in server.logs() if e["message"] == "killed a stuck worker"]
    assert re.fullmatch(
        r"requested \S+ s \(adaptive held: a block ran 0\.1 s and was killed .*\)", rules[-1]
    ), rules


def test_the_false_kill_budget_stops_a_storm_and_says_so(pod: Pod, sidecar: StartSidecar) -> None:
    """A slowdown outside the job (storage) makes every scope's blocks slower: after the budget's two
    adaptive kills the pod falls back to requested deadlines; the third slow block passes."""
    server = sidecar(
        *ADAPTIVE, "--adaptive-factor", "2", "--adaptive-floor", "0.1", "--false-kill-budget", "2"
    )

    def blocks_of(scope: str, durations: str) -> Worker:
        return Worker(
            pod, server.fifo, "steps", "--scope", scope, "--durations", durations, "--after", "3600"
        )

    learners = [blocks_of(scope, "0.005,0.005,0.005,0.005,0.005") for scope in ("load", "step", "save")]
    for learner in learners:
        learner.expect("done 5")
        assert learner.wait() == 0
    server.wait_metric("expiry_requests_total", 15, kind="release")
    slow = [blocks_of(scope, "1.0") for scope in ("load", "step")]
    assert [worker.wait() for worker in slow] == [-signal.SIGKILL] * 2
    server.wait_metric("expiry_adaptive_suspended", 1)
    survivor = blocks_of("save", "1.0")
    survivor.expect("done 1")
    assert survivor.wait() == 0, "after the budget, requested deadlines"
    (said,) = [e for e in server.logs() if e["message"].startswith("adaptive deadlines suspended")]
    assert said["kills"] == 2 and said["level"] == "warning"
    metrics = server.metrics()
    assert metrics("expiry_adaptive_expirations_total") == 2
    assert metrics("expiry_kills_total", signal="SIGKILL") == 2


def test_learned_statistics_survive_two_successive_sigkills(
    pod: Pod, sidecar: StartSidecar, tmp_path: Path
) -> None:
    """The first restart reads the journal and rewrites it as a snapshot; the second restart reads
    that snapshot back (and the journal appended to it)."""
    path = tmp_path / "state.json"
    args = (*ADAPTIVE, "--adaptive-factor", "5", "--adaptive-floor", "0.2", "--state-file", str(path))

    def sigkill(server: Sidecar) -> None:
        server.signal(signal.SIGKILL)
        server.process.wait(timeout=10)

    def learn(server: Sidecar, count: int, step: str) -> None:
        worker = Worker(pod, server.fifo, "steps", "--count", str(count), "--step", step, "--after", "3600")
        worker.expect(f"done {count}")
        assert worker.wait() == 0

    first = sidecar(*args)
    learn(first, 5, "0.1")
    wait_for(lambda: read_blocks(path).scopes["step"].count == 5, what="the blocks in the journal")
    sigkill(first)

    second = sidecar(*args)
    assert blocks(second)["step"]["blocks"] == 5
    sigkill(second)  # its state file is now only the snapshot it wrote at start
    assert read_blocks(path).scopes["step"].count == 5, "the rewritten snapshot holds what was learned"

    third = sidecar(*args)
    assert blocks(third)["step"]["blocks"] == 5
    learn(third, 3, "0.3")
    wait_for(lambda: read_blocks(path).scopes["step"].count == 8, what="the blocks in the journal")
    sigkill(third)

    fourth = sidecar(*args)
    step = blocks(fourth)["step"]
    assert step["blocks"] == 8 and step["longest"] >= 0.3
    hang = Worker(pod, fourth.fifo, "steps", "--count", "0", "--after", "3600", "--hang")
    hang.expect("done 0")
    elapsed = killed_after(hang)
    match = RULE.fullmatch(kill_rule(fourth))
    assert match and int(match[3]) == 8, kill_rule(fourth)
    assert 5 * float(match[2]) * 0.99 <= elapsed < 5 * float(match[2]) + 3.0


def budget_in(path: Path) -> FalseKillBudget:
    """The false-kill budget a state file holds, as a restarted sidecar reads it."""
    budget = FalseKillBudget(kills=2)
    apply_budget(parse_journal(path.read_text(), None)[1], budget)
    return budget


def test_the_false_kill_budget_survives_two_sidecar_restarts(
    pod: Pod, sidecar: StartSidecar, tmp_path: Path
) -> None:
    """Budget 2: one adaptive kill, the sidecar SIGKILLed; the restarted one counts that kill, so its
    own first adaptive kill spends the budget; SIGKILLed again, the third sidecar starts suspended and
    lets a slow block run to its requested deadline."""
    state = tmp_path / "state.json"
    args = (*ADAPTIVE, "--adaptive-factor", "2", "--adaptive-floor", "0.1", "--false-kill-budget", "2")
    args += ("--state-file", str(state))

    def sigkill(server: Sidecar) -> None:
        server.signal(signal.SIGKILL)
        server.process.wait(timeout=10)

    def blocks_of(server: Sidecar, scope: str, durations: str) -> Worker:
        return Worker(
            pod, server.fifo, "steps", "--scope", scope, "--durations", durations, "--after", "3600"
        )

    first = sidecar(*args)
    for scope in ("load", "step", "save"):
        learner = blocks_of(first, scope, "0.005,0.005,0.005,0.005,0.005")
        learner.expect("done 5")
        assert learner.wait() == 0
    first.wait_metric("expiry_requests_total", 15, kind="release")
    assert blocks_of(first, "load", "1.0").wait() == -signal.SIGKILL
    first.wait_metric("expiry_adaptive_expirations_total", 1)
    wait_for(lambda: budget_in(state).within_window(time.monotonic()) == 1, what="the kill in the state file")
    sigkill(first)

    second = sidecar(*args)
    assert second.metrics()("expiry_adaptive_suspended") == 0
    assert blocks_of(second, "step", "1.0").wait() == -signal.SIGKILL
    second.wait_metric("expiry_adaptive_suspended", 1)  # the kill before the restart counted
    said = [e for e in second.logs() if e["message"].startswith("adaptive deadlines suspended")]
    assert [e["kills"] for e in said] == [2]
    wait_for(lambda: budget_in(state).exhausted, what="the spent budget in the state file")
    sigkill(second)

    third = sidecar(*args)
    assert third.metrics()("expiry_adaptive_suspended") == 1
    survivor = blocks_of(third, "save", "1.0")
    survivor.expect("done 1")
    assert survivor.wait() == 0, "still suspended: the requested deadline"
    assert any(e["message"].startswith("adaptive deadlines stay suspended") for e in third.logs())


def test_each_container_learns_its_own_blocks(pod: Pod, sidecar: StartSidecar) -> None:
    """Two containers run the same code (one scope id): what the trainer learned (quick steps) is not
    the evaluator's deadline. The evaluator's long block, still warming up, runs to its end; a hang in
    the trainer is killed at the trainer's adaptive deadline. The container is read from each
    worker's environment (EXPIRY_CONTAINER, which the operator sets per container)."""
    server = sidecar(*ADAPTIVE, "--adaptive-factor", "2", "--adaptive-floor", "0.1", "--scope-metrics")

    def worker(container: str, *args: str) -> Worker:
        return Worker(
            pod, server.fifo, "steps", *args, "--after", "3600", env={"EXPIRY_CONTAINER": container}
        )

    learner = worker("trainer", "--count", "5", "--step", "0.005")
    learner.expect("done 5")
    assert learner.wait() == 0
    server.wait_metric("expiry_requests_total", 5, kind="release")
    evaluation = worker("evaluator", "--durations", "1.0")
    evaluation.expect("done 1")
    assert evaluation.wait() == 0, "the trainer's deadline is not the evaluator's"
    hang = worker("trainer", "--count", "0", "--hang")
    hang.expect("done 0")
    elapsed = killed_after(hang)
    assert kill_rule(server).startswith("adaptive: floor 0.1 s"), kill_rule(server)
    assert elapsed < 60, "killed at the trainer's adaptive deadline, not at the requested hour"
    learned = requests.get(f"{server.url}/blocks", timeout=5).json()["scopes"]
    assert sorted((e["container"], e["scope"], e["blocks"]) for e in learned) == [
        ("evaluator", "step", 1),
        ("trainer", "step", 5),
    ]
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    series = [line for line in text.splitlines() if line.startswith("expiry_block_duration_seconds_count{")]
    assert series == [
        'expiry_block_duration_seconds_count{scope="step"} 6.0',
        ('expiry_block_duration_seconds_count{scope="other"} 0.0'),
    ], "one series per scope, containers summed"
    advice = subprocess.run(
        [SIDECAR, "advise", "--url", server.url], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    rows = [line.split()[:3] for line in advice.splitlines() if line.startswith(("trainer: ", "evaluator: "))]
    assert sorted(rows) == [["evaluator:", "step", "1"], ["trainer:", "step", "5"]], advice
