"""The DeadlineProfile a pod's sidecar uses, and the budget and profile options as the sidecar gets them."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from expiry_operator.injection import Denied, admit
from expiry_operator.options import DEADLINE_PROFILE, FALSE_KILL_BUDGET
from expiry_operator.profiles import profile_for
from expiry_operator.settings import SidecarSettings, settings_from_dict
from expiry_sidecar import cli as sidecar_cli
from expiry_sidecar.profile import Owner
from tests.operator.pod_corpus import INJECTED_CASES
from tests.operator.test_operator_injection import inject, sidecar_of

SETTINGS = SidecarSettings()
JOB_UID = "3f1d2a4c-0000-4000-8000-00000000000a"


def job_pod(**annotations: str) -> dict[str, Any]:
    pod = copy.deepcopy(INJECTED_CASES["gpu-guaranteed"])
    metadata = pod["metadata"]
    metadata["annotations"] = {**metadata.get("annotations", {}), **annotations}
    metadata["labels"] = {
        "batch.kubernetes.io/job-name": "train",
        "batch.kubernetes.io/controller-uid": JOB_UID,
    }
    metadata["ownerReferences"] = [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": JOB_UID, "controller": True}
    ]
    return pod


def args_of(pod: dict[str, Any], settings: SidecarSettings = SETTINGS) -> list[str]:
    args: list[str] = sidecar_of(inject(pod, settings=settings))["args"]
    return args


def test_a_job_pod_writes_the_jobs_profile_owned_by_the_job() -> None:
    args = args_of(job_pod(**{DEADLINE_PROFILE: "true"}))
    assert args[args.index("--deadline-profile") + 1] == "job-train"
    owner = sidecar_cli.parser().parse_args(args).profile_owner
    assert owner == Owner("batch/v1", "Job", "train", JOB_UID), "the sidecar accepts what it gets"


def test_the_profile_is_off_by_default_and_on_by_the_operators_setting() -> None:
    assert "--deadline-profile" not in args_of(job_pod())
    assert "--deadline-profile" in args_of(job_pod(), SidecarSettings(deadline_profile=True))
    assert "--deadline-profile" not in args_of(
        job_pod(**{DEADLINE_PROFILE: "false"}), SidecarSettings(deadline_profile=True)
    )


def test_jobset_pods_share_the_jobsets_profile_and_a_lone_pod_gets_none() -> None:
    jobset = {
        "metadata": {
            "labels": {"jobset.sigs.k8s.io/jobset-name": "llm", "jobset.sigs.k8s.io/jobset-uid": "u-1"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "llm-w-0", "uid": "j"}],
        }
    }
    found = profile_for(jobset)
    assert found is not None and found.name == "jobset-llm"
    assert found.owner is not None and json.loads(found.owner)["uid"] == "u-1"
    assert profile_for({"metadata": {"name": "alone", "uid": "p"}}) is None
    lone = INJECTED_CASES["gpu-guaranteed"]
    assert "--deadline-profile" not in args_of(lone, SidecarSettings(deadline_profile=True))


def test_a_long_workload_name_still_makes_a_valid_unique_name() -> None:
    names = set()
    for tail in "ab":
        pod = job_pod()
        pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] = "x" * 250 + tail
        pod["metadata"]["ownerReferences"][0]["name"] = "x" * 250 + tail
        found = profile_for(pod)
        assert found is not None and len(found.name) <= 253
        names.add(found.name)
    assert len(names) == 2


def test_the_budget_is_passed_only_when_it_differs_from_the_sidecars_default() -> None:
    assert "--false-kill-budget" not in args_of(job_pod())
    args = args_of(job_pod(**{FALSE_KILL_BUDGET: "10"}))
    assert args[args.index("--false-kill-budget") + 1] == "10"
    assert sidecar_cli.parser().parse_args(args).false_kill_budget == 10
    assert sidecar_cli.parser().parse_args(args_of(job_pod())).false_kill_budget == 3, "the same default"
    configured = settings_from_dict({"sidecar": {"falseKillBudget": 7, "deadlineProfile": True}}).sidecar
    assert (configured.false_kill_budget, configured.deadline_profile) == (7, True)


@pytest.mark.parametrize(
    ("key", "value"), [(FALSE_KILL_BUDGET, "0"), (FALSE_KILL_BUDGET, "2.5"), (DEADLINE_PROFILE, "maybe")]
)
def test_a_bad_value_denies_the_pod_naming_the_annotation(key: str, value: str) -> None:
    outcome = admit(job_pod(**{key: value}), SidecarSettings(), native_sidecars_supported=True)
    assert isinstance(outcome, Denied) and key in outcome.message
