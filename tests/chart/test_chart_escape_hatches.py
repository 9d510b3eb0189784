"""The chart's escape hatches, rendered by the real helm: extra env, args, volumes and objects, a mirror
registry for both images, the operator's log level, topology spread, and the drain on shutdown.

The rendered objects are also validated against the Kubernetes schemas and linted
(ci/escape-hatches-values.yaml is a scenario of test_chart_render.py); here, each value's effect.
``sidecar.extraEnv`` is followed into an injected pod by the real ``expiry-operator inject`` reading
the rendered config file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from expiry import names
from tests.operator.pod_corpus import pod, trainer

TAG = yaml.safe_load((Path(__file__).resolve().parents[2] / "charts/expiry/Chart.yaml").read_text())[
    "appVersion"
]

if TYPE_CHECKING:
    from tests.chart.conftest import Helm, Rendered

OPERATOR = str(Path(sys.executable).parent / "expiry-operator")
HATCHES = yaml.safe_load(
    (Path(__file__).parents[2] / "charts/expiry/ci/escape-hatches-values.yaml").read_text()
)


def operator_container(rendered: Rendered) -> dict[str, Any]:
    container: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def operator_config(rendered: Rendered) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rendered.one("ConfigMap", "expiry")["data"]["operator.yaml"])
    return config


@pytest.fixture(scope="module")
def hatches(helm: Helm) -> Rendered:
    return helm.render(HATCHES, api_versions=helm.monitoring_apis)


def test_extra_env_args_and_volumes_reach_the_operator_container(hatches: Rendered) -> None:
    container = operator_container(hatches)
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.example.com:3128"
    assert env["NO_PROXY"]["valueFrom"] == {"configMapKeyRef": {"name": "proxy", "key": "no-proxy"}}
    assert {names.POD_NAME_ENV, names.POD_NAMESPACE_ENV} <= set(env), "the chart's own env was replaced"
    assert container["args"] == [
        "run",
        "--config",
        "/etc/expiry/operator.yaml",
        "--log-level=debug",
        "--log-format=text",
    ]
    assert {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True} in container[
        "volumeMounts"
    ]
    volumes = hatches.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}} in volumes
    assert {"config", "tls", "tmp"} <= {volume["name"] for volume in volumes}


def test_the_default_log_level_passes_no_flag(helm: Helm) -> None:
    assert operator_container(helm.render())["args"] == ["run", "--config", "/etc/expiry/operator.yaml"]


def test_the_log_level_flag_is_one_the_operator_accepts() -> None:
    result = subprocess.run([OPERATOR, "run", "--help"], capture_output=True, text=True, check=True)
    assert "--log-level {debug,info,warning,error}" in result.stdout


@pytest.mark.parametrize(
    ("repository", "mirrored"),
    [
        ("ghcr.io/expiry-io/expiry-sidecar", "registry.example.com/mirror/expiry-io/expiry-sidecar"),
        ("localhost:5000/expiry-sidecar", "registry.example.com/mirror/expiry-sidecar"),
        ("expiry-io/expiry-sidecar", "registry.example.com/mirror/expiry-io/expiry-sidecar"),
    ],
)
def test_global_image_registry_replaces_the_registry_of_both_images(
    helm: Helm, repository: str, mirrored: str
) -> None:
    rendered = helm.render(
        {
            "global": {"imageRegistry": "registry.example.com/mirror"},
            "sidecar": {"image": {"repository": repository}},
            "operator": {"image": {"digest": "sha256:" + "ab" * 32}},
        }
    )
    assert operator_config(rendered)["sidecar"]["image"] == f"{mirrored}:{TAG}"
    assert operator_container(rendered)["image"] == (
        "registry.example.com/mirror/expiry-io/expiry-operator@sha256:" + "ab" * 32
    )
    assert all(
        c["image"].startswith("registry.example.com/mirror/")
        for obj in rendered.tests
        if obj["kind"] == "Pod"
        for c in obj["spec"]["containers"]
    ), "the helm test pod runs the operator image: from the mirror too"


def test_without_a_global_registry_the_images_are_as_written(helm: Helm) -> None:
    rendered = helm.render()
    assert operator_config(rendered)["sidecar"]["image"] == f"ghcr.io/expiry-io/expiry-sidecar:{TAG}"
    assert operator_container(rendered)["image"] == f"ghcr.io/expiry-io/expiry-operator:{TAG}"


def test_sidecar_extra_env_reaches_the_injected_sidecar(hatches: Rendered, tmp_path: Path) -> None:
    """Through the operator's config file, as the real operator reads it."""
    config = tmp_path / "operator.yaml"
    config.write_text(hatches.one("ConfigMap", "expiry")["data"]["operator.yaml"])
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod("trainer-0", {"containers": [trainer()]})))
    result = subprocess.run(
        [OPERATOR, "inject", "-f", str(manifest), "--config", str(config), "-o", "yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    injected = yaml.safe_load(result.stdout)
    sidecar = next(
        c
        for c in injected["spec"].get("initContainers", []) + injected["spec"]["containers"]
        if c["name"] == names.SIDECAR_CONTAINER
    )
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"} in sidecar["env"]
    assert sidecar["image"] == f"registry.example.com/mirror/expiry-io/expiry-sidecar:{TAG}"
    trainers = [c for c in injected["spec"]["containers"] if c["name"] == "trainer"]
    assert all("HTTPS_PROXY" not in {e["name"] for e in c.get("env", [])} for c in trainers)


def test_sidecar_extra_env_may_not_take_the_sidecars_own_names(helm: Helm) -> None:
    values = {"sidecar": {"extraEnv": [{"name": names.POD_NAME_ENV, "value": "spoofed"}]}}
    result = helm.template(values, check=False)
    assert result.returncode != 0
    assert "/sidecar/extraEnv/0/name" in result.stderr, result.stderr


def test_without_sidecar_extra_env_the_config_has_none(helm: Helm) -> None:
    assert "env" not in operator_config(helm.render())["sidecar"]


def test_topology_spread_constraints_get_the_operator_selector(hatches: Rendered, helm: Helm) -> None:
    spec = hatches.one("Deployment")["spec"]
    (constraint,) = spec["template"]["spec"]["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "topology.kubernetes.io/zone"
    assert constraint["whenUnsatisfiable"] == "DoNotSchedule"
    assert constraint["labelSelector"] == {"matchLabels": spec["selector"]["matchLabels"]}
    own = {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {}}
    own["labelSelector"] = {"matchLabels": {"app": "mine"}}
    rendered = helm.render({"operator": {"topologySpreadConstraints": [own]}})
    assert rendered.one("Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"] == [own]


def test_extra_objects_are_rendered_through_tpl_with_the_chart_labels(hatches: Rendered) -> None:
    configmap = hatches.one("ConfigMap", "expiry-proxy")
    assert configmap["data"] == {"no-proxy": ".svc,.cluster.local"}
    account = hatches.one("ServiceAccount", "expiry-extra")
    for obj in (configmap, account):
        assert obj["metadata"]["namespace"] == "expiry-system"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "expiry"


def test_an_extra_object_that_is_no_object_is_refused_naming_it(helm: Helm) -> None:
    result = helm.template(
        {"extraObjects": [{"apiVersion": "v1", "kind": "ConfigMap"}, {"data": 1}]}, check=False
    )
    assert result.returncode != 0
    assert "extraObjects[1] must be one Kubernetes object" in result.stderr, result.stderr


# -- drain on shutdown ---------------------------------------------------------------------------------


def test_shutdown_defaults_drain_within_the_grace_period(helm: Helm) -> None:
    rendered = helm.render()
    pod_spec = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 30
    assert operator_container(rendered)["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert operator_config(rendered)["shutdown"] == {"drainSeconds": 10}


def test_the_pre_stop_hook_sleeps_in_the_image_before_kubernetes_1_30(helm: Helm) -> None:
    rendered = helm.render(kube_version=helm.old_kube)
    command = operator_container(rendered)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    started = subprocess.run([sys.executable, "-c", command[2].replace("5", "0")], check=False)
    assert started.returncode == 0, "the preStop command is not valid Python"


def test_the_config_drain_is_one_the_operator_loads(hatches: Rendered, tmp_path: Path) -> None:
    from expiry_operator.settings import settings_from_dict

    assert settings_from_dict(operator_config(hatches)).shutdown.drain_seconds == 30


def test_no_pre_stop_hook_when_it_is_zero(helm: Helm) -> None:
    rendered = helm.render({"operator": {"shutdown": {"preStopSeconds": 0, "drainSeconds": 10}}})
    assert "lifecycle" not in operator_container(rendered)


@pytest.mark.parametrize(("pre_stop", "drain", "grace"), [(5, 10, 15), (0, 30, 30), (20, 0, 10)])
def test_a_drain_longer_than_the_grace_period_is_refused(
    helm: Helm, pre_stop: int, drain: int, grace: int
) -> None:
    values = {
        "operator": {
            "terminationGracePeriodSeconds": grace,
            "shutdown": {"preStopSeconds": pre_stop, "drainSeconds": drain},
        }
    }
    result = helm.template(values, check=False)
    assert result.returncode != 0
    assert "operator.terminationGracePeriodSeconds" in result.stderr, result.stderr
