"""`helm test` for the expiry chart: does the API server inject the sidecar into opted-in pods, only there?

Runs in the chart's test pod (the operator image: its Python and the ``expiry`` names package). It asks the
API server to create two pods with server-side dry-run (``dryRun=All``: the full admission chain runs, our
webhook included, nothing is stored) in the namespace under test, one opted in and one not, and checks
what came back: the opted-in pod carries the sidecar, the shared process namespace and the trainer's
environment; the other one is untouched. A pass proves the webhook configuration, the Service, the
webhook's TLS (the API server trusts the caBundle) and its scoping, end to end on this cluster.

Standard library only. Exit status 0 when every check passed, 1 otherwise (each problem on its own line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expiry import names

ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
OPT_IN = {names.ENABLED_ANNOTATION: "true"}
Pod = dict[str, Any]


def test_pod(prefix: str, namespace: str, image: str, *, opted_in: bool) -> Pod:
    """A pod that passes the "restricted" Pod Security level, so that admission in any namespace accepts it.
    Opted in by both the annotation and the label (the label is what clusters before 1.30 select on)."""
    metadata: dict[str, Any] = {"generateName": f"{prefix}-", "namespace": namespace}
    if opted_in:
        metadata["annotations"] = dict(OPT_IN)
        metadata["labels"] = dict(OPT_IN)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "trainer",
                    "image": image,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def injection_problems(pod: Pod) -> list[str]:
    """What is missing from a pod the webhook should have injected (empty: all there)."""
    spec = pod.get("spec", {})
    metadata = pod.get("metadata", {})
    containers = spec.get("containers", [])
    sidecars = [
        c for c in containers + spec.get("initContainers", []) if c.get("name") == names.SIDECAR_CONTAINER
    ]
    if not sidecars and metadata.get("annotations", {}).get(names.STATUS_ANNOTATION) != names.INJECTED:
        return [
            "the opted-in pod came back without the sidecar: the API server did not call the webhook, or the "
            "call failed and failurePolicy Ignore let the pod through (see the API server's and the "
            "operator's logs; check the namespace is covered by the webhook's namespaceSelector)"
        ]
    problems = []
    if len(sidecars) != 1:
        problems.append(f"expected one {names.SIDECAR_CONTAINER} container, found {len(sidecars)}")
    if spec.get("shareProcessNamespace") is not True:
        problems.append("shareProcessNamespace is not true: the sidecar cannot see the trainer's processes")
    if metadata.get("annotations", {}).get(names.STATUS_ANNOTATION) != names.INJECTED:
        problems.append(f"annotation {names.STATUS_ANNOTATION} is not {names.INJECTED!r}")
    if metadata.get("labels", {}).get(names.INJECTED_LABEL) != "true":
        problems.append(f"label {names.INJECTED_LABEL} is not 'true' (the PodMonitor selects on it)")
    for container in containers:
        if container.get("name") == names.SIDECAR_CONTAINER:
            continue
        env = {e.get("name"): e.get("value") for e in container.get("env", [])}
        if env.get(names.TIMER_FILE_ENV) != names.FIFO_PATH:
            problems.append(
                f"container {container.get('name')}: {names.TIMER_FILE_ENV} is not {names.FIFO_PATH}"
            )
        mounts = {m.get("mountPath") for m in container.get("volumeMounts", [])}
        if names.RUN_DIR not in mounts:
            problems.append(f"container {container.get('name')}: nothing mounted at {names.RUN_DIR}")
    return problems


def untouched_problems(pod: Pod) -> list[str]:
    """What the webhook changed on a pod that did not opt in (empty: nothing)."""
    spec = pod.get("spec", {})
    every = spec.get("containers", []) + spec.get("initContainers", [])
    injected = any(c.get("name") == names.SIDECAR_CONTAINER for c in every)
    status = pod.get("metadata", {}).get("annotations", {}).get(names.STATUS_ANNOTATION)
    if injected or status is not None:
        return ["a pod that did not opt in was injected: the webhook's scoping is broken"]
    return []


class Api:
    """The API server, called with the pod's service-account token over TLS (or plain HTTP for a test)."""

    def __init__(self, url: str, token: str, ca_file: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None

    def dry_run_create(self, pod: Pod) -> Pod:
        namespace = pod["metadata"]["namespace"]
        request = urllib.request.Request(
            f"{self.url}/api/v1/namespaces/{namespace}/pods?dryRun=All&fieldManager=expiry-helm-test",
            data=json.dumps(pod).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as reply:
                created: Pod = json.loads(reply.read())
                return created
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("message", detail)
            raise RuntimeError(f"the API server refused the dry-run pod ({error.code}): {detail}") from error


def run_checks(api: Api, namespace: str, image: str, prefix: str, excluded: Sequence[str] = ()) -> list[str]:
    if namespace in excluded:
        return [
            f"namespace {namespace} is never sent to the webhook (excluded: {', '.join(excluded)}): set "
            "helmTest.namespace to a namespace the webhook covers"
        ]
    problems = []
    for opted_in, check in ((True, injection_problems), (False, untouched_problems)):
        what = "opted-in pod" if opted_in else "pod without the opt-in"
        try:
            result = api.dry_run_create(test_pod(prefix, namespace, image, opted_in=opted_in))
        except (RuntimeError, OSError) as error:
            problems.append(f"{what}: {error}")
            continue
        found = check(result)
        problems += [f"{what}: {problem}" for problem in found]
        if not found:
            print(f"ok: {what} in namespace {namespace}")
    return problems


def default_api_url() -> str:
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST", ""),
        os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
    )
    if not host:
        return ""
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--namespace", required=True, help="namespace to create the dry-run pods in")
    parser.add_argument("--image", required=True, help="image of the dry-run pods' container (never pulled)")
    parser.add_argument("--prefix", default="expiry-helm-test", help="generateName prefix of the pods")
    parser.add_argument("--api", default=default_api_url(), help="API server URL (default: in-cluster)")
    parser.add_argument("--excluded", default="", help="comma-separated namespaces the webhook never sees")
    parser.add_argument("--token-file", default=str(ACCOUNT / "token"))
    parser.add_argument("--ca-file", default=str(ACCOUNT / "ca.crt"))
    args = parser.parse_args(argv)
    if not args.api:
        parser.error("no --api and not running in a pod (KUBERNETES_SERVICE_HOST unset)")
    api = Api(args.api, Path(args.token_file).read_text().strip(), args.ca_file)
    excluded = [name for name in args.excluded.split(",") if name]
    problems = run_checks(api, args.namespace, args.image, args.prefix, excluded)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
