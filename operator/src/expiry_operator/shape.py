"""The shape of a pod, checked once at the boundary, before admission reads any of it. PURE.

The API server only sends pods its schema accepts, but ``expiry-operator inject -f`` reads whatever a
person wrote, and the webhook port is reachable by anything in the cluster. Rather than guard each
read in the injection core, every field the core reads (and every field it writes into) is checked
here against its type in the Kubernetes Pod schema, and a pod that breaks one is refused with the
field's path, e.g. ``spec.containers[1].env[0].name must be a string, got int``. Fields the core does
not read are left to the API server. JSON ``null`` stands for an absent optional field, as the API
server reads it. Nesting deeper than any real pod (``MAX_DEPTH``) is refused too: the core copies and
compares pods recursively.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 64
"""Deeper than any Pod schema path (the deepest, through affinity terms, is about 12 levels)."""


@dataclasses.dataclass(frozen=True)
class Scalar:
    """A JSON scalar of one of ``types`` (bool is never taken for int)."""

    types: tuple[type, ...]
    name: str


@dataclasses.dataclass(frozen=True)
class Obj:
    """An object whose listed fields have the given shapes (``required`` ones must be present)."""

    fields: Mapping[str, Shape]
    required: frozenset[str] = frozenset()
    not_null: frozenset[str] = frozenset()
    """May be absent, but not null (kopf reads ``metadata`` with ``.get(key, {})``)."""


@dataclasses.dataclass(frozen=True)
class ListOf:
    item: Shape


@dataclasses.dataclass(frozen=True)
class MapOf:
    value: Shape


Shape = Scalar | Obj | ListOf | MapOf

STRING = Scalar((str,), "a string")
INTEGER = Scalar((int,), "an integer")
BOOLEAN = Scalar((bool,), "a boolean")
QUANTITY = Scalar((str, int, float), "a quantity (a string or a number)")
ANY = Obj({})
"""An object whose fields the core does not read."""

SECURITY_CONTEXT = Obj({"runAsUser": INTEGER, "runAsGroup": INTEGER, "runAsNonRoot": BOOLEAN})
CONTAINER = Obj(
    {
        "name": STRING,
        "env": ListOf(Obj({"name": STRING, "value": STRING}, frozenset({"name"}))),
        "volumeMounts": ListOf(Obj({"name": STRING, "mountPath": STRING}, frozenset({"name", "mountPath"}))),
        "ports": ListOf(Obj({"containerPort": INTEGER}, frozenset({"containerPort"}))),
        "securityContext": SECURITY_CONTEXT,
        "resources": Obj({"limits": MapOf(QUANTITY), "requests": MapOf(QUANTITY)}),
    },
    frozenset({"name"}),
)
METADATA = Obj(
    {
        "name": STRING,
        "generateName": STRING,
        "namespace": STRING,
        "uid": STRING,
        "labels": MapOf(STRING),
        "annotations": MapOf(STRING),
    }
)
OBJECT = Obj({"apiVersion": STRING, "kind": STRING, "metadata": METADATA}, not_null=frozenset({"metadata"}))
"""Any Kubernetes object, as far as kopf reads it before a handler runs."""
POD = Obj(
    {
        **OBJECT.fields,
        "spec": Obj(
            {
                "containers": ListOf(CONTAINER),
                "initContainers": ListOf(CONTAINER),
                "ephemeralContainers": ListOf(Obj({"name": STRING}, frozenset({"name"}))),
                "volumes": ListOf(Obj({"name": STRING}, frozenset({"name"}))),
                "securityContext": SECURITY_CONTEXT,
                "hostPID": BOOLEAN,
                "shareProcessNamespace": BOOLEAN,
                "os": Obj({"name": STRING}),
                "restartPolicy": STRING,
            }
        ),
    },
    not_null=OBJECT.not_null,
)


def pod_problem(pod: object) -> str | None:
    """What makes ``pod`` unreadable as a Pod, naming the field; None when the core may read it."""
    return too_deep(pod) or _problem(pod, POD, "")


def object_problem(value: object) -> str | None:
    """What makes ``value`` unreadable as a Kubernetes object (its metadata), naming the field."""
    return too_deep(value) or _problem(value, OBJECT, "")


def too_deep(value: object, limit: int = MAX_DEPTH) -> str | None:
    """The path at which ``value`` nests deeper than ``limit``, if it does (iterative: no recursion)."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > limit:
            return f"{path or 'the object'} is nested deeper than {limit} levels"
        if isinstance(item, Mapping):
            stack.extend((v, _field(path, str(k)), depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
    return None


def _problem(value: Any, shape: Shape, path: str) -> str | None:
    where = path or "the object"
    if isinstance(shape, Scalar):
        if (isinstance(value, bool) and bool not in shape.types) or not isinstance(value, shape.types):
            return f"{where} must be {shape.name}, got {_kind(value)}"
        return None
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            return f"{where} must be a list, got {_kind(value)}"
        return _first(_problem(item, shape.item, f"{path}[{i}]") for i, item in enumerate(value))
    if not isinstance(value, Mapping):
        return f"{where} must be an object, got {_kind(value)}"
    if isinstance(shape, MapOf):
        return _first(
            f"{where} keys must be strings, got {_kind(key)}"
            if not isinstance(key, str)
            else _problem(item, shape.value, _field(path, key))
            for key, item in value.items()
        )
    missing = sorted(shape.required - value.keys())
    if missing:
        return f"{_field(path, missing[0])} is required"
    return _first(
        _problem(value[key], field, _field(path, key))
        for key, field in shape.fields.items()
        if value.get(key) is not None or key in shape.required or (key in value and key in shape.not_null)
    )


def _first(problems: Any) -> str | None:
    return next((problem for problem in problems if problem is not None), None)


def _field(path: str, key: str) -> str:
    shown = key if key.isprintable() else repr(key)  # a control character must not break the line
    return f"{path}.{shown}" if path else shown


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)
