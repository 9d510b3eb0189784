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
import random
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


TEXT_ALPHABET = "abcxyz019-./:"
KEY_FIRST, KEY_REST = "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz0123456789-"


def instance(rng: random.Random, node: dict[str, Any], depth: int = 0) -> Any:
    """A value the schema ``node`` accepts (null never: it stands for an absent field), chosen by ``rng``:
    plain ``random`` calls, not one hypothesis draw per field, so a pod costs microseconds, not
    milliseconds (hypothesis draws the seed, so an input is still reproduced from its blob)."""
    node = _resolve(node)
    if "enum" in node:
        return rng.choice([value for value in node["enum"] if value is not None])
    if "oneOf" in node or "anyOf" in node:
        return instance(rng, rng.choice(node.get("oneOf") or node["anyOf"]), depth)
    kinds = node.get("type", "object")
    kinds = [kind for kind in (kinds if isinstance(kinds, list) else [kinds]) if kind != "null"]
    kind = rng.choice(kinds or ["object"])
    if kind == "string":
        return "".join(rng.choices(TEXT_ALPHABET, k=rng.randint(0, 8)))
    if kind == "integer":
        return rng.choice([0, 1, 70000, rng.randint(0, 70000)])
    if kind == "number":
        return rng.choice([0, 100, rng.randint(0, 100), rng.uniform(0, 100)])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        size = 0 if depth >= MAX_DEPTH else rng.randint(0, 2)
        return [instance(rng, node.get("items", {}), depth + 1) for _ in range(size)]
    properties: dict[str, Any] = node.get("properties", {})
    if not properties:
        extra = node.get("additionalProperties")
        if not isinstance(extra, dict) or depth >= MAX_DEPTH:
            return {}
        return {_key(rng): instance(rng, extra, depth + 1) for _ in range(rng.randint(0, 2))}
    required = set(node.get("required", ()))
    chance = max(2, 4 + 3 * depth)  # one optional field in `chance` at this depth
    chosen = [
        key
        for key in sorted(properties)
        if key in required or (depth < MAX_DEPTH and rng.randrange(chance) == 0)
    ]
    return {key: instance(rng, properties[key], depth + 1) for key in chosen}


def _key(rng: random.Random) -> str:
    return rng.choice(KEY_FIRST) + "".join(rng.choices(KEY_REST, k=rng.randint(0, 6)))


def schema_pod(rng: random.Random) -> dict[str, Any]:
    """A Pod the schema accepts, with at least one container; opted in to expiry most of the time."""
    spec = instance(rng, _pod_schema()["properties"]["spec"], 1)
    if not spec.get("containers"):
        spec["containers"] = [instance(rng, {"$ref": "#/$defs/io.k8s.api.core.v1.Container"}, 2)]
    metadata = instance(rng, _pod_schema()["properties"]["metadata"], 1)
    annotations = metadata.setdefault("annotations", {})
    annotations[names.ENABLED_ANNOTATION] = rng.choice(["true", "true", "true", "false", "yes"])
    spec.pop("hostPID", None)  # refused on purpose: it would hide every other outcome half the time
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def schema_pods() -> st.SearchStrategy[dict[str, Any]]:
    """Pods the schema accepts (``schema_pod``), each from a seed hypothesis draws."""
    return st.randoms(use_true_random=True).map(schema_pod)
