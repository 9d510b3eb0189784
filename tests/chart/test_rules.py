"""The chart's Prometheus alert rules: valid for the real ``promtool``, unit-tested, documented.

``promtool check rules`` and ``promtool test rules`` run on the files the chart ships. Beyond that:
every alert carries what on-call needs (severity, summary, description, a runbook link to a section
of docs/alerts.md that exists), and every alert's promtool tests see it both fire and stay silent;
an alert whose expression is replaced by one that always (or never) fires makes them fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.chart.conftest import Helm

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/expiry/rules/expiry-alerts.yaml"
RULE_TESTS = sorted((ROOT / "charts/expiry/rules/tests").glob("*.yaml"))
RUNBOOK = ROOT / "docs/alerts.md"
RUNBOOK_URL = "https://github.com/expiry-io/expiry/blob/main/docs/alerts.md#"
SEVERITIES = {"critical", "warning", "info"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alerts()]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool is not on the PATH (Debian package 'prometheus'; scripts/bootstrap installs it)"
        )
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rule_file(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_the_rules_pass_their_promtool_unit_tests(promtool: str) -> None:
    assert RULE_TESTS, "no promtool unit tests under charts/expiry/rules/tests"
    result = run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerts(), ids=alert_names())
def test_each_alert_says_how_bad_what_and_where_to_read_on(rule: dict[str, Any]) -> None:
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    assert "for" in rule, "say how long the condition must hold, even if that is 0m"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description"):
        assert annotations.get(key, "").strip(), f"no {key}"
    url = annotations.get("runbook_url", "")
    assert url.startswith(RUNBOOK_URL), f"runbook_url {url!r} does not point into docs/alerts.md"
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor in runbook_anchors(), f"docs/alerts.md has no section #{anchor}"


def test_github_anchor_matches_githubs_rules() -> None:
    assert github_anchor("ExpiryWorkerKilled") == "expiryworkerkilled"
    assert github_anchor("Sidecar down: what `up` means") == "sidecar-down-what-up-means"


def alert_cases() -> dict[str, list[list[Any]]]:
    """alert name -> the exp_alerts of every promtool case that evaluates it."""
    cases: dict[str, list[list[Any]]] = {}
    for path in RULE_TESTS:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


@pytest.mark.parametrize("name", alert_names())
def test_each_alert_is_tested_firing_and_silent(name: str) -> None:
    cases = alert_cases().get(name, [])
    assert any(cases), f"no promtool case where {name} fires"
    assert not all(cases), f"no promtool case where {name} stays silent"


def promtool_test(tmp_path: Path, promtool: str, rules: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run the unit tests against ``rules`` instead of the rule file."""
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tests / path.name)
    return run(promtool, "test", "rules", *(str(tests / path.name) for path in RULE_TESTS))


def with_expr(name: str, expr: str) -> dict[str, Any]:
    """The rules, with alert ``name``'s expression replaced by ``expr``."""
    rules: dict[str, Any] = load(RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = expr
    return rules


@pytest.mark.parametrize("name", alert_names())
@pytest.mark.parametrize(
    ("broken", "expr"), [("always firing", "vector(1)"), ("never firing", "vector(1) < 0")]
)
def test_the_unit_tests_catch_an_alert_that_is_broken(
    tmp_path: Path, promtool: str, name: str, broken: str, expr: str
) -> None:
    result = promtool_test(tmp_path, promtool, with_expr(name, expr))
    assert result.returncode != 0, f"the promtool tests pass with {name} {broken}"
    assert f"alertname: {name}" in result.stdout + result.stderr


def test_the_chart_ships_the_rules_unchanged(helm: Helm) -> None:
    """The chart wraps the rule file into a PrometheusRule: the tested rules, alert templates and all."""
    rendered = helm.render(
        {"monitoring": {"prometheusRule": {"enabled": True}}}, api_versions=helm.monitoring_apis
    )
    assert rendered.one("PrometheusRule")["spec"]["groups"] == load(RULES)["groups"]
