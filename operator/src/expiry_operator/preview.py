"""``expiry-operator inject``: what admission would make of each pod in a manifest file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml

from expiry_operator.injection import Denied, Injected, admit
from expiry_operator.settings import SidecarSettings
from expiry_operator.surrogates import LoneSurrogate, joined
from expiry_operator.workloads import pod_slots


class ManifestError(ValueError):
    """The input is not a readable manifest."""


class WouldDeny(Exception):
    """Admission would refuse one of the pods; the message is the one-line reason."""


def load_documents(data: bytes) -> list[dict[str, Any]]:
    """The objects of a (multi-document) YAML or JSON file; a ``kind: List`` is expanded."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as e:
        raise ManifestError(f"not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:  # PyYAML builds nested collections recursively
        raise ManifestError("nested too deeply to be a Kubernetes object") from None
    objects: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        try:
            joined(document)
        except LoneSurrogate as e:
            raise ManifestError(f"document {index + 1}: {e}") from None
        if not isinstance(document, dict):
            raise ManifestError(f"document {index + 1} is not a Kubernetes object (a mapping)")
        if document.get("kind") == "List" and isinstance(document.get("items"), list):
            objects.extend(item for item in document["items"] if isinstance(item, dict))
        else:
            objects.append(document)
    return objects


def inject_documents(
    documents: Iterable[dict[str, Any]], settings: SidecarSettings, *, native_sidecars_supported: bool
) -> list[dict[str, Any]]:
    """Every pod and pod template injected as admission would; raises WouldDeny on the first denial."""
    results = []
    for document in documents:
        for slot in pod_slots(document):
            outcome = admit(slot.as_pod(), settings, native_sidecars_supported=native_sidecars_supported)
            if isinstance(outcome, Denied):
                raise WouldDeny(f"{slot.where}: {outcome.message}")
            if isinstance(outcome, Injected):
                slot.put(outcome.pod)
        results.append(document)
    return results


def render(documents: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        single = (
            documents[0] if len(documents) == 1 else {"apiVersion": "v1", "kind": "List", "items": documents}
        )
        return json.dumps(single, indent=2) + "\n"
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=len(documents) > 1)
