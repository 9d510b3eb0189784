"""docs/settings.md is generated (scripts/settings_doc.py) and its table is held to the code: every
sidecar flag has a row, every annotation it names is one the operator accepts and that changes the
injected sidecar's flags, every config key is one the operator reads, every chart value exists, and
the operator's defaults are the sidecar's (the operator leaves a default out of the command line)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from expiry_operator import options
from expiry_operator.injection import Injected, admit
from expiry_operator.settings import ConfigError, SidecarSettings, settings_from_dict
from expiry_sidecar import cli as sidecar_cli
from tests.operator.pod_corpus import pod, trainer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "settings_doc.py"
VALUES = yaml.safe_load((ROOT / "charts" / "expiry" / "values.yaml").read_text())


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_doc", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()
ROWS = GENERATOR.ROWS
WITH_ANNOTATION = [row for row in ROWS if row.annotation]


def sidecar_args(annotations: dict[str, str]) -> list[str]:
    outcome = admit(
        pod("p", {"containers": [trainer()]}, annotations), SidecarSettings(), native_sidecars_supported=True
    )
    assert isinstance(outcome, Injected), outcome
    (sidecar,) = [c for c in outcome.pod["spec"]["initContainers"] if c["name"] == "expiry-sidecar"]
    args: list[str] = sidecar["args"]
    return args


def test_the_committed_page_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_flag_without_a_row_fails_the_generator() -> None:
    flags = {**GENERATOR.serve_flags(), "--new-knob": "`1`"}
    with pytest.raises(GENERATOR.Missing, match="--new-knob have no row"):
        GENERATOR.table(flags)


def test_a_row_for_a_flag_the_sidecar_lacks_fails_the_generator() -> None:
    flags = dict(GENERATOR.serve_flags())
    del flags["--scope-metrics"]
    with pytest.raises(GENERATOR.Missing, match="--scope-metrics"):
        GENERATOR.table(flags)


def test_each_flag_has_an_annotation_and_a_chart_value_or_a_reason() -> None:
    for row in ROWS:
        assert (row.annotation and row.chart) or row.why_not, row.flag


@pytest.mark.parametrize("row", WITH_ANNOTATION, ids=lambda row: row.annotation)
def test_each_annotation_changes_its_flag_in_the_injected_sidecar(row: Any) -> None:
    assert row.annotation in options._KNOWN
    default, changed = sidecar_args({}), sidecar_args({row.annotation: row.example})
    assert changed != default, f"{row.annotation}={row.example} changed nothing"
    assert row.flag in changed or row.flag in default, "the change is not in the flag the table names"


@pytest.mark.parametrize("row", [row for row in ROWS if row.config], ids=lambda row: row.config)
def test_each_config_key_is_read_and_each_chart_value_exists(row: Any) -> None:
    section, key = row.config.split(".")
    node: Any = VALUES
    for part in row.chart.split("."):
        node = node[part]
    settings_from_dict({section: {key: node}})  # an unknown key would raise ConfigError
    with pytest.raises(ConfigError, match=key):
        settings_from_dict({section: {key: ["not", "a", "value"]}})


def test_the_operator_defaults_are_the_sidecars() -> None:
    serve = GENERATOR.serve_flags()
    operator = SidecarSettings()
    assert serve["--adaptive-factor"] == GENERATOR._shown(operator.adaptive_factor)
    assert serve["--adaptive-min-samples"] == GENERATOR._shown(operator.adaptive_min_samples)
    assert serve["--adaptive-floor"] == GENERATOR._shown(operator.adaptive_floor)
    assert serve["--escalate-after"] == GENERATOR._shown(operator.escalate_after)
    assert sidecar_cli.parser() is not None


@pytest.mark.parametrize("annotation", [options.EVENTS, options.POD_CONDITION, options.SCOPE_METRICS])
@pytest.mark.parametrize(
    ("spelling", "on"),
    [("True", True), ("yes", True), ("ON", True), ("1", True), ("No", False), ("0", False), ("off", False)],
)
def test_boolean_annotations_share_the_enabled_spelling(annotation: str, spelling: str, on: bool) -> None:
    flag = {options.EVENTS: "--events", options.POD_CONDITION: "--pod-condition"}.get(
        annotation, "--scope-metrics"
    )
    assert (flag in sidecar_args({annotation: spelling})) is on


def test_a_misspelt_boolean_is_denied_naming_the_accepted_values() -> None:
    with pytest.raises(
        options.OptionError, match=r"expiry\.io/scope-metrics: 'ture' is not accepted; expected true"
    ):
        options.parse_options({options.SCOPE_METRICS: "ture"}, SidecarSettings())


@pytest.mark.parametrize(
    ("knob", "value", "flag"),
    [
        ("adaptiveFactor", "2.5", "--adaptive-factor"),
        ("adaptiveMinSamples", "50", "--adaptive-min-samples"),
        ("escalateAfter", "2.5", "--escalate-after"),
    ],
)
def test_numbers_as_helm_set_passes_them_reach_the_sidecar(knob: str, value: str, flag: str) -> None:
    settings = settings_from_dict({"sidecar": {knob: value}}).sidecar
    outcome = admit(pod("p", {"containers": [trainer()]}), settings, native_sidecars_supported=True)
    assert isinstance(outcome, Injected)
    (sidecar,) = [c for c in outcome.pod["spec"]["initContainers"] if c["name"] == "expiry-sidecar"]
    args = sidecar["args"]
    assert args[args.index(flag) + 1] == value


def test_the_kill_signal_setting_accepts_what_the_annotation_accepts() -> None:
    for spelling in ("TERM", "term", "SIGTERM"):
        assert settings_from_dict({"sidecar": {"killSignal": spelling}}).sidecar.kill_signal == "SIGTERM"
        assert (
            options.parse_options({options.KILL_SIGNAL: spelling}, SidecarSettings()).kill_signal == "SIGTERM"
        )
    with pytest.raises(ConfigError, match=r"sidecar\.killSignal must be a signal name"):
        settings_from_dict({"sidecar": {"killSignal": "TREM"}})
