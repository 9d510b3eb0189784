"""chart-testing's setup: ct.yaml finds the chart, and its ci/ value sets are the suite's render scenarios."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from conftest import Helm, Scenario

ROOT = Path(__file__).resolve().parents[2]


def test_ct_yaml_points_at_the_chart(helm: Helm) -> None:
    config = yaml.safe_load((ROOT / "ct.yaml").read_text())
    assert [ROOT / d for d in config["chart-dirs"]] == [helm.chart.parent]
    assert config["target-branch"] == "main"


def test_every_ci_value_set_is_a_scenario_and_every_scenario_a_ci_value_set(
    helm: Helm, scenarios: tuple[Scenario, ...], ci_apis: dict[str, tuple[str, ...]]
) -> None:
    found = sorted(helm.ci_values.glob("*.yaml"))
    assert all(path.name.endswith("-values.yaml") for path in found), "ct reads *-values.yaml"
    files = {path.name.removesuffix("-values.yaml") for path in found}
    assert {scenario.name for scenario in scenarios} == files
    assert set(ci_apis) <= files, "a value set named in CI_APIS has no file: its CRDs are never rendered"
    assert len(files) >= 8
