"""docs/quickstart.md as written: its ```sh blocks, run in order by bash against the real API server
the cluster suite starts (tests/cluster/conftest.py: the ``kubeconfig`` fixture hands it over without
the session's release, since the walkthrough installs the chart itself; it runs last).

The cleanup block (the last) also runs when an earlier one fails, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCK_TIMEOUT = 600


def blocks() -> list[str]:
    return BLOCK.findall(PAGE.read_text())


def run(block: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{ROOT / '.tools' / 'bin'}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )


def test_the_page_has_its_steps_as_valid_shell() -> None:
    found = blocks()
    assert len(found) >= 7, f"docs/quickstart.md has {len(found)} ```sh blocks"
    for block in found:
        syntax = subprocess.run(["bash", "-n", "-c", block], capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, f"{block}\n{syntax.stderr}"
    assert "helm uninstall" in found[-1], "the last block cleans up"


def test_the_walkthrough_runs_as_written(kubeconfig: Path) -> None:
    *steps, cleanup = blocks()
    try:
        for step in steps:
            result = run(step, kubeconfig)
            assert result.returncode == 0, f"$ {step}\n{result.stdout}\n{result.stderr}"
    finally:
        run(cleanup, kubeconfig)
