"""Drain on shutdown: the real operator, SIGTERMed, stops being ready but still answers admission.

A rolling restart sends SIGTERM to a replica whose endpoint the API server may still use for a
moment; the drain (``shutdown.drainSeconds``) keeps the webhook answering meanwhile, so no opted-in
pod is admitted unprotected (the webhook fails open). The rolling restart itself, against a real
API server, is in the cluster tests.
"""

from __future__ import annotations

import copy
import functools
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonpatch
import pytest

from tests.operator.injection_checks import sidecars
from tests.operator.operator_harness import KubeApi, OperatorProcess, decoded_patch, make_tls
from tests.operator.pod_corpus import pod, trainer
from tests.support import sidecar as support

# Long enough for the checks below on a loaded machine; the test waits for the exit, not this long.
DRAIN_SECONDS = 20
wait_for = functools.partial(support.wait_for, timeout=15)


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with KubeApi() as running:
        yield running


def draining_operator(api: KubeApi, tmp_path: Path, drain: float) -> OperatorProcess:
    # No leader election, no watches: only the webhook, so the drain is all that runs at the end.
    return OperatorProcess(
        api,
        make_tls(tmp_path / "tls"),
        tmp_path / "op",
        config={
            "shutdown": {"drainSeconds": drain},
            "unprotectedPods": {"watch": False},
            "hangReports": {"enabled": False},
        },
    )


def test_sigterm_drains_not_ready_but_still_admitting_then_exits_0(api: KubeApi, tmp_path: Path) -> None:
    with draining_operator(api, tmp_path, DRAIN_SECONDS) as operator:
        assert operator.ready_status() == 200
        operator.send_signal(signal.SIGTERM)
        wait_for(lambda: operator.ready_status() == 503, what="/readyz to fail once draining")

        opted_in = pod("during-drain", {"containers": [trainer()]})
        response = operator.admit(opted_in)

        assert response["response"]["allowed"] is True
        injected = jsonpatch.JsonPatch(decoded_patch(response)).apply(copy.deepcopy(opted_in))
        assert len(sidecars(injected)) == 1, "the pod admitted during the drain was not injected"
        assert operator.ready_status() == 503, "a draining replica became ready again"
        assert operator.wait(DRAIN_SECONDS + 30) == 0
    assert "draining" in operator.log()


def test_a_second_sigterm_stops_at_once(api: KubeApi, tmp_path: Path) -> None:
    with draining_operator(api, tmp_path, 3600) as operator:
        operator.send_signal(signal.SIGTERM)
        wait_for(lambda: operator.ready_status() == 503, what="/readyz to fail once draining")
        operator.send_signal(signal.SIGTERM)
        assert operator.wait(30) == 0  # well before the hour of drain


def test_without_a_drain_period_sigterm_stops_at_once(api: KubeApi, tmp_path: Path) -> None:
    with draining_operator(api, tmp_path, 0) as operator:
        operator.send_signal(signal.SIGTERM)
        try:
            status = operator.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the operator did not stop:\n{operator.log()}")
        assert status == 0
    assert "draining" not in operator.log()
