"""A small Kubernetes REST client for the tests and the local control plane (requests, client
certificates or a bearer token from a kubeconfig). Not the product's client: the product talks to the
API through kopf (operator) and its own writer (sidecar); the tests talk to the same real API server
through this one, so what they see is the server's answer, not a library's interpretation of it."""

from __future__ import annotations

import base64
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import requests
import yaml

Obj = dict[str, Any]
T = TypeVar("T")

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: Obj | str) -> None:
        self.status = status
        self.body = body
        message = body.get("message", "") if isinstance(body, dict) else body
        super().__init__(f"{status}: {message}")

    @property
    def message(self) -> str:
        return str(self.body.get("message", "")) if isinstance(self.body, dict) else self.body


class Kube:
    """``Kube.from_kubeconfig(path)``: requests against the API server that kubeconfig names."""

    def __init__(self, server: str, session: requests.Session) -> None:
        self.server = server.rstrip("/")
        self.session = session

    @classmethod
    def from_kubeconfig(cls, path: Path | str, *, user: str | None = None) -> Kube:
        config = yaml.safe_load(Path(path).read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        creds = next(u["user"] for u in config["users"] if u["name"] == (user or context["user"]))
        session = _session()
        session.verify = _file(cluster, "certificate-authority")
        if "token" in creds:
            session.headers["Authorization"] = f"Bearer {creds['token']}"
        elif "client-certificate" in creds or "client-certificate-data" in creds:
            session.cert = (_file(creds, "client-certificate"), _file(creds, "client-key"))
        return cls(cluster["server"], session)

    def with_token(self, token: str) -> Kube:
        """The same server, as the owner of ``token`` (e.g. a ServiceAccount's TokenRequest token)."""
        session = _session()
        session.verify = self.session.verify
        session.headers["Authorization"] = f"Bearer {token}"
        return Kube(self.server, session)

    # -- requests -------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        **params: Any,
    ) -> Obj:
        response = self.session.request(
            method,
            self.server + path,
            json=body,
            params={k.replace("_", ""): v for k, v in params.items()} or None,
            headers={"Content-Type": content_type, "Accept": "application/json"},
            timeout=30,
        )
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        if not response.ok:
            raise ApiError(response.status_code, answer)
        return answer if isinstance(answer, dict) else {}

    def get(self, path: str, **params: Any) -> Obj:
        return self.request("GET", path, **params)

    def create(self, path: str, body: Obj, **params: Any) -> Obj:
        return self.request("POST", path, body, **params)

    def patch(self, path: str, body: Any, content_type: str = MERGE, **params: Any) -> Obj:
        return self.request("PATCH", path, body, content_type=content_type, **params)

    def delete(self, path: str, **params: Any) -> Obj:
        return self.request("DELETE", path, **params)

    def items(self, path: str, **params: Any) -> list[Obj]:
        return list(self.get(path, **params).get("items", []))

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def apply_all(self, objects: list[Obj]) -> None:
        """Create each object (a cluster-scoped one or one with its namespace set)."""
        for obj in objects:
            self.create(collection_path(obj), obj)

    def token(
        self, namespace: str, service_account: str, *, pod: Obj | None = None, seconds: int = 3600
    ) -> str:
        """A TokenRequest token for the ServiceAccount (bound to ``pod`` when given), as a kubelet gets it."""
        spec: Obj = {"expirationSeconds": seconds}
        if pod is not None:
            spec["boundObjectRef"] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            }
        answer = self.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])

    def can(
        self,
        verb: str,
        resource: str,
        *,
        namespace: str = "",
        group: str = "",
        subresource: str = "",
        user: str,
        name: str = "",
    ) -> bool:
        """The API server's own answer (SubjectAccessReview) to "may ``user`` do this?"."""
        attributes = {
            "verb": verb,
            "resource": resource,
            "group": group,
            "namespace": namespace,
            "subresource": subresource,
            "name": name,
        }
        review = self.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                    "resourceAttributes": {k: v for k, v in attributes.items() if v},
                },
            },
        )
        return bool(review["status"].get("allowed"))


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll until ``condition()`` is truthy; its value. Raises naming ``what`` on timeout."""
    give_up = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = condition()
        except (ApiError, requests.RequestException) as error:
            value, last = None, error
        if value:
            return value
        if time.monotonic() > give_up:
            raise TimeoutError(f"{what}: not within {timeout} s" + (f" (last error: {last})" if last else ""))
        time.sleep(every)


def collection_path(obj: Obj) -> str:
    """The REST collection an object is created in."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = PLURALS.get(kind, kind.lower() + "s")
    namespace = obj.get("metadata", {}).get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def object_path(obj: Obj) -> str:
    return f"{collection_path(obj)}/{obj['metadata']['name']}"


PLURALS = {
    "Endpoints": "endpoints",
    "NetworkPolicy": "networkpolicies",
    "PodSecurityPolicy": "podsecuritypolicies",
}


def _session() -> requests.Session:
    """A session that uses only the kubeconfig: no proxy or CA bundle from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def _file(section: Obj, key: str) -> str:
    """A kubeconfig's ``key`` as a file path (``key-data`` is written to a temporary file)."""
    if key in section:
        return str(section[key])
    data = base64.b64decode(section[f"{key}-data"])
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as out:
        out.write(data)
    return out.name


def documents(text: str) -> Iterator[Obj]:
    """The objects of a multi-document YAML text."""
    return (doc for doc in yaml.safe_load_all(text) if doc)
