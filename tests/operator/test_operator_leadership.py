"""One replica runs the pod watches: the Lease rules alone, then two real operators against kmock."""

from __future__ import annotations

import copy
import datetime
import functools
import time
from pathlib import Path
from typing import Any

import pytest

from expiry_operator.leadership import (
    Action,
    Elector,
    Lease,
    LeaseTiming,
    release_patch,
    renew_patch,
    takeover_patch,
)
from expiry_operator.settings import ConfigError, settings_from_dict
from tests.operator.operator_harness import KubeApi, OperatorProcess, Tls, make_tls
from tests.operator.pod_corpus import INJECTED_CASES
from tests.support import sidecar as support

TIMING = LeaseTiming(duration=15, renew_deadline=10, retry_period=2)


def lease(holder: str, renew: str = "t0", *, duration: float | None = 15, version: str | None = "7") -> Lease:
    return Lease(holder=holder, duration=duration, renew_time=renew, transitions=3, resource_version=version)


# --- the rules -------------------------------------------------------------------------------------


def test_no_lease_is_created_and_our_own_is_renewed() -> None:
    elector = Elector("me", TIMING)
    assert elector.decide(None, 0.0) is Action.CREATE
    assert elector.decide(lease("me"), 1.0) is Action.RENEW


def test_a_live_lease_is_left_alone_until_unchanged_for_its_duration_on_our_clock() -> None:
    elector = Elector("me", TIMING)
    assert elector.decide(lease("other", "t0"), 100.0) is Action.WAIT
    assert elector.decide(lease("other", "t0"), 114.9) is Action.WAIT
    assert elector.decide(lease("other", "t0"), 115.0) is Action.ACQUIRE


def test_a_renewal_restarts_the_wait() -> None:
    elector = Elector("me", TIMING)
    elector.decide(lease("other", "t0"), 100.0)
    assert elector.decide(lease("other", "t1"), 110.0) is Action.WAIT  # renewed: seen anew at 110
    assert elector.decide(lease("other", "t1"), 124.0) is Action.WAIT
    assert elector.decide(lease("other", "t1"), 125.0) is Action.ACQUIRE


def test_the_holders_own_duration_counts() -> None:
    elector = Elector("me", TIMING)
    elector.decide(lease("other", duration=4), 0.0)
    assert elector.decide(lease("other", duration=4), 4.0) is Action.ACQUIRE
    fallback = Elector("me", TIMING)
    fallback.decide(lease("other", duration=None), 0.0)
    assert fallback.decide(lease("other", duration=None), 14.0) is Action.WAIT


def test_a_released_lease_is_taken_at_once() -> None:
    assert Elector("me", TIMING).decide(lease(""), 0.0) is Action.ACQUIRE


def test_leading_ends_at_the_renew_deadline_or_when_another_holds_it() -> None:
    elector = Elector("me", TIMING)
    assert not elector.leading(0.0)
    elector.written(50.0)
    assert elector.leading(59.9) and elector.leading_until() == 60.0
    assert not elector.leading(60.0)
    elector.written(61.0)
    assert elector.decide(lease("other"), 62.0) is Action.WAIT
    assert not elector.leading(62.0)


def test_writes_are_conditional_on_the_version_read() -> None:
    taken = takeover_patch(lease("old"), "me", TIMING, "now")
    assert taken["metadata"] == {"resourceVersion": "7"}
    assert taken["spec"] == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": "now",
        "renewTime": "now",
        "leaseTransitions": 4,
    }
    assert renew_patch(lease("me"), TIMING, "later")["spec"] == {
        "renewTime": "later",
        "leaseDurationSeconds": 15,
    }
    released = release_patch(lease("me"), "end")
    assert released["spec"]["holderIdentity"] is None and released["metadata"] == {"resourceVersion": "7"}
    assert takeover_patch(lease("old", version=None), "me", TIMING, "now")["metadata"] == {}


@pytest.mark.parametrize(
    "timing",
    [
        {"leaseDuration": 10, "renewDeadline": 10},
        {"retryPeriod": 12},
        {"leaseDuration": 0.5, "renewDeadline": 0.4, "retryPeriod": 0.1},
    ],
)
def test_timings_that_allow_two_leaders_are_refused(timing: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="leaderElection"):
        settings_from_dict({"leaderElection": timing})


# --- two real operators ----------------------------------------------------------------------------

NAMESPACE = "expiry-system"


wait_for = functools.partial(support.wait_for, timeout=20)


def holder(api: KubeApi) -> str:
    leases = api.objects("coordination.k8s.io/v1/leases", NAMESPACE)
    return str(leases[0]["spec"].get("holderIdentity") or "") if leases else ""


# Each pod in a namespace of its own: kmock 0.8 ignores generateName, so a second Event in one
# namespace (kopf names them kopf-event-...) would be refused as a duplicate.


