"""The operator as the chart deploys it: its config file (contracts.md), its pods, and its permissions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from expiry import names
from expiry_sidecar.apiwriter import PodRef
from expiry_sidecar.events import burst_event
from expiry_sidecar.kills import Outcome
from expiry_sidecar.processes import Worker
from expiry_sidecar.server import KillReport
from tests.chart.conftest import rules

if TYPE_CHECKING:
    from conftest import Helm, Rendered

CONFIG_PATH = "/etc/expiry/operator.yaml"

# The operator's config file with every key at its contracted default (contracts.md).
CONTRACT_DEFAULTS: dict[str, Any] = {
    "sidecar": {
        "image": "ghcr.io/expiry-io/expiry-sidecar:0.2.0.dev0",
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "metricsPort": names.METRICS_PORT,
        "nativeSidecar": "auto",
        "killSignal": "",
        "escalateAfter": 10,
        "stackDumps": "off",
        "events": True,
        "scopeMetrics": False,
        "flightRecorder": True,
        "podCondition": False,
        "mode": "enforce",
        "deadlines": "requested",
        "adaptiveFactor": 5,
        "adaptiveMinSamples": 20,
        "adaptiveFloor": 60,
        "falseKillBudget": 3,
        "deadlineProfile": False,
    },
    "webhook": {"port": 8443, "certFile": "/etc/expiry/tls/tls.crt", "keyFile": "/etc/expiry/tls/tls.key"},
    "health": {"port": 8080},
    "metrics": {"port": 9465},
    "unprotectedPods": {"watch": True},
    "hangReports": {"enabled": True, "window": 5, "maxSpan": 60},
    "leaderElection": {"leaseName": "expiry"},
    "shutdown": {"drainSeconds": 10},
}


def operator_config(rendered: Rendered) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        rendered.one("ConfigMap", rendered.one("Deployment")["metadata"]["name"])["data"]["operator.yaml"]
    )
    return config


def pod_spec(rendered: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def container(rendered: Rendered) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(rendered)["containers"]
    assert len(containers) == 1
    return containers[0]


def test_default_config_is_the_contracts(defaults: Rendered) -> None:
    assert operator_config(defaults) == CONTRACT_DEFAULTS


def test_sidecar_values_reach_the_config(helm: Helm) -> None:
    values = {
        "sidecar": {
            "image": {"repository": "registry.corp/expiry-sidecar", "tag": "0.2.0", "pullPolicy": "Always"},
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}},
            "metricsPort": 9100,
            "nativeSidecar": "false",
            "killSignal": "SIGTERM",
            "escalateAfter": 30,
            "stackDumps": "py-spy",
            "events": False,
            "scopeMetrics": True,
            "flightRecorder": False,
            "mode": "observe",
            "deadlines": "adaptive",
            "adaptiveFactor": 3,
            "adaptiveMinSamples": 50,
            "adaptiveFloor": 2.5,
            "falseKillBudget": 5,
        },
        "operator": {"watchUnprotectedPods": False},
        "podCondition": {"enabled": True},
        "deadlineProfiles": {"enabled": True},
    }
    config = operator_config(helm.render(values))
    assert config["sidecar"] == {
        "image": "registry.corp/expiry-sidecar:0.2.0",
        "imagePullPolicy": "Always",
        "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "metricsPort": 9100,
        "nativeSidecar": "false",
        "killSignal": "SIGTERM",
        "escalateAfter": 30,
        "stackDumps": "py-spy",
        "events": False,
        "scopeMetrics": True,
        "flightRecorder": False,
        "podCondition": True,
        "mode": "observe",
        "deadlines": "adaptive",
        "adaptiveFactor": 3,
        "adaptiveMinSamples": 50,
        "adaptiveFloor": 2.5,
        "falseKillBudget": 5,
        "deadlineProfile": True,
    }
    assert config["unprotectedPods"] == {"watch": False}


def test_what_helm_set_passes_reaches_the_operator(helm: Helm) -> None:
    """`--set` passes 2.5 as a string and TERM as written: the schema takes both, the operator reads them."""
    from expiry_operator.settings import settings_from_dict

    sets = ("sidecar.adaptiveFactor=2.5", "sidecar.adaptiveFloor=0.5", "sidecar.killSignal=TERM")
    rendered = helm.render(extra_args=[arg for one in sets for arg in ("--set", one)])
    sidecar = settings_from_dict(operator_config(rendered)).sidecar
    assert (sidecar.adaptive_factor, sidecar.adaptive_floor, sidecar.kill_signal) == (2.5, 0.5, "SIGTERM")


def test_image_digest_wins_over_the_tag(helm: Helm) -> None:
    digest = "sha256:" + "0f" * 32
    rendered = helm.render(
        {"sidecar": {"image": {"digest": digest}}, "operator": {"image": {"digest": digest}}}
    )
    assert operator_config(rendered)["sidecar"]["image"] == f"ghcr.io/expiry-io/expiry-sidecar@{digest}"
    assert container(rendered)["image"] == f"ghcr.io/expiry-io/expiry-operator@{digest}"


def test_operator_runs_with_the_mounted_config(defaults: Rendered) -> None:
    operator = container(defaults)
    assert operator["image"] == "ghcr.io/expiry-io/expiry-operator:0.2.0.dev0"
    assert operator["args"] == ["run", "--config", CONFIG_PATH]
    mount = next(m for m in operator["volumeMounts"] if m["mountPath"] == CONFIG_PATH)
    volume = next(v for v in pod_spec(defaults)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == defaults.one("ConfigMap")["metadata"]["name"]
    assert mount["subPath"] in defaults.one("ConfigMap")["data"]


def test_container_ports_are_the_configs(defaults: Rendered) -> None:
    config = operator_config(defaults)
    ports = {p["name"]: p["containerPort"] for p in container(defaults)["ports"]}
    assert ports == {
        "webhook": config["webhook"]["port"],
        "health": config["health"]["port"],
        "metrics": config["metrics"]["port"],
    }


def test_probes_use_the_health_endpoints(defaults: Rendered) -> None:
    operator = container(defaults)
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert operator["startupProbe"]["httpGet"]["port"] == "health"


def config_checksum(rendered: Rendered) -> str:
    checksum: str = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]
    return checksum


def test_config_change_rolls_the_deployment(helm: Helm, defaults: Rendered) -> None:
    assert config_checksum(helm.render()) == config_checksum(defaults), "same values, same pods"
    assert config_checksum(helm.render({"sidecar": {"escalateAfter": 11}})) != config_checksum(defaults)


def test_pods_meet_the_restricted_pod_security_standard(defaults: Rendered) -> None:
    pod = pod_spec(defaults)["securityContext"]
    operator = container(defaults)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert operator["allowPrivilegeEscalation"] is False
    assert operator["capabilities"] == {"drop": ["ALL"]}
    assert operator["readOnlyRootFilesystem"] is True
    assert not any("hostPath" in v for v in pod_spec(defaults)["volumes"])


def test_resources_are_set(defaults: Rendered) -> None:
    resources = container(defaults)["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_high_availability_by_default(defaults: Rendered) -> None:
    deployment = defaults.one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = defaults.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_selects_the_operator_pods(defaults: Rendered) -> None:
    service = defaults.one("Service")
    pod_labels = defaults.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in container(defaults)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports


# --- RBAC ---------------------------------------------------------------------------------------------------


def test_operator_rbac_is_pods_read_and_events_write_only(helm: Helm) -> None:
    role = helm.render({"operator": {"hangReports": {"enabled": False}}}).one("ClusterRole", "expiry")
    assert rules(role) == {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "events", "create"),
        ("", "events", "patch"),
    }


def test_the_hang_report_reads_kill_events_and_gets_workloads(defaults: Rendered) -> None:
    added = rules(defaults.one("ClusterRole", "expiry")) - {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "events", "create"),
        ("", "events", "patch"),
    }
    assert added == {
        ("events.k8s.io", "events", "list"),
        ("events.k8s.io", "events", "watch"),
        ("batch", "jobs", "get"),
        ("jobset.x-k8s.io", "jobsets", "get"),
        ("kubeflow.org", "pytorchjobs", "get"),
        ("trainer.kubeflow.org", "trainjobs", "get"),
    }


def test_operator_rbac_binding(defaults: Rendered) -> None:
    role = defaults.one("ClusterRole", "expiry")
    binding = defaults.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    service_account = defaults.one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": service_account["name"], "namespace": service_account["namespace"]}
    ]
    assert pod_spec(defaults)["serviceAccountName"] == service_account["name"]


def test_the_lease_role_is_one_lease_in_the_release_namespace(defaults: Rendered) -> None:
    role = defaults.one("Role", "expiry-leader-election")
    namespace = defaults.one("Deployment")["metadata"]["namespace"]
    assert role["metadata"]["namespace"] == namespace
    assert rules(role) == {
        ("coordination.k8s.io", "leases", verb) for verb in ("create", "get", "update", "patch")
    }
    lease_name = operator_config(defaults)["leaderElection"]["leaseName"]
    assert all(r.get("resourceNames") == [lease_name] for r in role["rules"] if "create" not in r["verbs"])
    binding = defaults.one("RoleBinding", "expiry-leader-election")
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "expiry-leader-election",
    }
    assert binding["subjects"] == defaults.one("ClusterRoleBinding")["subjects"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container(defaults)["env"]}
    assert env == {"EXPIRY_POD_NAME": "metadata.name", "EXPIRY_POD_NAMESPACE": "metadata.namespace"}


def test_sidecar_events_role_and_bindings(helm: Helm) -> None:
    values = {
        "sidecarEvents": {
            "clusterRole": {"aggregateToAdmin": True},
            "bindings": [
                {"namespace": "ml", "serviceAccount": "trainer"},
                {"namespace": "cv", "serviceAccount": "default"},
            ],
        }
    }
    rendered = helm.render(values)
    role = rendered.one("ClusterRole", "expiry-sidecar-events")
    group = sidecar_event_api_group()
    assert rules(role) == {(group, "events", "create"), (group, "events", "patch")}
    assert role["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    sidecar_bindings = [b for b in rendered.all("RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"]
    bindings = {(b["metadata"]["namespace"], b["subjects"][0]["name"]) for b in sidecar_bindings}
    assert bindings == {("ml", "trainer"), ("cv", "default")}
    for binding in sidecar_bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "expiry-sidecar-events",
        }
        assert binding["subjects"][0]["namespace"] == binding["metadata"]["namespace"]


POD_CONDITION_ROLE = "expiry-sidecar-pod-condition"


def test_pod_condition_rbac_and_flag_only_when_enabled(helm: Helm, defaults: Rendered) -> None:
    bindings = [
        {"namespace": "ml", "serviceAccount": "trainer"},
        {"namespace": "cv", "serviceAccount": "default"},
    ]
    for off in (defaults, helm.render({"podCondition": {"bindings": bindings}})):
        assert not [r for r in off.all("ClusterRole") if r["metadata"]["name"] == POD_CONDITION_ROLE]
        assert not [b for b in off.all("RoleBinding") if b["roleRef"]["name"] == POD_CONDITION_ROLE]
        assert operator_config(off)["sidecar"]["podCondition"] is False

    on = helm.render({"podCondition": {"enabled": True, "bindings": bindings}})
    assert rules(on.one("ClusterRole", POD_CONDITION_ROLE)) == {("", "pods/status", "patch")}
    granted = [b for b in on.all("RoleBinding") if b["roleRef"]["name"] == POD_CONDITION_ROLE]
    assert {(b["metadata"]["namespace"], b["subjects"][0]["name"]) for b in granted} == {
        ("ml", "trainer"),
        ("cv", "default"),
    }
    for binding in granted:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": POD_CONDITION_ROLE,
        }
        assert binding["subjects"][0] == {
            "kind": "ServiceAccount",
            "name": binding["subjects"][0]["name"],
            "namespace": binding["metadata"]["namespace"],
        }
    assert operator_config(on)["sidecar"]["podCondition"] is True


def test_sidecar_events_role_is_not_aggregated_by_default(defaults: Rendered) -> None:
    labels = defaults.one("ClusterRole", "expiry-sidecar-events")["metadata"]["labels"]
    assert "rbac.authorization.k8s.io/aggregate-to-admin" not in labels
    assert all(b["roleRef"]["kind"] == "Role" for b in defaults.all("RoleBinding"))  # the Lease's only


@pytest.mark.parametrize("kind", ["ServiceAccount", "ClusterRoleBinding", "PodDisruptionBudget"])
def test_optional_objects_can_be_left_out(helm: Helm, kind: str) -> None:
    values = {
        "operator": {"replicas": 1},
        "pdb": {"enabled": False},
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "platform-sa"},
    }
    rendered = helm.render(values)
    assert not rendered.has(kind)
    assert pod_spec(rendered)["serviceAccountName"] == "platform-sa"


def test_the_operator_reads_every_scenarios_config(rendered: Rendered) -> None:
    # The operator's own loader (strict: unknown keys and bad values fail) takes what the chart writes.
    from expiry_operator.settings import Settings, settings_from_dict

    settings = settings_from_dict(operator_config(rendered), source="the chart's ConfigMap")
    assert isinstance(settings, Settings)


def test_the_operator_sees_the_values(helm: Helm) -> None:
    from expiry_operator.settings import settings_from_dict

    values = {
        "sidecar": {
            "killSignal": "SIGTERM",
            "escalateAfter": 2.5,
            "stackDumps": "client",
            "events": False,
            "mode": "observe",
            "deadlines": "adaptive",
            "adaptiveFactor": 10,
            "adaptiveMinSamples": 5,
            "adaptiveFloor": 0.5,
        }
    }
    sidecar = settings_from_dict(operator_config(helm.render(values))).sidecar
    assert (sidecar.kill_signal, sidecar.escalate_after, sidecar.stack_dumps, sidecar.events) == (
        "SIGTERM",
        2.5,
        "client",
        False,
    )
    assert (sidecar.mode, sidecar.deadlines) == ("observe", "adaptive")
    assert (sidecar.adaptive_factor, sidecar.adaptive_min_samples, sidecar.adaptive_floor) == (10, 5, 0.5)


def sidecar_event_api_group() -> str:
    """The API group of the Events the sidecar really posts (the role must grant exactly that)."""
    pod = PodRef(name="trainer-0", namespace="ml")
    report = KillReport(Worker(7, 1, None), "scope", 9, Outcome.DELIVERED, 0.001)
    api_version: str = burst_event(pod, [(report, (None, None))], datetime.now(UTC))["apiVersion"]
    return api_version.rpartition("/")[0]
