"""DeadlineProfiles with real sidecars, real restarts and an API server (kmock; the real API server's
version of these tests comes with tests/cluster): a replaced pod starts adaptive from its workload's
profile, pods add up without double counting, and the API being down changes nothing but the profile."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from expiry.names import BUDGET_SPENT_REASON
from expiry_sidecar.state import read_blocks
from tests.sidecar.test_adaptive_deadlines import ADAPTIVE, RULE, blocks, kill_rule, killed_after
from tests.sidecar.test_events import NAMESPACE, log_lines
from tests.support.kubeapi import KubeApi, write_kubeconfig
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, wait_for

StartSidecar = Callable[..., Sidecar]
PROFILES = "expiry.io/v1alpha1/deadlineprofiles"
NAME = "job-train"
OWNER = '{"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "0b7c2f6e-0000-4000-8000-0001"}'


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KubeApi]:
    server = KubeApi(resources={PROFILES: ("DeadlineProfile", True)})
    monkeypatch.setenv("EXPIRY_POD_NAMESPACE", NAMESPACE)
    for name in ("EXPIRY_POD_UID", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
    yield server
    server.close()


def start(sidecar: StartSidecar, pod: Pod, monkeypatch: pytest.MonkeyPatch, name: str, *more: str) -> Sidecar:
    """The sidecar of pod ``name`` of the workload (a state file and a FIFO of its own)."""
    monkeypatch.setenv("EXPIRY_POD_NAME", name)
    state = pod.workdir / f"{name}.state"
    args = ("--adaptive-factor", "2", "--adaptive-floor", "0.1", "--state-file", str(state), *more)
    return sidecar(
        *ADAPTIVE,
        *args,
        "--deadline-profile",
        NAME,
        "--profile-owner",
        OWNER,
        fifo=pod.workdir / f"{name}.fifo",
    )


def stop(server: Sidecar) -> None:
    server.signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0


def stored(api: KubeApi) -> dict[str, Any]:
    (found,) = api.objects(PROFILES, NAMESPACE)
    return found


def scope_of(api: KubeApi, scope: str = "step") -> dict[str, Any]:
    entry: dict[str, Any] = next(e for e in stored(api)["status"]["scopes"] if e["scope"] == scope)
    return entry


def learn(pod: Pod, server: Sidecar, durations: str, expect_kill: bool = False) -> None:
    worker = Worker(pod, server.fifo, "steps", "--durations", durations, "--after", "3600")
    if expect_kill:
        assert worker.wait() == -signal.SIGKILL
        return
    worker.expect(f"done {len(durations.split(','))}")
    assert worker.wait() == 0


def test_a_replaced_pod_starts_adaptive_from_its_workloads_profile(
    pod: Pod, sidecar: StartSidecar, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = start(sidecar, pod, monkeypatch, "train-0")
    learn(pod, first, ",".join(["0.01"] * 5))
    learn(pod, first, "1.5,0.01", expect_kill=True)  # the evaluation: the one false kill
    first.wait_metric("expiry_adaptive_expirations_total", 1)
    stop(first)  # writes on shutdown
    entry = scope_of(api)
    assert entry["blocks"] == 5 and entry["killedAfterSeconds"] >= 0.099
    assert stored(api)["metadata"]["ownerReferences"][0]["name"] == "train"
    assert "held at requested deadlines" in entry["explanation"]

    second = start(sidecar, pod, monkeypatch, "train-1")  # its replacement, another pod of the Job
    assert blocks(second)["step"]["blocks"] == 5, "started from the profile"
    learn(pod, second, "1.5,0.01")  # the replaced pod passes the evaluation: held from the profile
    hang = Worker(pod, second.fifo, "steps", "--count", "0", "--after", "3600", "--hang")
    hang.expect("done 0")
    elapsed = killed_after(hang)
    match = RULE.fullmatch(kill_rule(second))
    # The sidecar times a block from when its acquire arrived, after the worker began it: 1.4999 s under load.
    assert match and int(match[3]) == 7 and float(match[2]) >= 1.45, kill_rule(second)
    assert elapsed < 2 * float(match[2]) + 3.0, "found at 2 x the evaluation, not the requested hour"
    stop(second)
    entry = scope_of(api)
    assert entry["blocks"] == 7, "5 from the first pod, 2 from the second: the seed was not given back"
    assert entry["longestSeconds"] >= 1.45 and "killedAfterSeconds" in entry


def test_a_sigkilled_sidecar_never_writes_the_same_blocks_twice(
    pod: Pod, sidecar: StartSidecar, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = start(sidecar, pod, monkeypatch, "train-0")
    learn(pod, first, "0.01,0.01,0.01")
    first.wait_metric("expiry_requests_total", 3, kind="release")
    stop(first)
    assert scope_of(api)["blocks"] == 3
    again = start(sidecar, pod, monkeypatch, "train-0")  # the same pod's sidecar, restarted
    learn(pod, again, "0.01,0.01")
    state = pod.workdir / "train-0.state"
    wait_for(lambda: read_blocks(state).scopes["step"].count == 5, what="the blocks in the journal")
    again.signal(signal.SIGKILL)
    again.process.wait(timeout=10)
    third = start(sidecar, pod, monkeypatch, "train-0")
    assert blocks(third)["step"]["blocks"] == 5, "its state file rules, no seed on top"
    stop(third)
    assert scope_of(api)["blocks"] == 5, "the 3 written before the restarts are not written again"


def test_with_the_api_down_the_state_file_rules_and_kills_go_on(
    pod: Pod, sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "down", "http://127.0.0.1:9")))
    monkeypatch.setenv("EXPIRY_POD_NAMESPACE", NAMESPACE)
    began = time.monotonic()
    server = start(sidecar, pod, monkeypatch, "train-0")
    assert time.monotonic() - began < 30, "the sidecar started without the profile"
    learn(pod, server, ",".join(["0.01"] * 5))
    hang = Worker(pod, server.fifo, "steps", "--count", "0", "--after", "3600", "--hang")
    hang.expect("done 0")
    assert killed_after(hang) < 3.0, "adaptive from its own blocks"
    assert log_lines(server, "starting without the deadline profile")
    stop(server)
    wait_for(lambda: server.process.poll() is not None)


def test_a_spent_budget_is_an_event_with_its_own_reason(
    pod: Pod, sidecar: StartSidecar, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start(sidecar, pod, monkeypatch, "train-0", "--events", "--false-kill-budget", "1")
    learn(pod, server, ",".join(["0.01"] * 5))
    learn(pod, server, "1.5", expect_kill=True)
    server.wait_metric("expiry_adaptive_suspended", 1)
    events = wait_for(
        lambda: [
            e for e in api.objects("events.k8s.io/v1/events", NAMESPACE) if e["reason"] == BUDGET_SPENT_REASON
        ],
        what="the AdaptiveDeadlinesSuspended Event",
    )
    (event,) = events
    assert event["type"] == "Warning" and event["regarding"]["name"] == "train-0"
    assert "false-kill budget" in event["note"] and "requested deadline" in event["note"]
