"""The chart's Prometheus alert rules: valid for the real ``promtool``, unit-tested, documented.

``promtool check rules`` and ``promtool test rules`` run on the files the chart ships. Beyond that:
every alert carries what on-call needs (severity, summary, description, a runbook link to a section
of docs/alerts.md that exists), and every alert's promtool tests see it both fire and stay silent;
an alert whose expression is replaced by one that always (or never) fires makes them fail.
"""

from __future__ import annotations

import json
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


def promtool_test(
    tmp_path: Path, promtool: str, rules: dict[str, Any], alert: str
) -> subprocess.CompletedProcess[str]:
    """Run the unit tests that evaluate ``alert`` against ``rules`` instead of the rule file (only those:
    promtool spends its time evaluating series, and the others cannot see a change to this alert)."""
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in RULE_TESTS:
        document = load(path)
        document["tests"] = [
            test
            for test in document["tests"]
            if any(case["alertname"] == alert for case in test.get("alert_rule_test", []))
        ]
        (tests / path.name).write_text(yaml.safe_dump(document))
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
    result = promtool_test(tmp_path, promtool, with_expr(name, expr), name)
    assert result.returncode != 0, f"the promtool tests pass with {name} {broken}"
    assert f"alertname: {name}" in result.stdout + result.stderr


RULE_APIS = ("monitoring.coreos.com/v1/PrometheusRule", "monitoring.coreos.com/v1/ServiceMonitor")


def shipped(helm: Helm, **prometheus_rule: Any) -> list[dict[str, Any]]:
    """The PrometheusRule's groups, the operator scraped (ServiceMonitor on), with ``prometheus_rule``."""
    values = {
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, **prometheus_rule},
        }
    }
    groups: list[dict[str, Any]] = helm.render(values, api_versions=RULE_APIS).one("PrometheusRule")["spec"][
        "groups"
    ]
    return groups


def shipped_alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_the_chart_ships_the_rules_unchanged(helm: Helm) -> None:
    """The chart wraps the rule file into a PrometheusRule: the tested rules, alert templates and all."""
    assert shipped(helm) == load(RULES)["groups"]


def test_the_rendered_rules_pass_promtool(helm: Helm, promtool: str, tmp_path: Path) -> None:
    """The rules as the chart ships them with every knob turned are still valid for Prometheus."""
    groups = shipped(
        helm,
        disabled={"ExpiryWorkerKilled": True},
        additionalRuleLabels={"team": "ml-platform"},
        sidecarSelector='job="expiry-sidecars", pod!=""',
        operatorSelector='job=~"expiry-operator.*"',
    )
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts()) - 1} rules found" in result.stdout


def test_alerts_can_be_disabled_one_by_one(helm: Helm) -> None:
    kept = shipped_alerts(shipped(helm, disabled={"ExpiryWorkerKilled": True, "ExpiryAdmissionSlow": True}))
    assert set(kept) == set(alert_names()) - {"ExpiryWorkerKilled", "ExpiryAdmissionSlow"}
    # false is "not disabled"
    assert set(shipped_alerts(shipped(helm, disabled={"ExpiryWorkerKilled": False}))) == set(alert_names())


def test_a_group_with_every_alert_disabled_is_left_out(helm: Helm) -> None:
    sidecar_group = next(group for group in load(RULES)["groups"] if group["name"] == "expiry-sidecar")
    disabled = {rule["alert"]: True for rule in sidecar_group["rules"]}
    groups = shipped(helm, disabled=disabled)
    assert [group["name"] for group in groups] == ["expiry-operator"]


def test_the_schema_knows_every_alert_and_refuses_a_misspelt_one(helm: Helm) -> None:
    schema = json.loads((helm.chart / "values.schema.json").read_text())
    assert schema["definitions"]["alertName"]["enum"] == alert_names()
    values = {"monitoring": {"prometheusRule": {"disabled": {"ExpiryWorkerKiled": True}}}}
    result = helm.template(values, check=False)
    assert result.returncode != 0
    assert "ExpiryWorkerKiled" in result.stderr, result.stderr


def test_additional_rule_labels_reach_every_alert_without_overriding_its_own(helm: Helm) -> None:
    labels = {"team": "ml-platform", "severity": "page-everyone"}
    kept = shipped_alerts(shipped(helm, additionalRuleLabels=labels))
    assert set(kept) == set(alert_names())
    for rule in alerts():
        assert kept[rule["alert"]]["labels"] == {**rule["labels"], "team": "ml-platform"}, rule["alert"]


@pytest.mark.parametrize(
    ("value", "default"),
    [("sidecarSelector", 'container="expiry-sidecar"'), ("operatorSelector", 'container="expiry-operator"')],
)
def test_target_selectors_come_from_the_values(helm: Helm, value: str, default: str) -> None:
    users = [rule["alert"] for rule in alerts() if default in rule["expr"]]
    assert users, f"no alert uses {default}: the chart replaces it, keep it spelt this way"
    kept = shipped_alerts(shipped(helm, **{value: 'job="mine"'}))
    for name in users:
        assert default not in kept[name]["expr"], name
        assert 'job="mine"' in kept[name]["expr"], name
    unchanged = [rule for rule in alerts() if rule["alert"] not in users]
    assert all(kept[rule["alert"]]["expr"] == rule["expr"] for rule in unchanged)


@pytest.mark.parametrize(
    ("service_monitor", "operator_down", "expected"),
    [
        (False, "auto", False),  # nothing scrapes the operator: absent() would fire forever
        (True, "auto", True),
        (False, True, True),  # scraped some other way
        (True, False, False),
    ],
)
def test_operator_down_is_kept_only_when_the_operator_is_scraped(
    helm: Helm, service_monitor: bool, operator_down: str | bool, expected: bool
) -> None:
    values = {
        "monitoring": {
            "serviceMonitor": {"enabled": service_monitor},
            "prometheusRule": {"enabled": True, "operatorDownAlert": operator_down},
        }
    }
    rendered = helm.render(values, api_versions=RULE_APIS)
    kept = shipped_alerts(rendered.one("PrometheusRule")["spec"]["groups"])
    assert ("ExpiryOperatorDown" in kept) == expected
    assert set(kept) - {"ExpiryOperatorDown"} == set(alert_names()) - {"ExpiryOperatorDown"}


def test_operator_down_needs_the_service_monitor_crd_too(helm: Helm) -> None:
    """serviceMonitor.enabled renders nothing on a cluster without the ServiceMonitor CRD."""
    values = {"monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    rendered = helm.render(values, api_versions=RULE_APIS[:1])
    assert "ExpiryOperatorDown" not in shipped_alerts(rendered.one("PrometheusRule")["spec"]["groups"])
