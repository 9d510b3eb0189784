"""The DeadlineProfile CRD and the sidecars' RBAC for it, as the real helm renders them; a profile as
the sidecar writes it is valid under the CRD's own schema (the structural subset jsonschema reads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jsonschema
import pytest

from expiry import names
from expiry_sidecar import profile
from expiry_sidecar.blocks import ScopeStats
from expiry_sidecar.deadlines import Policy
from tests.chart.conftest import rules

if TYPE_CHECKING:
    from conftest import Helm, Rendered

CRD = f"{names.PROFILE_PLURAL}.{names.PROFILE_GROUP}"
ROLE = "expiry-sidecar-deadline-profiles"


def openapi_to_jsonschema(schema: Any) -> Any:
    """The CRD's structural schema as JSON Schema: ``nullable`` becomes a type that admits null."""
    if isinstance(schema, dict):
        out = {key: openapi_to_jsonschema(value) for key, value in schema.items() if key != "nullable"}
        if schema.get("nullable") and "type" in schema:
            out["type"] = [schema["type"], "null"]
        return out
    if isinstance(schema, list):
        return [openapi_to_jsonschema(item) for item in schema]
    return schema


def test_the_crd_ships_kept_on_uninstall_with_printer_columns(defaults: Rendered) -> None:
    crd = defaults.one("CustomResourceDefinition", CRD)
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "expiry.io",
        "Namespaced",
        "DeadlineProfile",
    )
    (version,) = spec["versions"]
    assert version["name"] == names.PROFILE_VERSION and version["served"] and version["storage"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Blocks"] == ".status.blocks" and columns["Held"] == ".status.heldScopes"
    assert {"Workload", "Scopes", "Longest", "Updated", "Age"} <= set(columns)


def test_what_the_sidecar_writes_is_valid_under_the_crds_schema(defaults: Rendered) -> None:
    crd = defaults.one("CustomResourceDefinition", CRD)
    schema = openapi_to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    held, warming = ScopeStats(), ScopeStats()
    for _ in range(30):
        held.record(0.05, 600)
    held.killed(60.0)
    warming.record(2.0, 600)
    owner = profile.Owner("batch/v1", "Job", "train", "u")
    scopes = {f"train.py#{n}": stats for n, stats in enumerate((held, warming))}
    obj = profile.body(
        "job-train", "ml", owner, scopes, Policy("adaptive"), writer="p", now="2026-12-03T14:00:00Z"
    )
    jsonschema.validate(obj, schema)
    assert obj["status"]["scopes"][1]["suggestedSeconds"] is None
    too_many = profile.body(
        "p", "ml", None, {str(n): warming for n in range(65)}, Policy(), writer="", now=""
    )
    with pytest.raises(jsonschema.ValidationError, match="too long"):  # bounded as the sidecar bounds it
        jsonschema.validate(too_many, schema)
    assert schema["properties"]["status"]["properties"]["scopes"]["maxItems"] == profile.MAX_SCOPES


def test_the_crd_can_be_left_to_the_cluster_or_removed_on_uninstall(helm: Helm) -> None:
    assert not helm.render({"crds": {"install": False}}).all("CustomResourceDefinition")
    loose = helm.render({"crds": {"keep": False}}).one("CustomResourceDefinition", CRD)
    assert "annotations" not in loose["metadata"]


def test_sidecars_may_only_get_create_and_patch_profiles_in_bound_namespaces(
    helm: Helm, defaults: Rendered
) -> None:
    assert not [r for r in defaults.all("ClusterRole") if r["metadata"]["name"] == ROLE]
    bindings = [{"namespace": "ml", "serviceAccount": "trainer"}]
    on = helm.render({"deadlineProfiles": {"enabled": True, "bindings": bindings}})
    assert rules(on.one("ClusterRole", ROLE)) == {
        ("expiry.io", "deadlineprofiles", "get"),
        ("expiry.io", "deadlineprofiles", "create"),
        ("expiry.io", "deadlineprofiles", "patch"),
    }
    (binding,) = [b for b in on.all("RoleBinding") if b["roleRef"]["name"] == ROLE]
    assert binding["metadata"]["namespace"] == "ml"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainer", "namespace": "ml"}]
    assert binding["roleRef"]["kind"] == "ClusterRole", "bound per namespace: no ClusterRoleBinding"
    assert not [b for b in on.all("ClusterRoleBinding") if b["roleRef"]["name"] == ROLE]


def test_people_read_profiles_through_view_and_delete_them_through_edit(defaults: Rendered) -> None:
    view = defaults.one("ClusterRole", "expiry-deadline-profiles-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {verb for _, _, verb in rules(view)} == {"get", "list", "watch"}
    edit = defaults.one("ClusterRole", "expiry-deadline-profiles-edit")
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert {verb for _, _, verb in rules(edit)} == {"delete"}
