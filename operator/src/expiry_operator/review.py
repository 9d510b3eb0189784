"""Checks on an incoming AdmissionReview before kopf sees it, so a bad body gets a clear 400."""

from __future__ import annotations

from typing import Any

from expiry_operator.shape import MAX_DEPTH, object_problem, pod_problem, too_deep

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


def review_problem(review: Any) -> str | None:
    """What makes ``review`` unusable as an AdmissionReview request, or None if it is fine."""
    if not isinstance(review, dict):
        return f"expected an AdmissionReview object, got a JSON {type(review).__name__}"
    deep = too_deep(review, MAX_DEPTH + 3)  # the pod sits 2 levels down: request.object
    if deep is not None:
        return deep
    if review.get("kind") != "AdmissionReview" or review.get("apiVersion") not in API_VERSIONS:
        return f"expected kind AdmissionReview with apiVersion {' or '.join(API_VERSIONS)}"
    request = review.get("request")
    if not isinstance(request, dict):
        return "request is missing or not an object"
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        return "request.uid is missing"
    resource = request.get("resource")
    if not isinstance(resource, dict) or not all(
        isinstance(resource.get(key), str) for key in ("group", "version", "resource")
    ):
        return "request.resource must be an object with group, version and resource strings"
    if not isinstance(request.get("userInfo"), dict):
        return "request.userInfo is missing or not an object"
    new, old = request.get("object"), request.get("oldObject")
    if not isinstance(new, dict) and not isinstance(old, dict):
        return "request.object (or oldObject) is missing or not an object"
    shape_problem = pod_problem if resource["resource"] == "pods" else object_problem
    for key, value in (("object", new), ("oldObject", old)):
        if value is not None and not isinstance(value, dict):
            return f"request.{key} must be an object or null"
        problem = None if value is None else shape_problem(value)
        if problem is not None:  # kopf reads the object before any handler: it must be readable
            return f"request.{key}: {problem}"
    return None


POD_RESOURCE = {"group": "", "version": "v1", "resource": "pods"}


def unhandled_resource(review: dict[str, Any]) -> str | None:
    """Why a well-formed review is not ours to answer (the webhook handles core v1 pods only), or None."""
    resource = review["request"]["resource"]
    if {key: resource[key] for key in POD_RESOURCE} != POD_RESOURCE:
        api = f"{resource['group'] or 'core'}/{resource['version']}"
        return f"expiry handles pods only, got {api} {resource['resource']}"
    return None
