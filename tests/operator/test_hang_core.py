"""The hang report's pure core: kill Events read, pods mapped to workloads, kills grouped and told."""

from __future__ import annotations

import json
from typing import Any

import pytest

from expiry_operator.hang_report import report
from expiry_operator.incidents import MAX_EXAMPLES, MAX_SIGNATURES, IncidentTracker
from expiry_operator.kill_events import KillEvent, parse_kill_event
from expiry_operator.owners import Workload, api_path, workload_of
from tests.operator.operator_harness import kill, kill_event

WAIT = ["c10d.py:2050 in all_reduce"]
STUCK = ["data.py:10 in load"]


def pod(
    name: str = "p-0", labels: dict[str, str] | None = None, owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ml", "uid": f"{name}-uid", "labels": labels or {}}
    if owner is not None:
        metadata["ownerReferences"] = [{**owner, "controller": True}]
    return {"metadata": metadata}


JOB_OWNER = {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "job-uid"}


@pytest.mark.parametrize(
    ("labels", "owner", "expected"),
    [
        (
            {"batch.kubernetes.io/job-name": "train"},
            JOB_OWNER,
            Workload("batch/v1", "Job", "ml", "train", "job-uid"),
        ),
        (
            {"job-name": "train", "controller-uid": "old"},
            None,
            Workload("batch/v1", "Job", "ml", "train", "old"),
        ),
        (
            {
                "jobset.sigs.k8s.io/jobset-name": "llama",
                "jobset.sigs.k8s.io/jobset-uid": "js",
                "job-name": "llama-w-0",
            },
            {**JOB_OWNER, "name": "llama-w-0"},
            Workload("jobset.x-k8s.io/v1alpha2", "JobSet", "ml", "llama", "js"),
        ),
        (
            {"training.kubeflow.org/job-name": "mnist"},
            {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "mnist", "uid": "pt"},
            Workload("kubeflow.org/v1", "PyTorchJob", "ml", "mnist", "pt"),
        ),
        (
            {"trainer.kubeflow.org/trainjob-name": "tj", "jobset.sigs.k8s.io/jobset-name": "tj"},
            {**JOB_OWNER, "name": "tj-node-0"},
            Workload("trainer.kubeflow.org/v1alpha1", "TrainJob", "ml", "tj"),
        ),
        (
            {"app": "web"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d", "uid": "rs"},
            Workload("apps/v1", "ReplicaSet", "ml", "web-5d", "rs"),
        ),
        ({}, None, Workload("v1", "Pod", "ml", "p-0", "p-0-uid")),
    ],
    ids=["job", "job-legacy-label", "jobset", "pytorchjob", "trainjob", "replicaset", "bare-pod"],
)
def test_pods_map_to_their_outermost_workload(
    labels: dict[str, str], owner: dict[str, Any] | None, expected: Workload
) -> None:
    assert workload_of(pod(labels=labels, owner=owner)) == expected


def test_api_paths_of_workloads() -> None:
    assert api_path(Workload("batch/v1", "Job", "ml", "t")) == "/apis/batch/v1/namespaces/ml/jobs/t"
    assert api_path(Workload("v1", "Pod", "ml", "p")) == "/api/v1/namespaces/ml/pods/p"
    assert api_path(Workload("apps/v1", "ReplicaSet", "ml", "r")) is None


def event(name: str, kills: list[dict[str, Any]], **kwargs: Any) -> KillEvent:
    parsed = parse_kill_event(kill_event(pod(name), kills, **kwargs))
    assert parsed is not None
    return parsed


def test_kill_events_are_read_and_other_events_ignored() -> None:
    parsed = event("p-3", [kill(3, "train.py:25", WAIT, deadline=100.5)], truncated=4)
    assert (parsed.pod, parsed.namespace, parsed.reason, parsed.workers) == ("p-3", "ml", "WorkerKilled", 5)
    assert parsed.kills[0].rank == 3 and parsed.kills[0].deadline == 100.5
    assert parsed.kills[0].frames == tuple(WAIT)
    other = kill_event(pod(), [])
    assert parse_kill_event({**other, "reportingController": "kubelet"}) is None
    assert parse_kill_event({**other, "reason": "Started"}) is None


def test_an_unreadable_kill_list_still_counts_one_worker() -> None:
    body = kill_event(pod(), [])
    body["metadata"]["annotations"]["expiry.io/kills"] = "{not json"
    parsed = parse_kill_event(body)
    assert parsed is not None and parsed.kills == () and parsed.workers == 1


JOB = Workload("batch/v1", "Job", "ml", "train", "u")


def test_an_incident_closes_after_a_quiet_window_or_its_maximum_span() -> None:
    tracker = IncidentTracker(window=5, max_span=20)
    tracker.add(JOB, event("a", [kill(0, "s", WAIT)]), now=0)
    tracker.add(JOB, event("b", [kill(1, "s", WAIT)]), now=4)
    assert list(tracker.pop_due(8.9)) == []
    (closed,) = tracker.pop_due(9)
    assert closed.workers == 2 and closed.pods == {"a", "b"}
    for second in range(0, 30, 3):  # kills that never stop: still reported once max_span has passed
        tracker.add(JOB, event(f"p{second}", [kill(0, "s", WAIT)]), now=100 + second)
        if second < 20:
            assert list(tracker.pop_due(100 + second)) == []
    assert len(list(tracker.pop_due(121))) == 1


def test_kills_of_different_workloads_never_share_an_incident() -> None:
    tracker = IncidentTracker(window=5, max_span=20)
    other = Workload("batch/v1", "Job", "ml", "other", "v")
    same_name_elsewhere = Workload("batch/v1", "Job", "team-b", "train", "w")
    created_again = Workload("batch/v1", "Job", "ml", "train", "u2")
    for workload in (JOB, other, same_name_elsewhere, created_again, JOB):
        tracker.add(workload, event("x", [kill(0, "s", WAIT)]), now=0)
    incidents = {incident.workload.key: incident.workers for incident in tracker.pop_due(10)}
    assert incidents == {JOB.key: 2, other.key: 1, same_name_elsewhere.key: 1, created_again.key: 1}


def incident_of(*events: KillEvent) -> Any:
    tracker = IncidentTracker(window=1, max_span=10)
    for each in events:
        tracker.add(JOB, each, now=0)
    (incident,) = tracker.pop_due(5)
    return incident


def test_the_odd_rank_out_is_named_and_the_first_deadline_found() -> None:
    hang = report(
        incident_of(
            event("p-0", [kill(0, "s", WAIT, deadline=10.0), kill(1, "s", WAIT, deadline=10.2)]),
            event("p-1", [kill(2, "s", STUCK, deadline=9.5), kill(3, "s", WAIT, deadline=10.1)]),
        )
    )
    assert [(odd.worker.rank, odd.worker.pod) for odd in hang.odd] == [(2, "p-1")]
    assert (hang.majority_workers, hang.odd_workers) == (3, 1)
    message = hang.message()
    assert message.startswith("4 workers in 2 pods of Job train passed their deadline (4 killed).")
    assert "First deadline passed at 1970-01-01T00:00:09.500Z: rank 2 (pod p-1)" in message
    assert "Odd ones out (1): rank 2 (pod p-1) in data.py:10 in load (scope s)." in message
    assert json.loads(hang.details_json())["oddOnesOut"][0]["rank"] == 2


def test_a_different_scope_is_odd_and_a_missing_stack_is_judged_by_scope() -> None:
    hang = report(
        incident_of(
            event("p-0", [kill(0, "step", []), kill(1, "step", WAIT)]),
            event("p-1", [kill(2, "step", WAIT), kill(3, "load", [])]),
        )
    )
    assert [odd.worker.rank for odd in hang.odd] == [3]
    assert hang.majority_workers == 3


def test_a_tie_names_nobody() -> None:
    hang = report(incident_of(event("p-0", [kill(0, "s", WAIT), kill(1, "s", STUCK)])))
    assert hang.majority is None and hang.odd == ()
    assert "No majority: the workers stopped in 2 different places." in hang.message()


def test_observed_and_failed_kills_are_told_apart() -> None:
    hang = report(
        incident_of(
            event("p-0", [kill(0, "s", WAIT)], reason="WorkerHangObserved"),
            event("p-1", [kill(1, "s", WAIT)], reason="WorkerKillFailed", truncated=2),
        )
    )
    assert (
        "4 workers in 2 pods of Job train passed their deadline (3 kill failed, 1 observed)."
        in hang.message()
    )
    assert "2 not described" in hang.message()


def test_memory_is_bounded_by_places_not_by_workers() -> None:
    """8,000 workers that all stopped in different places: a capped tally, a message within 1 KB."""
    events = [
        event(
            f"p-{index}",
            [kill(index * 8 + local, "s", [f"f.py:{index * 8 + local} in g"]) for local in range(8)],
        )
        for index in range(1000)
    ]
    incident = incident_of(*events)
    assert incident.workers == 8000 and len(incident.pods) == 1000
    assert len(incident.places) == MAX_SIGNATURES
    assert all(len(place.examples) <= MAX_EXAMPLES for place in incident.places.values())
    assert sum(place.workers for place in incident.places.values()) == 8000
    assert len(report(incident).message()) <= 1024


def test_a_collective_hang_of_8000_workers_names_its_one_culprit_within_1_kb() -> None:
    events = [
        event(
            f"p-{index}",
            [
                kill(index * 8 + local, "s", STUCK if index * 8 + local == 4242 else WAIT)
                for local in range(8)
            ],
        )
        for index in range(1000)
    ]
    hang = report(incident_of(*events))
    assert [odd.worker.rank for odd in hang.odd] == [4242] and hang.majority_workers == 7999
    assert len(hang.message()) <= 1024
