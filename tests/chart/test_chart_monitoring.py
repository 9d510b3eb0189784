"""PodMonitor, ServiceMonitor, PrometheusRule and dashboard ConfigMaps: each behind its value and, for the
Prometheus Operator kinds, behind the cluster having the CRD; their content is the chart's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from expiry import names

if TYPE_CHECKING:
    from conftest import Helm, Rendered

MONITORING_ON = {
    "monitoring": {
        "labels": {"release": "kube-prometheus-stack"},
        "podMonitor": {"enabled": True, "labels": {"scrape": "sidecars"}},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Training"}},
    }
}
CRD_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")


@pytest.fixture(scope="module")
def monitored(helm: Helm) -> Rendered:
    return helm.render(MONITORING_ON, api_versions=helm.monitoring_apis)


@pytest.fixture(scope="module")
def rules_file(helm: Helm) -> Path:
    return helm.chart / "rules" / "expiry-alerts.yaml"


@pytest.fixture(scope="module")
def dashboard_files(helm: Helm) -> list[Path]:
    found = sorted((helm.chart / "dashboards").glob("*.json"))
    assert found, "the chart ships no dashboards/*.json"
    return found


def test_nothing_is_rendered_by_default(helm: Helm) -> None:
    rendered = helm.render(api_versions=helm.monitoring_apis)
    assert not any(rendered.has(kind) for kind in CRD_KINDS)
    assert not any("dashboard" in c["metadata"]["name"] for c in rendered.all("ConfigMap"))


@pytest.mark.parametrize("kind", CRD_KINDS)
def test_crd_kinds_need_the_crd(helm: Helm, kind: str) -> None:
    without_crds = helm.render(MONITORING_ON)
    assert not without_crds.has(kind)
    only_this = helm.render(MONITORING_ON, api_versions=[f"monitoring.coreos.com/v1/{kind}"])
    others = set(CRD_KINDS) - {kind}
    assert not any(only_this.has(other) for other in others)


def test_pod_monitor_scrapes_every_injected_pod(monitored: Rendered) -> None:
    spec = monitored.one("PodMonitor")["spec"]
    assert spec["selector"] == {"matchLabels": {names.INJECTED_LABEL: "true"}}
    assert spec["namespaceSelector"] == {"any": True}
    assert [e["port"] for e in spec["podMetricsEndpoints"]] == [names.METRICS_PORT_NAME]
    assert spec["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_service_monitor_scrapes_the_operator_metrics_port(monitored: Rendered) -> None:
    spec = monitored.one("ServiceMonitor")["spec"]
    service = monitored.one("Service")
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port = next(p for p in service["spec"]["ports"] if p["name"] == spec["endpoints"][0]["port"])
    config = yaml.safe_load(monitored.one("ConfigMap", "expiry")["data"]["operator.yaml"])
    container = monitored.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert target["containerPort"] == config["metrics"]["port"]


def test_monitoring_objects_carry_the_selector_labels(monitored: Rendered) -> None:
    objects = [monitored.one(kind) for kind in CRD_KINDS if monitored.has(kind)]
    objects += [c for c in monitored.all("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert objects
    for obj in objects:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["metadata"]["name"]
    assert monitored.one("PodMonitor")["metadata"]["labels"]["scrape"] == "sidecars"


def test_prometheus_rule_holds_the_rule_file(monitored: Rendered, rules_file: Path) -> None:
    """With the operator scraped (MONITORING_ON has the ServiceMonitor), every alert of the file, unchanged;
    tests/chart/test_rules.py tests what the prometheusRule values change."""
    assert rules_file.exists(), f"{rules_file} is missing"
    groups: list[dict[str, Any]] = yaml.safe_load(rules_file.read_text())["groups"]
    assert monitored.one("PrometheusRule")["spec"]["groups"] == groups


def test_dashboards_become_labelled_config_maps(monitored: Rendered, dashboard_files: list[Path]) -> None:
    assert dashboard_files, "the chart has no dashboards/*.json"
    maps = [c for c in monitored.all("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert len(maps) == len(dashboard_files)
    by_key = {key: (c, value) for c in maps for key, value in c["data"].items()}
    for path in dashboard_files:
        config_map, content = by_key[path.name]
        assert json.loads(content) == json.loads(path.read_text())
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Training"}


def test_dashboards_can_go_to_grafanas_namespace(helm: Helm, dashboard_files: list[Path]) -> None:
    assert dashboard_files, "the chart has no dashboards/*.json"
    rendered = helm.render({"monitoring": {"dashboards": {"enabled": True, "namespace": "grafana"}}})
    maps = [c for c in rendered.all("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert {c["metadata"]["namespace"] for c in maps} == {"grafana"}


@pytest.mark.parametrize(
    ("rule_file", "error"),
    [
        (None, None),
        ("groups: [\n", "rules/expiry-alerts.yaml is not valid YAML"),
        ("alerts: []\n", "rules/expiry-alerts.yaml must be a Prometheus rule file"),
    ],
    ids=["absent", "not-yaml", "no-groups"],
)
def test_rule_file_is_checked(helm: Helm, tmp_path: Path, rule_file: str | None, error: str | None) -> None:
    chart = tmp_path / "expiry"
    shutil.copytree(helm.chart, chart)
    target = chart / "rules" / "expiry-alerts.yaml"
    target.unlink(missing_ok=True)
    if rule_file is not None:
        target.parent.mkdir(exist_ok=True)
        target.write_text(rule_file)
    flags = [f"--api-versions={api}" for api in helm.monitoring_apis]
    result = helm.run(
        "template", "expiry", str(chart), "--set", "monitoring.prometheusRule.enabled=true", *flags
    )
    if error is None:
        assert result.returncode == 0, result.stderr
        assert "kind: PrometheusRule" not in result.stdout
    else:
        assert result.returncode != 0
        assert error in result.stderr
