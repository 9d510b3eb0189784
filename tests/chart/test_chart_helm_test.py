"""The `helm test` hook: its objects as rendered, and its check run for real against the real operator.

No API server runs here, and kmock (0.8) has no server-side dry-run: it stores every create, dryRun=All
or not. So the one request the test makes is served by ``DryRunApiServer``: real TLS, a bearer token,
and the admission step the API server runs: an AdmissionReview to the real ``expiry-operator`` over real
TLS, the JSON patch it answers with applied, nothing stored. The check is the script from the rendered
ConfigMap, run as a real process with the rendered pod's command line.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib.util
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import aiohttp
import aiohttp.web
import jsonpatch
import pytest
import yaml

from expiry import names
from tests.operator.operator_harness import (
    KubeApi,
    OperatorProcess,
    Tls,
    admission_review,
    free_port,
    make_tls,
)

if TYPE_CHECKING:
    from conftest import Helm, Rendered

HOOK = {"helm.sh/hook": "test", "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
TOKEN = "test-token-" + uuid.uuid4().hex


def load_script(helm: Helm) -> ModuleType:
    path = helm.chart / "files" / "webhook-test.py"
    spec = importlib.util.spec_from_file_location("webhook_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script(helm: Helm) -> ModuleType:
    return load_script(helm)


@pytest.fixture(scope="module")
def hooks(helm: Helm) -> Rendered:
    return helm.render({"helmTest": {"namespace": "team-a"}})


# -- rendered -------------------------------------------------------------------------------------


def test_every_test_object_is_a_test_hook_removed_once_it_passed(hooks: Rendered) -> None:
    assert sorted(o["kind"] for o in hooks.tests) == [
        "ConfigMap",
        "Pod",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    for obj in hooks.tests:
        annotations = obj["metadata"]["annotations"]
        assert {k: annotations[k] for k in HOOK} == HOOK, obj["kind"]
    pod_weight = int(
        next(o for o in hooks.tests if o["kind"] == "Pod")["metadata"]["annotations"].get(
            "helm.sh/hook-weight", "0"
        )
    )
    others = [
        int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks.tests if o["kind"] != "Pod"
    ]
    assert max(others) < pod_weight, "the pod's account, RBAC and script must exist before the pod"


def test_the_test_may_create_pods_in_the_tested_namespace_and_nothing_else(
    hooks: Rendered, helm: Helm
) -> None:
    by_kind = {o["kind"]: o for o in hooks.tests}
    role, binding, account = by_kind["Role"], by_kind["RoleBinding"], by_kind["ServiceAccount"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": helm.namespace}
    ]
    pod = by_kind["Pod"]
    assert pod["metadata"]["namespace"] == helm.namespace, "the release namespace: never injected itself"
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_the_test_pod_runs_the_shipped_script_in_the_operator_image(hooks: Rendered, helm: Helm) -> None:
    by_kind = {o["kind"]: o for o in hooks.tests}
    script = (helm.chart / "files" / "webhook-test.py").read_text()
    assert by_kind["ConfigMap"]["data"]["webhook-test.py"] == script
    (container,) = by_kind["Pod"]["spec"]["containers"]
    operator = hooks.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == operator["image"]
    assert container["securityContext"] == operator["securityContext"]
    assert "--namespace=team-a" in container["command"]
    assert f"--excluded={helm.namespace},kube-system" in container["command"]


def test_the_test_can_be_left_out(helm: Helm) -> None:
    assert not helm.render({"helmTest": {"enabled": False}}).tests


# -- the check, run for real --------------------------------------------------------------------------


class DryRunApiServer:
    """The one API server request the test makes: a pod create with ``dryRun=All``, over real TLS, for a
    bearer token. It runs mutating admission as the API server does (an AdmissionReview to the webhook
    over TLS verified against its CA, the JSON patch applied; an unreachable webhook lets the pod through,
    as failurePolicy Ignore does) and stores nothing. A create without dryRun=All is refused."""

    def __init__(self, webhook: OperatorProcess, tls: Tls, token: str) -> None:
        self.webhook, self.tls, self.token = webhook, tls, token
        self.seen: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dry-run-api", daemon=True)
        self._thread.start()
        self._runner: aiohttp.web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> DryRunApiServer:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _start(self) -> None:
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/api/v1/namespaces/{namespace}/pods", self._create)])
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(self.tls.cert, self.tls.key)
        port = free_port()
        await aiohttp.web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=serving).start()
        self.url = f"https://127.0.0.1:{port}"

    async def _create(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return aiohttp.web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)
        if request.query.get("dryRun") != "All":
            return aiohttp.web.json_response({"kind": "Status", "message": "only dry-run here"}, status=400)
        pod = await request.json()
        self.seen.append(copy.deepcopy(pod))
        pod["metadata"]["name"] = pod["metadata"].pop("generateName", "") + uuid.uuid4().hex[:5]
        review = admission_review(pod)
        review["request"]["dryRun"] = True
        trust = ssl.create_default_context(cafile=str(self.webhook.tls.ca))
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    self.webhook.url, json=review, ssl=trust, timeout=aiohttp.ClientTimeout(10)
                ) as reply,
            ):
                answer = (await reply.json())["response"]
        except aiohttp.ClientError:
            return aiohttp.web.json_response(pod, status=201)  # failurePolicy: Ignore
        if not answer["allowed"]:
            message = f"admission webhook denied the request: {answer['status']['message']}"
            return aiohttp.web.json_response({"kind": "Status", "message": message}, status=400)
        if "patch" in answer:
            pod = jsonpatch.apply_patch(pod, yaml.safe_load(base64.b64decode(answer["patch"])))
        return aiohttp.web.json_response(pod, status=201)


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("helm-test")
    with KubeApi() as api, OperatorProcess(api, make_tls(workdir / "tls"), workdir / "operator") as running:
        yield running


def run_rendered_test(
    hooks: Rendered, server: DryRunApiServer, tmp_path: Path, *, namespace: str = "team-a"
) -> subprocess.CompletedProcess[str]:
    """The shipped script with the rendered pod's arguments, its service-account files pointed at ours."""
    by_kind = {o["kind"]: o for o in hooks.tests}
    script = tmp_path / "webhook-test.py"
    script.write_text(by_kind["ConfigMap"]["data"]["webhook-test.py"])
    (token := tmp_path / "token").write_text(TOKEN + "\n")
    command = by_kind["Pod"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "/expiry-test/webhook-test.py"]
    args = [a.replace("--namespace=team-a", f"--namespace={namespace}") for a in command[2:]]
    files = [f"--api={server.url}", f"--token-file={token}", f"--ca-file={server.tls.ca}"]
    return subprocess.run(
        [sys.executable, str(script), *args, *files], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def server(operator: OperatorProcess, tmp_path: Path) -> Iterator[DryRunApiServer]:
    with DryRunApiServer(operator, make_tls(tmp_path / "api-tls"), TOKEN) as running:
        yield running


def test_the_test_passes_against_the_real_webhook(
    hooks: Rendered, server: DryRunApiServer, tmp_path: Path
) -> None:
    result = run_rendered_test(hooks, server, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ok: opted-in pod in namespace team-a",
        "ok: pod without the opt-in in namespace team-a",
    ]
    opted_in = [names.ENABLED_ANNOTATION in pod["metadata"].get("annotations", {}) for pod in server.seen]
    assert opted_in == [True, False]


def test_the_test_fails_when_the_webhook_is_not_reached(hooks: Rendered, tmp_path: Path) -> None:
    with KubeApi() as api:
        stopped = OperatorProcess(api, make_tls(tmp_path / "tls"), tmp_path / "operator")  # never started
        with DryRunApiServer(stopped, make_tls(tmp_path / "api-tls"), TOKEN) as server:
            result = run_rendered_test(hooks, server, tmp_path)
    assert result.returncode == 1
    assert "FAILED: opted-in pod: the opted-in pod came back without the sidecar" in result.stderr
    assert "ok: pod without the opt-in" in result.stdout


def test_the_test_reports_the_api_servers_refusal(
    hooks: Rendered, server: DryRunApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused request (here: the token is not the one the server knows) is reported with its message."""
    monkeypatch.setattr(server, "token", "another-token")
    result = run_rendered_test(hooks, server, tmp_path)
    assert result.returncode == 1
    assert "the API server refused the dry-run pod (401): Unauthorized" in result.stderr


def test_the_test_fails_for_a_namespace_the_webhook_never_sees(
    hooks: Rendered, server: DryRunApiServer, helm: Helm, tmp_path: Path
) -> None:
    result = run_rendered_test(hooks, server, tmp_path, namespace=helm.namespace)
    assert result.returncode == 1
    assert f"namespace {helm.namespace} is never sent to the webhook" in result.stderr
    assert server.seen == []


@pytest.fixture(scope="module")
def injected(operator: OperatorProcess, script: ModuleType) -> dict[str, Any]:
    """A pod exactly as the real operator injects the script's opted-in test pod."""
    pod = script.test_pod("t", "team-a", "img:1", opted_in=True)
    pod["metadata"]["name"] = "t-1"
    answer = operator.admit(pod)["response"]
    return dict(jsonpatch.apply_patch(pod, yaml.safe_load(base64.b64decode(answer["patch"]))))


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "no shared process namespace": lambda pod: pod["spec"].pop("shareProcessNamespace"),
    "no timer env": lambda pod: pod["spec"]["containers"][0].pop("env"),
    "no mount": lambda pod: pod["spec"]["containers"][0].pop("volumeMounts"),
    "no injected label": lambda pod: pod["metadata"]["labels"].pop(names.INJECTED_LABEL),
    "two sidecars": lambda pod: pod["spec"]["containers"].append({"name": names.SIDECAR_CONTAINER}),
}


def test_a_really_injected_pod_has_no_problems(script: ModuleType, injected: dict[str, Any]) -> None:
    assert script.injection_problems(injected) == []
    assert script.untouched_problems(injected) == [
        "a pod that did not opt in was injected: the webhook's scoping is broken"
    ]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_each_missing_piece_is_a_problem(script: ModuleType, injected: dict[str, Any], breakage: str) -> None:
    pod = copy.deepcopy(injected)
    BREAKAGES[breakage](pod)
    assert len(script.injection_problems(pod)) == 1
