"""Fixtures for the chart tests: the real `helm` binary and the chart rendered with named value sets.

Test modules get everything through fixtures (the `helm` fixture also carries the shared constants) and
import this module's types only for annotations, under TYPE_CHECKING.

helm is found on the PATH (scripts/test puts .tools/bin there) or at the repository's .tools/bin/helm.
Each scenario is rendered once per session for the oldest Kubernetes version the tests cover (1.27) and
for the newest one kubernetes-validate has schemas for.
"""

from __future__ import annotations

import base64
import datetime
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "expiry"
CI_VALUES = CHART / "ci"
"""charts/expiry/ci/<name>-values.yaml: the value sets chart-testing lints; each is a test scenario."""
RELEASE = "expiry"
NAMESPACE = "expiry-system"
OLD_KUBE = "1.27.0"
NEW_KUBE = kubernetes_validate.latest_version()

CERT_MANAGER_APIS = ("cert-manager.io/v1/Certificate", "cert-manager.io/v1/Issuer")
MONITORING_APIS = (
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


def make_ca_pem(common_name: str) -> str:
    """A real self-signed CA certificate (PEM), as a user would bring for tls.mode=secret."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


BYO_CA_PEM = make_ca_pem("byo-test-ca")

Obj = dict[str, Any]


def is_test_hook(obj: Obj) -> bool:
    return "test" in obj["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")


def rules(role: Obj) -> set[tuple[str, str, str]]:
    """A Role's or ClusterRole's rules flattened to (apiGroup, resource, verb)."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def find_helm() -> str:
    found = shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    if not Path(found).is_file():
        pytest.fail("helm not found on the PATH nor at .tools/bin/helm: run scripts/bootstrap dev")
    return found


@dataclass(frozen=True)
class Rendered:
    """The objects of one `helm template` run, with lookups by kind and name. The lookups see what
    `helm install` creates; `helm test`'s hook objects are apart, in ``tests``."""

    objects: list[Obj]
    tests: list[Obj] = field(default_factory=list)

    @property
    def everything(self) -> list[Obj]:
        return self.objects + self.tests

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Obj:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    def secret_data(self, name: str) -> dict[str, bytes]:
        data = self.one("Secret", name)["data"]
        return {key: base64.b64decode(value) for key, value in data.items()}


@dataclass(frozen=True)
class Helm:
    """Runs the real helm binary against the chart; also carries the constants the tests share."""

    binary: str
    chart: ClassVar[Path] = CHART
    release: ClassVar[str] = RELEASE
    namespace: ClassVar[str] = NAMESPACE
    old_kube: ClassVar[str] = OLD_KUBE
    new_kube: ClassVar[str] = NEW_KUBE
    cert_manager_apis: ClassVar[tuple[str, ...]] = CERT_MANAGER_APIS
    monitoring_apis: ClassVar[tuple[str, ...]] = MONITORING_APIS
    byo_ca_pem: ClassVar[str] = BYO_CA_PEM
    ci_values: ClassVar[Path] = CI_VALUES

    def run(self, *args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    @staticmethod
    def _flags(kube_version: str | None, api_versions: Sequence[str]) -> list[str]:
        flags = ["-f", "-"]
        if kube_version:
            flags += ["--kube-version", kube_version]
        for api in api_versions:
            flags += ["--api-versions", api]
        return flags

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        kube_version: str | None = NEW_KUBE,
        api_versions: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`helm template` (values go in on stdin); fails the test on error unless check=False."""
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra_args]
        result = self.run(*args, *self._flags(kube_version, api_versions), stdin=yaml.safe_dump(values or {}))
        if check and result.returncode != 0:
            pytest.fail(f"helm template failed:\n{result.stderr}")
        return result

    def render(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        kube_version: str | None = NEW_KUBE,
        api_versions: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> Rendered:
        result = self.template(
            values, kube_version=kube_version, api_versions=api_versions, extra_args=extra_args
        )
        every = [o for o in yaml.safe_load_all(result.stdout) if o]
        tests = [o for o in every if is_test_hook(o)]
        return Rendered([o for o in every if not is_test_hook(o)], tests)

    def lint(
        self, values: Mapping[str, Any] | None = None, *, kube_version: str | None = NEW_KUBE
    ) -> subprocess.CompletedProcess[str]:
        """`helm lint --strict` (it has no --api-versions: objects behind a CRD check are not linted)."""
        args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        return self.run(*args, *self._flags(kube_version, ()), stdin=yaml.safe_dump(values or {}))


@dataclass(frozen=True)
class Scenario:
    """A named set of values, the CRD APIs the pretend cluster has, and the Kubernetes version."""

    name: str
    values: Obj = field(default_factory=dict)
    api_versions: tuple[str, ...] = ()
    kube_version: str = NEW_KUBE

    @property
    def id(self) -> str:
        return f"{self.name}@{self.kube_version}"


CI_APIS: dict[str, tuple[str, ...]] = {
    "cert-manager": CERT_MANAGER_APIS,
    "cert-manager-issuer": CERT_MANAGER_APIS,
    "kube-prometheus-stack": MONITORING_APIS,
    "everything": MONITORING_APIS,
    "escape-hatches": MONITORING_APIS,
}
"""The CRD APIs the pretend cluster has for a value set (chart-testing renders without them)."""


def ci_value_sets() -> tuple[tuple[str, Obj, tuple[str, ...]], ...]:
    sets = []
    for path in sorted(CI_VALUES.glob("*-values.yaml")):
        name = path.name.removesuffix("-values.yaml")
        sets.append((name, yaml.safe_load(path.read_text()) or {}, CI_APIS.get(name, ())))
    return tuple(sets)


VALUE_SETS = ci_value_sets()

SCENARIOS = tuple(
    Scenario(name, values, apis, kube) for name, values, apis in VALUE_SETS for kube in (OLD_KUBE, NEW_KUBE)
)


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(find_helm())


@pytest.fixture(scope="session")
def render_cached(helm: Helm) -> Callable[[Scenario], Rendered]:
    """Renders a scenario once per session (generating certificates makes each render cost ~0.1 s)."""
    cache: dict[str, Rendered] = {}

    def render(scenario: Scenario) -> Rendered:
        if scenario.id not in cache:
            cache[scenario.id] = helm.render(
                scenario.values, kube_version=scenario.kube_version, api_versions=scenario.api_versions
            )
        return cache[scenario.id]

    return render


@pytest.fixture(scope="session")
def scenarios() -> tuple[Scenario, ...]:
    """Every scenario: each ci/ value set, with the CRD APIs of CI_APIS, on each Kubernetes version."""
    return SCENARIOS


@pytest.fixture(scope="session")
def ci_apis() -> dict[str, tuple[str, ...]]:
    return CI_APIS


@pytest.fixture(params=SCENARIOS, ids=lambda s: s.id)
def scenario(request: pytest.FixtureRequest) -> Scenario:
    scenario: Scenario = request.param
    return scenario


@pytest.fixture
def rendered(scenario: Scenario, render_cached: Callable[[Scenario], Rendered]) -> Rendered:
    return render_cached(scenario)


@pytest.fixture(scope="session")
def defaults(render_cached: Callable[[Scenario], Rendered]) -> Rendered:
    """The chart with default values on the newest Kubernetes."""
    return render_cached(Scenario("defaults"))
