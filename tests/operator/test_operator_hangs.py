"""The real operator turns the sidecars' kill Events (kmock) into one HangDetected Event per workload."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.operator.operator_harness import KubeApi, OperatorProcess, kill, make_tls
from tests.support import sidecar as support

WAIT = ["train.py:30 in step", "c10d.py:2050 in all_reduce"]  # innermost last
STUCK = ["train.py:28 in step", "data.py:10 in load"]
NS = "ml"


@pytest.fixture(scope="module")
def api() -> Iterator[KubeApi]:
    with KubeApi() as running:
        yield running


@pytest.fixture(scope="module")
def operator(api: KubeApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("hangs")
    config = {"hangReports": {"window": 1.0, "maxSpan": 30}}
    with OperatorProcess(api, make_tls(workdir / "tls"), workdir / "op", config=config) as running:
        yield running


wait_for = functools.partial(support.wait_for, timeout=20)


def job_pod(job: str, index: int, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-{index}",
            "namespace": NS,
            "uid": f"{job}-pod-{index}",
            "labels": {"batch.kubernetes.io/job-name": job, "job-name": job, "expiry.io/injected": "true"},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid, "controller": True}
            ],
        },
        "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
    }


def jobset_pod(jobset: str, index: int) -> dict[str, Any]:
    child = f"{jobset}-workers-0"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{child}-{index}",
            "namespace": NS,
            "labels": {
                "jobset.sigs.k8s.io/jobset-name": jobset,
                "batch.kubernetes.io/job-name": child,
                "expiry.io/injected": "true",
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": child,
                    "uid": "child-uid",
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
    }


def hang_events(api: KubeApi, name: str) -> list[dict[str, Any]]:
    return [
        e for e in api.events(NS) if e["reason"] == "HangDetected" and e["involvedObject"]["name"] == name
    ]


def hang_in(api: KubeApi, pods: list[dict[str, Any]], odd_rank: int, workers: int = 2) -> None:
    """Each pod's workers wait in all_reduce, except ``odd_rank``: stuck loading data."""
    for index, pod in enumerate(pods):
        api.create_pod(pod)
        kills = []
        for local in range(workers):
            rank = index * workers + local
            kills.append(kill(rank, "train.py:25", STUCK if rank == odd_rank else WAIT))
        api.post_kill_event(pod, kills)


def test_one_job_and_one_jobset_give_one_report_each_naming_the_odd_rank(
    api: KubeApi, operator: OperatorProcess
) -> None:
    api.create(
        "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets",
        {
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": {"name": "llama", "namespace": NS, "uid": "jobset-uid-1"},
            "spec": {},
        },
    )
    hang_in(api, [job_pod("train", i, "job-uid-1") for i in range(4)], odd_rank=5)
    hang_in(api, [jobset_pod("llama", i) for i in range(4)], odd_rank=2)

    (train,) = wait_for(lambda: hang_events(api, "train"))
    (llama,) = wait_for(lambda: hang_events(api, "llama"))
    assert train["involvedObject"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "namespace": NS,
        "name": "train",
        "uid": "job-uid-1",
    }
    assert llama["involvedObject"]["kind"] == "JobSet" and llama["involvedObject"]["uid"] == "jobset-uid-1"
    for event, odd_rank, odd_pod in ((train, 5, "train-2"), (llama, 2, "llama-workers-0-1")):
        assert event["type"] == "Warning"
        message = event["message"]
        assert message.startswith("8 workers in 4 pods of ")
        assert f"Odd ones out (1): rank {odd_rank} (pod {odd_pod}) in data.py:10 in load" in message
        assert "7 stopped in c10d.py:2050 in all_reduce" in message
        details = json.loads(event["metadata"]["annotations"]["expiry.io/incident"])
        assert [odd["rank"] for odd in details["oddOnesOut"]] == [odd_rank]
        assert details["majority"]["frames"] == WAIT and details["workers"] == 8
    time.sleep(1.5)  # a second window: still exactly one report each
    assert len(hang_events(api, "train")) == len(hang_events(api, "llama")) == 1
    metrics = operator.metrics()
    assert 'expiry_hang_incidents_total{kind="Job",pod_namespace="ml"} 1.0' in metrics
    assert 'expiry_hang_incidents_total{kind="JobSet",pod_namespace="ml"} 1.0' in metrics


def test_two_unrelated_jobs_hanging_together_are_never_merged(
    api: KubeApi, operator: OperatorProcess
) -> None:
    first = [job_pod("alpha", i, "alpha-uid") for i in range(2)]
    second = [job_pod("beta", i, "beta-uid") for i in range(2)]
    for a, b in zip(first, second, strict=True):  # interleaved, within the same window
        hang_in(api, [a], odd_rank=-1, workers=1)
        hang_in(api, [b], odd_rank=-1, workers=1)
    (alpha,) = wait_for(lambda: hang_events(api, "alpha"))
    (beta,) = wait_for(lambda: hang_events(api, "beta"))
    assert alpha["message"].startswith("2 workers in 2 pods of Job alpha")
    assert beta["message"].startswith("2 workers in 2 pods of Job beta")


def test_old_kill_events_listed_at_start_are_not_reported_again(
    api: KubeApi, operator: OperatorProcess
) -> None:
    pod = job_pod("old", 0, "old-uid")
    api.create_pod(pod)
    api.post_kill_event(pod, [kill(0, "train.py:25", WAIT)], at=time.time() - 3600)
    fresh = job_pod("fresh", 0, "fresh-uid")
    api.create_pod(fresh)
    api.post_kill_event(fresh, [kill(0, "train.py:25", WAIT)])
    wait_for(lambda: hang_events(api, "fresh"))
    assert hang_events(api, "old") == []


def test_a_pod_the_watch_has_not_shown_is_read_once_for_its_workload(
    api: KubeApi, operator: OperatorProcess
) -> None:
    unlabelled = job_pod("unseen", 0, "unseen-uid")  # not labelled injected: the owner watch skips it
    del unlabelled["metadata"]["labels"]["expiry.io/injected"]
    api.create_pod(unlabelled)
    api.post_kill_event(unlabelled, [kill(0, "train.py:25", WAIT)])
    (report,) = wait_for(lambda: hang_events(api, "unseen"))
    assert report["involvedObject"]["kind"] == "Job" and report["involvedObject"]["uid"] == "unseen-uid"
    assert pod_gets(api).count("unseen-0") == 1


def pod_gets(api: KubeApi) -> list[str]:
    return api.call(
        lambda emulator: [
            str(request.name)
            for request in emulator
            if request.resource is not None
            and request.resource.plural == "pods"
            and str(request.action.value) == "FETCH"
        ]
    )


def test_pods_the_watch_has_shown_cost_no_request_per_kill_event(
    api: KubeApi, operator: OperatorProcess
) -> None:
    pods = [job_pod("watched", i, "watched-uid") for i in range(3)]
    for pod in pods:
        api.create_pod(pod)
    marker = job_pod("marker", 0, "marker-uid")  # opted in, never injected: reported once the watch got here
    marker["metadata"]["annotations"] = {"expiry.io/enabled": "true"}
    api.create_pod(marker)
    wait_for(lambda: [e for e in api.events(NS) if e["reason"] == "ExpiryNotInjected"])
    for index, pod in enumerate(pods):
        api.post_kill_event(pod, [kill(index, "train.py:25", WAIT)])
    wait_for(lambda: hang_events(api, "watched"))
    assert not {pod["metadata"]["name"] for pod in pods} & set(pod_gets(api))