def renew_time(api: KubeApi) -> float:
    text = api.objects("coordination.k8s.io/v1/leases", NAMESPACE)[0]["spec"]["renewTime"]
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def not_injected(api: KubeApi, pod: str) -> list[dict[str, Any]]:
    return [
        event
        for event in api.events(pod)
        if event["reason"] == "ExpiryNotInjected" and event["involvedObject"]["name"] == pod
    ]


def bypassed_pod(api: KubeApi, name: str) -> None:
    pod = copy.deepcopy(INJECTED_CASES["jobset"])  # annotated, but it never went through the webhook
    pod["metadata"].update(namespace=name, name=name)
    api.create_pod(pod)


def replica(api: KubeApi, tls: Tls, workdir: Path, name: str, **timing: float) -> OperatorProcess:
    return OperatorProcess(
        api,
        tls,
        workdir / name,
        config={"leaderElection": {"leaseNamespace": NAMESPACE, **timing}},
        env={"EXPIRY_POD_NAME": name},
    )


def leading(operator: OperatorProcess) -> bool:
    return "expiry_operator_leading 1.0" in operator.metrics()


def test_one_replica_reports_and_the_other_takes_over_on_sigterm(tmp_path: Path) -> None:
    # A long lease: the follower can only take over in time if the leader releases it when it stops.
    timing = {"leaseDuration": 60, "renewDeadline": 40, "retryPeriod": 0.5}
    tls = make_tls(tmp_path / "tls")
    with KubeApi() as api, replica(api, tls, tmp_path, "op-a", **timing) as a:
        wait_for(lambda: holder(api) == "op-a", what="op-a holding the lease")
        with replica(api, tls, tmp_path, "op-b", **timing) as b:
            bypassed_pod(api, "first")
            wait_for(lambda: not_injected(api, "first"), what="the ExpiryNotInjected Event")
            time.sleep(2)  # four retry periods: time enough for a second watcher to post too
            assert len(not_injected(api, "first")) == 1
            assert "unprotected pod first/first" in a.log()
            assert "unprotected pod" not in b.log()
            assert leading(a) and not leading(b)
            assert "expiry_unprotected_pods{" not in b.metrics()  # b opened no watch at all

            a.stop()
            wait_for(lambda: holder(api) == "op-b", what="op-b taking over the released lease")
            bypassed_pod(api, "second")
            wait_for(lambda: not_injected(api, "second"), what="op-b reporting")
            assert "unprotected pod second/second" in b.log()
            assert leading(b)


def test_a_killed_leaders_lease_expires_and_the_other_takes_over(tmp_path: Path) -> None:
    timing = {"leaseDuration": 3, "renewDeadline": 2, "retryPeriod": 0.5}
    tls = make_tls(tmp_path / "tls")
    with KubeApi() as api, replica(api, tls, tmp_path, "op-a", **timing) as a:
        wait_for(lambda: holder(api) == "op-a", what="op-a holding the lease")
        with replica(api, tls, tmp_path, "op-b", **timing) as b:
            wait_for(lambda: "leader election: lease" in b.log(), what="op-b electing")
            time.sleep(1)
            assert holder(api) == "op-a" and not leading(b)
            renewed = renew_time(api)  # op-a's last renewal is this one or a later one
            a.kill()  # no release: op-b must wait out the lease
            wait_for(lambda: holder(api) == "op-b", what="op-b taking over the expired lease")
            # op-b saw that renewal after it was written, and waited the 3 s lease from then.
            # (A lower bound: load can only make it later.)
            waited = time.time() - renewed
            assert waited >= 3, f"took over {waited:.2f} s after op-a's renewal, before the lease expired"
            bypassed_pod(api, "orphan")
            wait_for(lambda: not_injected(api, "orphan"), what="op-b reporting")
            assert "unprotected pod orphan/orphan" in b.log()


def test_without_leader_only_handlers_there_is_no_lease_and_with_election_off_no_lease_either(
    tmp_path: Path,
) -> None:
    tls = make_tls(tmp_path / "tls")
    with KubeApi() as api:
        quiet = OperatorProcess(
            api,
            tls,
            tmp_path / "quiet",
            config={"unprotectedPods": {"watch": False}, "hangReports": {"enabled": False}},
            env={"EXPIRY_POD_NAME": "q"},
        )
        alone = OperatorProcess(
            api,
            tls,
            tmp_path / "alone",
            config={"leaderElection": {"enabled": False}},
            env={"EXPIRY_POD_NAME": "s"},
        )
        with quiet, alone:
            bypassed_pod(api, "lone")
            wait_for(lambda: not_injected(api, "lone"), what="the election-less replica reporting")
            assert "unprotected pod lone/lone" in alone.log() and "unprotected pod" not in quiet.log()
            assert not api.objects("coordination.k8s.io/v1/leases", "default")
            assert "leader election" not in quiet.log() + alone.log()
