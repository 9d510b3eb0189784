"""The optional NetworkPolicy: off by default; on, it opens exactly the operator's three ports, on the
operator pods, to the configured peers (validity: the "everything" value set renders it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Helm

API_SERVER = [{"ipBlock": {"cidr": "172.16.0.0/28"}}]
PROMETHEUS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_there_is_none_by_default(helm: Helm) -> None:
    assert not helm.render().has("NetworkPolicy")


@pytest.mark.parametrize("webhook_port", [8443, 9443])
def test_it_opens_the_operators_ports_to_the_configured_peers(helm: Helm, webhook_port: int) -> None:
    values: dict[str, Any] = {
        "networkPolicy": {"enabled": True, "webhookFrom": API_SERVER, "metricsFrom": PROMETHEUS},
        "operator": {"ports": {"webhook": webhook_port, "health": 8080, "metrics": 9465}},
    }
    rendered = helm.render(values)
    spec = rendered.one("NetworkPolicy")["spec"]
    pod = rendered.one("Deployment")["spec"]["template"]
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress"], "egress stays open: the operator must reach the API server"
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    opened = {rule["ports"][0]["port"]: rule.get("from") for rule in spec["ingress"]}
    assert opened == {ports["webhook"]: API_SERVER, ports["metrics"]: PROMETHEUS, ports["health"]: None}
    service = rendered.one("Service")["spec"]["ports"]
    webhook_target = next(p["targetPort"] for p in service if p["name"] == "webhook")
    assert ports[webhook_target] == webhook_port, "the API server reaches the pod on the opened port"


def test_empty_peer_lists_admit_any_source(helm: Helm) -> None:
    spec = helm.render({"networkPolicy": {"enabled": True}}).one("NetworkPolicy")["spec"]
    assert all("from" not in rule for rule in spec["ingress"])
