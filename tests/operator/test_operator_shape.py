"""The pod's shape, checked once at the boundary (shape.py): every refusal names the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from expiry_operator.injection import Denied, Injected, admit
from expiry_operator.options import ADAPTIVE_MIN_SAMPLES
from expiry_operator.review import review_problem
from expiry_operator.settings import ConfigError, SidecarSettings, settings_from_dict
from expiry_operator.shape import pod_problem
from tests.operator import pod_corpus
from tests.operator.operator_harness import admission_review

POD = pod_corpus.INJECTED_CASES["jobset"]


def changed(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    pod = copy.deepcopy(POD)
    holder = pod
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return pod


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("metadata",), "x", "metadata must be an object, got str"),
        (("metadata", "annotations"), ["a"], "metadata.annotations must be an object, got a list"),
        (
            ("metadata", "annotations", "expiry.io/mode"),
            5,
            "metadata.annotations.expiry.io/mode must be a string",
        ),
        (("metadata", "labels", "a"), None, "metadata.labels.a must be a string, got null"),
        (("spec",), True, "spec must be an object, got bool"),
        (("spec", "containers", 0, "env"), [7], "spec.containers[0].env[0] must be an object, got int"),
        (("spec", "containers", 0, "name"), None, "spec.containers[0].name must be a string, got null"),
        (
            ("spec", "securityContext", "runAsUser"),
            "1000",
            "spec.securityContext.runAsUser must be an integer",
        ),
        (("spec", "securityContext", "runAsUser"), True, "spec.securityContext.runAsUser must be an integer"),
        (("spec", "hostPID"), "true", "spec.hostPID must be a boolean, got str"),
        (
            ("spec", "containers", 0, "resources"),
            {"limits": {"cpu": [1]}},
            "resources.limits.cpu must be a quantity",
        ),
    ],
)
def test_a_pod_of_the_wrong_shape_is_denied_naming_the_field(path: Any, value: Any, message: str) -> None:
    outcome = admit(changed(path, value), SidecarSettings(), native_sidecars_supported=True)
    assert isinstance(outcome, Denied) and outcome.code == 400, outcome
    assert message in outcome.message


def test_null_stands_for_an_absent_field() -> None:
    pod = changed(("spec", "volumes"), None)
    pod["spec"]["containers"][0]["env"] = None
    assert pod_problem(pod) is None
    assert isinstance(admit(pod, SidecarSettings(), native_sidecars_supported=True), Injected)


def test_nesting_deeper_than_any_pod_is_refused_without_recursion() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    problem = pod_problem(changed(("spec", "containers", 0, "args"), deep))
    assert problem is not None and problem.startswith("spec.containers[0].args[0]")
    assert "nested deeper than" in problem


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("request", "oldObject"), False, "request.oldObject must be an object or null"),
        (("request", "object", "metadata"), [], "request.object: metadata must be an object"),
        (("request", "object", "metadata", "annotations"), "a=b", "request.object: metadata.annotations"),
    ],
)
def test_a_review_kopf_could_not_read_is_refused_before_kopf(path: Any, value: Any, message: str) -> None:
    review = admission_review(copy.deepcopy(POD))
    assert review_problem(review) is None
    holder = review
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    problem = review_problem(review)
    assert problem is not None and problem.startswith(message), problem


@pytest.mark.parametrize("value", ["³", "9" * 5000, "1" * 10])
def test_a_whole_number_annotation_int_would_refuse_is_denied_naming_it(value: str) -> None:
    pod = changed(("metadata", "annotations", ADAPTIVE_MIN_SAMPLES), value)
    outcome = admit(pod, SidecarSettings(), native_sidecars_supported=True)
    assert isinstance(outcome, Denied) and ADAPTIVE_MIN_SAMPLES in outcome.message


@pytest.mark.parametrize("value", [10**400, float("nan"), float("inf")])
def test_config_numbers_no_float_holds_or_not_finite_are_refused_naming_the_key(value: float) -> None:
    for key in ("escalateAfter", "adaptiveFactor", "adaptiveMinSamples"):
        with pytest.raises(ConfigError, match=f"sidecar.{key} must be"):
            settings_from_dict({"sidecar": {key: value}})
