"""Tuning the monitoring objects: scrape relabelings, honorLabels and namespace of the PodMonitor and the
ServiceMonitor; per-alert ``for`` and severity and the runbook URL base of the PrometheusRule, checked with
the real ``promtool`` (the overridden ``for`` changes when the shipped unit tests see the alert fire)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.chart.conftest import Helm, Rendered

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/expiry/rules/expiry-alerts.yaml"
RULE_TESTS = sorted((ROOT / "charts/expiry/rules/tests").glob("*.yaml"))
RELABEL = [{"action": "labeldrop", "regex": "pod_template_hash"}]
METRIC_RELABEL = [{"sourceLabels": ["__name__"], "regex": "expiry_build_info", "action": "drop"}]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on the PATH (Debian package 'prometheus'; scripts/bootstrap installs it)"
        )
    return path


def monitors(helm: Helm, **each: Any) -> Rendered:
    values = {
        "monitoring": {"podMonitor": {"enabled": True, **each}, "serviceMonitor": {"enabled": True, **each}}
    }
    return helm.render(values, api_versions=helm.monitoring_apis)


def endpoint(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    found: dict[str, Any] = (spec.get("podMetricsEndpoints") or spec["endpoints"])[0]
    return found


@pytest.mark.parametrize("kind", ["PodMonitor", "ServiceMonitor"])
def test_relabelings_and_honor_labels_reach_the_scrape_endpoint(helm: Helm, kind: str) -> None:
    rendered = monitors(helm, honorLabels=True, relabelings=RELABEL, metricRelabelings=METRIC_RELABEL)
    scraped = endpoint(rendered.one(kind))
    assert scraped["honorLabels"] is True
    assert scraped["relabelings"] == RELABEL
    assert scraped["metricRelabelings"] == METRIC_RELABEL


@pytest.mark.parametrize("kind", ["PodMonitor", "ServiceMonitor"])
def test_by_default_the_endpoint_has_no_relabelling(helm: Helm, kind: str) -> None:
    scraped = endpoint(monitors(helm).one(kind))
    assert not {"honorLabels", "relabelings", "metricRelabelings"} & set(scraped)


def test_a_bad_relabel_action_is_refused(helm: Helm) -> None:
    values = {"monitoring": {"podMonitor": {"relabelings": [{"action": "rename"}]}}}
    result = helm.template(values, check=False)
    assert result.returncode != 0
    assert "/monitoring/podMonitor/relabelings/0/action" in result.stderr, result.stderr


def test_monitors_can_live_in_the_monitoring_namespace(helm: Helm) -> None:
    rendered = monitors(helm, namespace="monitoring")
    assert rendered.one("PodMonitor")["metadata"]["namespace"] == "monitoring"
    service_monitor = rendered.one("ServiceMonitor")
    assert service_monitor["metadata"]["namespace"] == "monitoring"
    # it must still find the operator's Service, which stays in the release namespace
    assert service_monitor["spec"]["namespaceSelector"] == {"matchNames": [helm.namespace]}
    assert rendered.one("Service")["metadata"]["namespace"] == helm.namespace
    assert "namespaceSelector" not in monitors(helm).one("ServiceMonitor")["spec"]


def rule_groups(helm: Helm, **prometheus_rule: Any) -> list[dict[str, Any]]:
    values = {
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, **prometheus_rule},
        }
    }
    rendered = helm.render(values, api_versions=helm.monitoring_apis)
    groups: list[dict[str, Any]] = rendered.one("PrometheusRule")["spec"]["groups"]
    return groups


def alerts_of(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_rule_namespace(helm: Helm) -> None:
    values = {"monitoring": {"prometheusRule": {"enabled": True, "namespace": "monitoring"}}}
    rendered = helm.render(values, api_versions=helm.monitoring_apis)
    assert rendered.one("PrometheusRule")["metadata"]["namespace"] == "monitoring"


def test_an_alerts_for_and_severity_can_be_overridden_alone(helm: Helm) -> None:
    shipped = alerts_of(rule_groups(helm))
    changed = alerts_of(
        rule_groups(
            helm,
            alerts={
                "ExpirySidecarDown": {"for": "15m", "severity": "critical"},
                "ExpiryKillFailed": {"for": "2m"},
            },
        )
    )
    assert changed["ExpirySidecarDown"]["for"] == "15m"
    assert changed["ExpirySidecarDown"]["labels"] == {
        **shipped["ExpirySidecarDown"]["labels"],
        "severity": "critical",
    }
    assert changed["ExpiryKillFailed"]["for"] == "2m"
    assert changed["ExpiryKillFailed"]["labels"] == shipped["ExpiryKillFailed"]["labels"]
    others = set(shipped) - {"ExpirySidecarDown", "ExpiryKillFailed"}
    assert {name: changed[name] for name in others} == {name: shipped[name] for name in others}


def test_the_runbook_url_base_makes_every_alerts_runbook_url(helm: Helm) -> None:
    changed = alerts_of(rule_groups(helm, runbookUrlBase="https://wiki.example.com/runbooks/expiry#"))
    for name, rule in changed.items():
        assert (
            rule["annotations"]["runbook_url"] == f"https://wiki.example.com/runbooks/expiry#{name.lower()}"
        )
    assert changed["ExpiryWorkerKilled"]["annotations"]["summary"], "other annotations were dropped"


def test_an_override_of_an_unknown_alert_is_refused(helm: Helm) -> None:
    values = {"monitoring": {"prometheusRule": {"alerts": {"ExpirySidecarGone": {"for": "1m"}}}}}
    result = helm.template(values, check=False)
    assert result.returncode != 0
    assert "ExpirySidecarGone" in result.stderr, result.stderr


def promtool_unit_tests(tmp_path: Path, promtool: str, groups: list[dict[str, Any]], alert: str) -> str:
    """The shipped unit tests that evaluate ``alert``, run against the rendered ``groups``; their output."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / RULES.name).write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        document["tests"] = [
            test
            for test in document["tests"]
            if any(case["alertname"] == alert for case in test.get("alert_rule_test", []))
        ]
        (tests / path.name).write_text(yaml.safe_dump(document))
    check = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / RULES.name)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        [promtool, "test", "rules", *(str(tests / path.name) for path in RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    return ("PASS " if result.returncode == 0 else "FAIL ") + result.stdout + result.stderr


def test_promtool_sees_the_overridden_for(helm: Helm, promtool: str, tmp_path: Path) -> None:
    """The shipped tests see ExpirySidecarDown fire after its 5 minutes; with `for: 1h` it must not yet."""
    as_shipped = promtool_unit_tests(tmp_path / "shipped", promtool, rule_groups(helm), "ExpirySidecarDown")
    assert as_shipped.startswith("PASS"), as_shipped
    slower = rule_groups(helm, alerts={"ExpirySidecarDown": {"for": "1h"}})
    result = promtool_unit_tests(tmp_path / "slower", promtool, slower, "ExpirySidecarDown")
    assert result.startswith("FAIL") and "alertname: ExpirySidecarDown" in result, result


def test_promtool_sees_the_overridden_severity(helm: Helm, promtool: str, tmp_path: Path) -> None:
    paged = rule_groups(helm, alerts={"ExpiryKillFailed": {"severity": "page"}})
    result = promtool_unit_tests(tmp_path, promtool, paged, "ExpiryKillFailed")
    assert result.startswith("FAIL") and 'severity="page"' in result, result
