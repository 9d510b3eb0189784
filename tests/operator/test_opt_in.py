"""The one ``expiry.io/enabled`` rule, in admission and in the unprotected-pod report (the chart's filter
is checked against the same rule in tests/chart/test_chart_webhook.py)."""

from __future__ import annotations

import copy

import pytest

from expiry_operator.injection import Denied, Injected, Skipped, admit
from expiry_operator.opt_in import OFF, ON
from expiry_operator.settings import SidecarSettings
from expiry_operator.unprotected import is_unprotected, warning
from tests.operator.pod_corpus import INJECTED_CASES

INVALID = ("ture", " true", "enabled", "", "TRUE ")


def spelled(value: str) -> dict[str, object]:
    pod = copy.deepcopy(INJECTED_CASES["jobset"])
    pod["metadata"]["annotations"]["expiry.io/enabled"] = value
    return pod


def test_the_usual_true_spellings_opt_in_everywhere() -> None:
    assert {"true", "True", "TRUE", "yes", "Yes", "on", "1"} <= set(ON)
    for value in ON:
        assert isinstance(admit(spelled(value), SidecarSettings(), native_sidecars_supported=True), Injected)
        assert is_unprotected(spelled(value)), value


def test_the_usual_false_spellings_opt_out_everywhere() -> None:
    assert {"false", "False", "no", "off", "0"} <= set(OFF)
    for value in OFF:
        assert isinstance(admit(spelled(value), SidecarSettings(), native_sidecars_supported=True), Skipped)
        assert not is_unprotected(spelled(value)), value


@pytest.mark.parametrize("value", INVALID)
def test_anything_else_is_denied_naming_the_accepted_values_and_reported(value: str) -> None:
    outcome = admit(spelled(value), SidecarSettings(), native_sidecars_supported=True)
    assert isinstance(outcome, Denied) and outcome.code == 400
    assert f"expiry.io/enabled: {value!r} is not accepted" in outcome.message
    assert "true | True | TRUE | yes" in outcome.message and "false | False" in outcome.message
    assert is_unprotected(spelled(value))  # created while the webhook was down: still said
    assert "is not accepted" in warning(spelled(value))
