"""The chart's watch switches reach the real operator: what `helm template` renders is what it runs with.

The operator is started (against kmock) with the config file the chart renders, so a switch that the
template drops, misspells or that the operator ignores shows up as a watch that still runs.
"""

from __future__ import annotations

import copy
import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from expiry import names
from tests.operator.operator_harness import KubeApi, OperatorProcess, kill, make_tls
from tests.support import sidecar as support

if TYPE_CHECKING:
    from conftest import Helm

NS = "team-w"


def chart_config(helm: Helm, operator_values: dict[str, Any]) -> dict[str, Any]:
    """The rendered operator.yaml, minus the ports and files a test process must choose itself."""
    rendered = helm.render({"operator": operator_values})
    config: dict[str, Any] = yaml.safe_load(rendered.one("ConfigMap")["data"]["operator.yaml"])
    return {key: value for key, value in config.items() if key not in ("webhook", "health", "metrics")}


def bypassed_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bypassed", "namespace": NS, "annotations": {names.ENABLED_ANNOTATION: "true"}},
        "spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]},
    }


def injected_job_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "train-0",
            "namespace": NS,
            "labels": {"job-name": "train", names.INJECTED_LABEL: "true"},
            "annotations": {names.ENABLED_ANNOTATION: "true", names.STATUS_ANNOTATION: names.INJECTED},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "u", "controller": True}
            ],
        },
        "spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]},
    }


def reasons(api: KubeApi) -> list[str]:
    return sorted(event["reason"] for event in api.events(NS))


wait_for = functools.partial(support.wait_for, timeout=20)


def run_operator(tmp_path: Path, config: dict[str, Any]) -> tuple[KubeApi, OperatorProcess]:
    api = KubeApi()
    return api, OperatorProcess(
        api, make_tls(tmp_path / "tls"), tmp_path / "op", config=copy.deepcopy(config)
    )


def test_both_watches_off_means_no_pod_or_event_watch_at_all(helm: Helm, tmp_path: Path) -> None:
    config = chart_config(helm, {"watchUnprotectedPods": False, "hangReports": {"enabled": False}})
    api, operator = run_operator(tmp_path, config)
    with api, operator:
        api.create_pod(bypassed_pod())
        assert operator.admit(bypassed_pod())["response"]["allowed"]  # up and serving
        time.sleep(1)
        assert api.reads("pods") == [] and api.reads("events") == []
        assert "expiry_unprotected_pods{" not in operator.metrics()
        assert reasons(api) == []


def test_watch_false_stops_the_unprotected_report_while_hang_reports_run(helm: Helm, tmp_path: Path) -> None:
    config = chart_config(helm, {"watchUnprotectedPods": False, "hangReports": {"window": 0.5}})
    api, operator = run_operator(tmp_path, config)
    with api, operator:
        api.create_pod(bypassed_pod())
        pod = injected_job_pod()
        api.create_pod(pod)
        api.post_kill_event(pod, [kill(0, "train.py:25", ["c10d.py:2050 in all_reduce"])])
        wait_for(lambda: reasons(api) == ["HangDetected"])  # the pods watch runs (for the hang report)...
        time.sleep(1)
        assert reasons(api) == ["HangDetected"]  # ...but reports no unprotected pod
        assert "expiry_unprotected_pods{" not in operator.metrics()


def test_the_default_chart_watches_and_reports(helm: Helm, tmp_path: Path) -> None:
    """The control: the same operator with the chart's defaults does report the bypassed pod."""
    api, operator = run_operator(tmp_path, chart_config(helm, {}))
    with api, operator:
        api.create_pod(bypassed_pod())
        wait_for(lambda: reasons(api) == ["ExpiryNotInjected"])
        assert f'expiry_unprotected_pods{{pod_namespace="{NS}"}} 1.0' in operator.metrics()
        assert "WATCH" in api.reads("pods") or "LIST" in api.reads("pods")
