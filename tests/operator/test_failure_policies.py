"""The manifests of docs/failure-policies.md: injected by the real ``expiry-operator inject``, valid for
Kubernetes, and doing what the page says when a worker hangs, crashes or is OOM-killed.

kubernetes-validate has the schemas of Kubernetes' own kinds only: a Job is validated whole; a JobSet's
replicated Jobs as Jobs, a PyTorchJob's replica templates as Pods. The Job controller's first-match
evaluation of podFailurePolicy is re-enacted on the injected Job for the three ways a pod fails.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.operator.injection_checks import NEWEST, sidecars
from tests.operator.test_operator_cli import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "failure-policies"
HUNG = "expiry.io/WorkerHung"  # the sidecar's pod condition (DESIGN.md, --pod-condition)


def injected(name: str) -> dict[str, Any]:
    result = run("inject", "-f", str(EXAMPLES / name))
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def as_pod(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", **template}


def check_template(template: dict[str, Any]) -> None:
    assert len(sidecars(as_pod(template))) == 1
    kubernetes_validate.validate(as_pod(template), NEWEST, strict=True)


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "job-fail-on-hang.yaml",
        "job-ignore-hangs.yaml",
        "jobset-restart-on-hang.yaml",
        "pytorchjob-exitcode.yaml",
    ]


def failed_pod(exit_code: int, *conditions: str) -> dict[str, Any]:
    return {
        "status": {
            "phase": "Failed",
            "conditions": [{"type": condition, "status": "True"} for condition in conditions],
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": exit_code}}}],
        }
    }


HANG = failed_pod(137, HUNG)  # the sidecar set the condition, then SIGKILLed the worker
OOM = failed_pod(137)  # the same exit code, no condition
CRASH = failed_pod(1)


def policy_action(job: dict[str, Any], pod: dict[str, Any]) -> str:
    """The first matching rule's action, as the Job controller decides it; "Count" when none matches."""
    statuses = {s["name"]: s["state"]["terminated"]["exitCode"] for s in pod["status"]["containerStatuses"]}
    conditions = {(c["type"], c["status"]) for c in pod["status"]["conditions"]}
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        if "onPodConditions" in rule:
            if any((c["type"], c.get("status", "True")) in conditions for c in rule["onPodConditions"]):
                return str(rule["action"])
        else:
            codes = rule["onExitCodes"]
            exits = [code for name, code in statuses.items() if codes.get("containerName") in (None, name)]
            member = [(code in codes["values"]) == (codes["operator"] == "In") for code in exits if code != 0]
            if any(member):
                return str(rule["action"])
    return "Count"


@pytest.mark.parametrize(
    ("name", "hang", "oom", "crash"),
    [
        ("job-ignore-hangs.yaml", "Ignore", "FailJob", "FailJob"),
        ("job-fail-on-hang.yaml", "FailJob", "Count", "Count"),
    ],
)
def test_jobs_are_valid_and_tell_a_hang_from_a_crash(name: str, hang: str, oom: str, crash: str) -> None:
    job = injected(name)
    kubernetes_validate.validate(job, NEWEST, strict=True)
    check_template(job["spec"]["template"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert (policy_action(job, HANG), policy_action(job, OOM), policy_action(job, CRASH)) == (
        hang,
        oom,
        crash,
    )


def test_the_jobset_restarts_on_the_message_a_hang_fails_its_job_with() -> None:
    jobset = injected("jobset-restart-on-hang.yaml")
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "llama-workers-0"},
        **replicated["template"],
    }
    kubernetes_validate.validate(job, NEWEST, strict=True)
    check_template(job["spec"]["template"])
    assert policy_action(job, HANG) == "FailJob" and policy_action(job, CRASH) == "Count"
    # The Job controller's message (pkg/controller/job/pod_failure_policy.go), for rule index 0:
    message = f"Pod ml/llama-workers-0-0-x7k2p has condition {HUNG} matching FailJob rule at index 0"
    restart, otherwise = jobset["spec"]["failurePolicy"]["rules"]
    assert restart["action"] == "RestartJobSet" and otherwise["action"] == "FailJobSet"
    assert any(re.search(pattern, message) for pattern in restart["onJobFailureMessagePatterns"])
    assert not any(
        re.search(p, "Job has reached the specified backoff limit")
        for p in restart["onJobFailureMessagePatterns"]
    )


def test_the_pytorchjob_retries_exit_codes_128_to_255() -> None:
    job = injected("pytorchjob-exitcode.yaml")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    for replica in replicas.values():
        assert replica["restartPolicy"] == "ExitCode"
        check_template(replica["template"])
