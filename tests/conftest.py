"""Fixtures shared by every part's tests, and the CI skip policy.

Skip policy: with ``CI`` set (to anything but "" or "false"), a skipped test FAILS unless it is marked
``@pytest.mark.allow_skip("reason")``. A skip in CI means a real part (root, promtool, torch, py-spy,
...) was missing, so the claim the test makes went unproven: CI must say so, not stay green. Only a
true limit of the machine (say, a kernel feature) earns ``allow_skip``, with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.support.pod import Pod, can_make_pods
from tests.support.sidecar import Sidecar


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    reason = can_make_pods()
    if reason:
        pytest.skip(reason)
    made = Pod(tmp_path)
    yield made
    made.close()


@pytest.fixture
def sidecar(pod: Pod) -> Iterator[Callable[..., Sidecar]]:
    """Start a real ``expiry-sidecar serve`` in the pod: ``sidecar(*extra_args)``."""
    started: list[Sidecar] = []

    def start(*args: str, fifo: Path | None = None, user: int | None = None) -> Sidecar:
        made = Sidecar(pod, *args, fifo=fifo, user=user)
        started.append(made)
        return made

    yield start
    for made in started:
        if made.process.poll() is None:
            made.process.kill()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    report = yield
    assert isinstance(report, pytest.TestReport)
    if (
        in_ci()
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("allow_skip") is None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI ({reason}): the real part this test needs is missing here. Provide it"
            " (scripts/bootstrap dev installs the tools; the PID-namespace tests need root), or, for a"
            ' true limit of the machine only, mark the test @pytest.mark.allow_skip("why")'
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object, object]:
    """A module skipped whole at import (``importorskip`` at the top) fails in CI too."""
    report = yield
    assert isinstance(report, pytest.CollectReport)
    if in_ci() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped whole in CI ({reason}): install what it needs"
    return report
