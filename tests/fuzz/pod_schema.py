"""The Kubernetes Pod schema that kubernetes-validate ships: pods generated from it, and a fast validator.

``schema_pods()`` draws pods that the schema accepts, field by field from the schema itself (every
property, enum, map and list it defines, optional fields chosen at random, less often the deeper they
sit), so the fuzzers start from shapes a real API server would pass. ``schema_errors()`` is the
schema's verdict on a pod, with one validator built once (kubernetes_validate.validate reloads the
1 MB definitions file on every call).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
import kubernetes_validate
from hypothesis import strategies as st
from referencing import Registry, Resource

from expiry import names

VERSION = kubernetes_validate.utils.latest_version()
MAX_DEPTH = 7  # below this, only required fields: a generated pod stays a few kilobytes


def _schema_dir() -> Any:
    return resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", f"v{VERSION}-local")


@functools.cache
def _pod_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(_schema_dir().joinpath("pod-v1.json").read_text())
    return schema


@functools.cache
def _definitions() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_schema_dir().joinpath("_definitions.json").read_text())
    return document


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    registry: Registry[Any] = Resource.from_contents(_pod_schema()) @ Registry()
    registry = Resource.from_contents(_definitions()) @ registry
    return jsonschema.Draft202012Validator(_pod_schema(), registry=registry)


def schema_errors(pod: Any) -> set[tuple[str, str]]:
    """Where and why ``pod`` breaks the Pod schema: (path, failed keyword) pairs; empty when valid."""
    try:
        return {
            ("/".join(map(str, error.absolute_path)), str(error.validator))
            for error in _validator().iter_errors(pod)
        }
    except RecursionError:
        return {("", "nested too deeply to validate")}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = _definitions()["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


TEXT = st.text(alphabet="abcxyz019-./:", max_size=8)
KEYS = st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True)


@st.composite
def instance(draw: st.DrawFn, node: dict[str, Any], depth: int = 0) -> Any:
    """A value the schema ``node`` accepts (null never: it stands for an absent field)."""
    node = _resolve(node)
    if "enum" in node:
        return draw(st.sampled_from([value for value in node["enum"] if value is not None]))
    if "oneOf" in node or "anyOf" in node:
        return draw(instance(draw(st.sampled_from(node.get("oneOf") or node["anyOf"])), depth))
    kinds = node.get("type", "object")
    kinds = [kind for kind in (kinds if isinstance(kinds, list) else [kinds]) if kind != "null"]
    kind = draw(st.sampled_from(kinds or ["object"]))
    if kind == "string":
        return draw(TEXT)
    if kind == "integer":
        return draw(st.integers(min_value=0, max_value=70000))
    if kind == "number":
        return draw(st.integers(min_value=0, max_value=100) | st.floats(0, 100))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "array":
        size = 0 if depth >= MAX_DEPTH else draw(st.integers(min_value=0, max_value=2))
        return [draw(instance(node.get("items", {}), depth + 1)) for _ in range(size)]
    properties: dict[str, Any] = node.get("properties", {})
    if not properties:
        extra = node.get("additionalProperties")
        if not isinstance(extra, dict) or depth >= MAX_DEPTH:
            return {}
        size = draw(st.integers(min_value=0, max_value=2))
        return {draw(KEYS): draw(instance(extra, depth + 1)) for _ in range(size)}
    required = set(node.get("required", ()))
    chance = max(2, 4 + 3 * depth)  # one optional field in `chance` at this depth
    chosen = [
        key
        for key in sorted(properties)
        if key in required or (depth < MAX_DEPTH and draw(st.integers(0, chance - 1)) == 0)
    ]
    return {key: draw(instance(properties[key], depth + 1)) for key in chosen}


@st.composite
def schema_pods(draw: st.DrawFn) -> dict[str, Any]:
    """A Pod the schema accepts, with at least one container; opted in to expiry most of the time."""
    spec = draw(instance(_pod_schema()["properties"]["spec"], 1))
    if not spec.get("containers"):
        spec["containers"] = [draw(instance({"$ref": "#/$defs/io.k8s.api.core.v1.Container"}, 2))]
    metadata = draw(instance(_pod_schema()["properties"]["metadata"], 1))
    annotations = metadata.setdefault("annotations", {})
    annotations[names.ENABLED_ANNOTATION] = draw(st.sampled_from(["true", "true", "true", "false", "yes"]))
    spec.pop("hostPID", None)  # refused on purpose: it would hide every other outcome half the time
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
