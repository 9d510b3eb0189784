"""``expiry-sidecar run -- CMD``: the main job on a machine without Kubernetes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.sidecar import SIDECAR, WORKER, Metrics

EXAMPLE = Path(__file__).parents[2] / "examples" / "stuck_trainer.py"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SIDECAR, "run", *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_the_command_s_exit_status_is_returned() -> None:
    assert run("--", sys.executable, "-c", "raise SystemExit(3)").returncode == 3
    assert run("--", sys.executable, "-c", "pass").returncode == 0


def test_the_stuck_example_is_killed_with_its_stack_and_metrics_shown(tmp_path: Path) -> None:
    done = run(
        "--log-format",
        "text",
        "--print-metrics",
        "--stack-dumps",
        str(tmp_path),
        "--",
        sys.executable,
        str(EXAMPLE),
    )
    assert done.returncode == 128 + 9, done.stderr
    assert "step 3: loss" in done.stdout and "step 4: loss" not in done.stdout
    assert 'stuck_trainer.py", line 20 in train_step' in done.stderr, (
        "the stack was not shown before the kill"
    )
    metrics = Metrics("".join(line + "\n" for line in done.stderr.splitlines() if line.startswith("expiry_")))
    assert metrics("expiry_kills_total", signal="SIGKILL") == 1
    assert metrics("expiry_requests_total", kind="acquire") == 4
    assert list(tmp_path.glob("*.stack"))


def test_the_command_finds_the_server_through_the_torch_variable() -> None:
    done = run("--print-metrics", "--", sys.executable, WORKER, "blocks", "--count", "7", "--after", "60")
    assert done.returncode == 0, done.stderr
    assert "done 7" in done.stdout
    assert 'expiry_requests_total{kind="release"} 7.0' in done.stderr


def test_without_a_command_it_says_how_to_call_it() -> None:
    done = run()
    assert done.returncode == 2
    assert "run needs a command" in done.stderr


def test_torchrun_s_own_file_timer_is_refused_before_the_command_starts(tmp_path: Path) -> None:
    started = tmp_path / "started"
    command = ["--", sys.executable, "-c", f"open({str(started)!r}, 'w')"]
    done = run(*command, env={**os.environ, "TORCHELASTIC_ENABLE_FILE_TIMER": "1"})
    assert done.returncode == 2
    assert "TORCHELASTIC_ENABLE_FILE_TIMER=1 is set" in done.stderr and "Unset it" in done.stderr
    assert not started.exists()
    assert run(*command, env={**os.environ, "TORCHELASTIC_ENABLE_FILE_TIMER": "0"}).returncode == 0
    assert started.exists()
