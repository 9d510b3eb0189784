"""The unprotected-pod report: counted while it runs, dropped when it finishes or goes, one Event per pod."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from expiry_operator.unprotected import UnprotectedPods
from tests.operator.operator_harness import KubeApi, OperatorProcess, make_tls
from tests.operator.pod_corpus import INJECTED_CASES
from tests.operator.test_operator_webhook import wait_for

NS = "team-u"


def bypassed(name: str, phase: str | None = "Pending") -> dict[str, Any]:
    """An opted-in pod the webhook never saw (created while it was down)."""
    pod = copy.deepcopy(INJECTED_CASES["jobset"])
    pod["metadata"].update(namespace=NS, name=name, uid=f"{name}-uid")
    if phase is not None:
        pod["status"] = {"phase": phase}
    return pod


def test_a_pod_is_counted_until_it_finishes_or_goes_and_reported_once() -> None:
    pods = UnprotectedPods()
    for name in ("done", "crashed", "deleted"):
        assert pods.observe("ADDED", bypassed(name)) is True
    assert pods.counts() == {NS: 3}
    for name in ("done", "crashed", "deleted"):  # updates while running: no second report
        running = bypassed(name, "Running")
        running["metadata"]["labels"]["step"] = "42"
        assert pods.observe("MODIFIED", running) is False
    assert pods.counts() == {NS: 3}
    assert pods.observe("MODIFIED", bypassed("done", "Succeeded")) is False
    assert pods.observe("MODIFIED", bypassed("crashed", "Failed")) is False
    assert pods.counts() == {NS: 1}
    assert pods.observe("MODIFIED", bypassed("done", "Succeeded")) is False  # finished stays finished
    assert pods.observe("DELETED", bypassed("deleted", "Running")) is False
    assert pods.counts() == {NS: 0}


@pytest.fixture(scope="module")
def api() -> Iterator[KubeApi]:
    with KubeApi() as running:
        yield running


@pytest.fixture(scope="module")
def operator(api: KubeApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("unprotected")
    config = {"hangReports": {"enabled": False}}
    with OperatorProcess(api, make_tls(workdir / "tls"), workdir / "op", config=config) as running:
        yield running


def gauge(operator: OperatorProcess) -> float | None:
    for line in operator.metrics().splitlines():
        if line.startswith(f'expiry_unprotected_pods{{pod_namespace="{NS}"}}'):
            return float(line.split()[-1])
    return None


def test_the_real_operator_drops_finished_and_deleted_pods_and_reports_each_once(
    api: KubeApi, operator: OperatorProcess
) -> None:
    for name in ("done", "crashed", "deleted"):
        api.create_pod(bypassed(name))
    wait_for(lambda: gauge(operator) == 3)
    for name in ("done", "crashed", "deleted"):  # the kubelet's status updates, a user's label: no new Event
        api.patch_pod(NS, name, {"status": {"phase": "Running"}})
        api.patch_pod(NS, name, {"metadata": {"labels": {"step": "42"}}})
    api.patch_pod(NS, "done", {"status": {"phase": "Succeeded"}})
    wait_for(lambda: gauge(operator) == 2)
    api.patch_pod(NS, "crashed", {"status": {"phase": "Failed"}})
    wait_for(lambda: gauge(operator) == 1)
    api.delete_pod(NS, "deleted")
    wait_for(lambda: gauge(operator) == 0)
    api.patch_pod(NS, "done", {"metadata": {"labels": {"step": "43"}}})  # finished: neither counted nor said
    api.create_pod(bypassed("later"))
    wait_for(lambda: gauge(operator) == 1)
    reported = sorted(
        e["involvedObject"]["name"] for e in api.events(NS) if e["reason"] == "ExpiryNotInjected"
    )
    assert reported == ["crashed", "deleted", "done", "later"]
