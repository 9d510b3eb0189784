"""The operator's configuration file (camelCase YAML, every key optional) and its defaults.

The chart mounts the file from a ConfigMap at /etc/expiry/operator.yaml. Loading is strict: an
unknown key or a value of the wrong type is an error naming the key, so a typo in the chart's
values never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from expiry import names
from expiry_operator.leadership import LeaseTiming
from expiry_operator.opt_in import OFF, ON
from expiry_operator.quantities import QuantityError, parse_quantity
from expiry_operator.surrogates import LoneSurrogate, joined

NativeSidecarMode = Literal["auto", "true", "false"]
StackDumpMode = Literal["off", "client", "py-spy"]
NATIVE_SIDECAR_MODES: tuple[NativeSidecarMode, ...] = ("auto", "true", "false")
Mode = Literal["enforce", "observe"]
MODES: tuple[Mode, ...] = ("enforce", "observe")
DeadlinePolicy = Literal["requested", "adaptive"]
DEADLINE_POLICIES: tuple[DeadlinePolicy, ...] = ("requested", "adaptive")
STACK_DUMP_MODES: tuple[StackDumpMode, ...] = ("off", "client", "py-spy")
DEFAULT_CONFIG_PATH = "/etc/expiry/operator.yaml"
SIGNAL_NAMES = tuple(sorted(s.name for s in signal.Signals if s.name.startswith("SIG") and "_" not in s.name))


def signal_name(value: str) -> str | None:
    """The one spelling rule for signals (annotation and config): TERM, term, SIGTERM -> SIGTERM;
    "" stays "" (the client's own signal); None: not a signal name."""
    name = value.strip().upper()
    if not name:
        return ""
    if not name.startswith("SIG"):
        name = f"SIG{name}"
    return name if name in SIGNAL_NAMES else None


def boolean(value: str) -> bool | None:
    """The one spelling rule for booleans, shared with ``expiry.io/enabled`` (see opt_in.py)."""
    return True if value in ON else False if value in OFF else None


def number(value: object) -> float | None:
    """A number, or a string of one (what ``helm --set key=2.5`` passes); None otherwise."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    except (ValueError, OverflowError):  # "abc", 10**400
        return None
    return None


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a bad value; the message names the key."""


@dataclasses.dataclass(frozen=True)
class SidecarSettings:
    image: str = "ghcr.io/expiry-io/expiry-sidecar:0.2.0.dev0"
    image_pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Mapping[str, str]] = dataclasses.field(
        default_factory=lambda: {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    )
    metrics_port: int = names.METRICS_PORT
    native_sidecar: NativeSidecarMode = "auto"
    kill_signal: str = ""
    escalate_after: float = 10
    stack_dumps: StackDumpMode = "off"
    events: bool = True
    scope_metrics: bool = False
    flight_recorder: bool = True
    """Set TORCH_FR_BUFFER_SIZE in trainers with stack dumps on (unless they set it)."""
    pod_condition: bool = False
    """Pass --pod-condition: the pods' service accounts must be allowed to patch pods/status."""
    mode: Mode = "enforce"
    deadlines: DeadlinePolicy = "requested"
    adaptive_factor: float = 5
    adaptive_min_samples: int = 20
    adaptive_floor: float = 60
    env: tuple[Mapping[str, Any], ...] = ()
    """Extra EnvVar objects of the injected container (e.g. a proxy); EXPIRY_* names are the sidecar's own."""
    false_kill_budget: int = 3
    deadline_profile: bool = False
    """Pass --deadline-profile: the pods' service accounts must be allowed to get, create and patch
    deadlineprofiles.expiry.io in their namespace (the chart's deadlineProfiles.bindings)."""


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    port: int = 8443
    cert_file: str = "/etc/expiry/tls/tls.crt"
    key_file: str = "/etc/expiry/tls/tls.key"
    cert_reload_interval: float = 10.0  # seconds between checks of the files for a rotated certificate


@dataclasses.dataclass(frozen=True)
class PortSettings:
    port: int


@dataclasses.dataclass(frozen=True)
class UnprotectedPodsSettings:
    watch: bool = True


@dataclasses.dataclass(frozen=True)
class HangReportSettings:
    """One ``HangDetected`` Event per workload and incident, from the sidecars' kill Events."""

    enabled: bool = True
    window: float = 5.0  # seconds without a new kill Event that close an incident
    max_span: float = 60.0  # an incident is reported at the latest this long after it opened


@dataclasses.dataclass(frozen=True)
class LeaderElectionSettings:
    """The Lease that picks the one replica running the pod watches (see leadership.py).

    ``lease_namespace`` empty: the operator's own namespace ($EXPIRY_POD_NAMESPACE from the downward
    API, else the service account's namespace file, else ``default``). The identity is the pod's name
    ($EXPIRY_POD_NAME), else ``hostname-pid``.
    """

    enabled: bool = True
    lease_name: str = "expiry-operator"
    lease_namespace: str = ""
    timing: LeaseTiming = dataclasses.field(default_factory=LeaseTiming)


@dataclasses.dataclass(frozen=True)
class ShutdownSettings:
    """On SIGTERM: not ready at once, the webhook answered ``drain_seconds`` longer (see drain.py)."""

    drain_seconds: float = 0.0  # 0: stop at once; the chart sets it below terminationGracePeriodSeconds


@dataclasses.dataclass(frozen=True)
class Settings:
    sidecar: SidecarSettings = dataclasses.field(default_factory=SidecarSettings)
    webhook: WebhookSettings = dataclasses.field(default_factory=WebhookSettings)
    health: PortSettings = dataclasses.field(default_factory=lambda: PortSettings(port=8080))
    metrics: PortSettings = dataclasses.field(default_factory=lambda: PortSettings(port=9465))
    unprotected_pods: UnprotectedPodsSettings = dataclasses.field(default_factory=UnprotectedPodsSettings)
    hang_reports: HangReportSettings = dataclasses.field(default_factory=HangReportSettings)
    leader_election: LeaderElectionSettings = dataclasses.field(default_factory=LeaderElectionSettings)
    shutdown: ShutdownSettings = dataclasses.field(default_factory=ShutdownSettings)


def load_settings(path: str | Path | None) -> Settings:
    """Read the YAML config file; ``None`` means all defaults."""
    if path is None:
        return Settings()
    try:
        text = Path(path).read_text(encoding="utf-8")
        document = yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from e
    except RecursionError:  # PyYAML builds nested collections recursively
        raise ConfigError(f"config file {path} is nested too deeply") from None
    try:
        document = joined(document)
    except LoneSurrogate as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return settings_from_dict({} if document is None else document, source=str(path))


def settings_from_dict(document: object, *, source: str = "config") -> Settings:
    """Build Settings from an already parsed document (camelCase keys)."""
    root = _Section(document, source)
    sidecar = root.section("sidecar")
    webhook = root.section("webhook")
    health = root.section("health")
    metrics = root.section("metrics")
    unprotected = root.section("unprotectedPods")
    hang = root.section("hangReports")
    election = root.section("leaderElection")
    shutdown = root.section("shutdown")
    root.reject_unknown()
    defaults = Settings()
    result = Settings(
        sidecar=SidecarSettings(
            image=sidecar.text("image", defaults.sidecar.image),
            image_pull_policy=sidecar.choice(
                "imagePullPolicy", defaults.sidecar.image_pull_policy, ("Always", "IfNotPresent", "Never")
            ),
            resources=sidecar.resources("resources", defaults.sidecar.resources),
            metrics_port=sidecar.port("metricsPort", defaults.sidecar.metrics_port),
            native_sidecar=sidecar.choice(
                "nativeSidecar", defaults.sidecar.native_sidecar, NATIVE_SIDECAR_MODES
            ),
            kill_signal=sidecar.signal("killSignal", defaults.sidecar.kill_signal),
            escalate_after=sidecar.seconds("escalateAfter", defaults.sidecar.escalate_after),
            stack_dumps=sidecar.choice("stackDumps", defaults.sidecar.stack_dumps, STACK_DUMP_MODES),
            events=sidecar.flag("events", defaults.sidecar.events),
            scope_metrics=sidecar.flag("scopeMetrics", defaults.sidecar.scope_metrics),
            flight_recorder=sidecar.flag("flightRecorder", defaults.sidecar.flight_recorder),
            pod_condition=sidecar.flag("podCondition", defaults.sidecar.pod_condition),
            mode=sidecar.choice("mode", defaults.sidecar.mode, MODES),
            deadlines=sidecar.choice("deadlines", defaults.sidecar.deadlines, DEADLINE_POLICIES),
            adaptive_factor=sidecar.positive("adaptiveFactor", defaults.sidecar.adaptive_factor),
            adaptive_min_samples=int(
                sidecar.positive("adaptiveMinSamples", defaults.sidecar.adaptive_min_samples, whole=True)
            ),
            adaptive_floor=sidecar.positive("adaptiveFloor", defaults.sidecar.adaptive_floor),
            env=sidecar.env_vars("env"),
            false_kill_budget=int(
                sidecar.positive("falseKillBudget", defaults.sidecar.false_kill_budget, whole=True)
            ),
            deadline_profile=sidecar.flag("deadlineProfile", defaults.sidecar.deadline_profile),
        ),
        webhook=WebhookSettings(
            port=webhook.port("port", defaults.webhook.port),
            cert_file=webhook.text("certFile", defaults.webhook.cert_file),
            key_file=webhook.text("keyFile", defaults.webhook.key_file),
            cert_reload_interval=webhook.seconds("certReloadInterval", defaults.webhook.cert_reload_interval),
        ),
        health=PortSettings(port=health.port("port", defaults.health.port)),
        metrics=PortSettings(port=metrics.port("port", defaults.metrics.port)),
        unprotected_pods=UnprotectedPodsSettings(
            watch=unprotected.flag("watch", defaults.unprotected_pods.watch)
        ),
        hang_reports=HangReportSettings(
            enabled=hang.flag("enabled", defaults.hang_reports.enabled),
            window=hang.seconds("window", defaults.hang_reports.window),
            max_span=hang.seconds("maxSpan", defaults.hang_reports.max_span),
        ),
        leader_election=_leader_election(election, defaults.leader_election),
        shutdown=ShutdownSettings(
            drain_seconds=shutdown.seconds("drainSeconds", defaults.shutdown.drain_seconds)
        ),
    )
    for section in (sidecar, webhook, health, metrics, unprotected, hang, election, shutdown):
        section.reject_unknown()
    return result


def _leader_election(section: _Section, defaults: LeaderElectionSettings) -> LeaderElectionSettings:
    timing = LeaseTiming(
        duration=section.seconds("leaseDuration", defaults.timing.duration),
        renew_deadline=section.seconds("renewDeadline", defaults.timing.renew_deadline),
        retry_period=section.seconds("retryPeriod", defaults.timing.retry_period),
    )
    problem = timing.problem()
    if problem is not None:
        raise ConfigError(f"{section.name}: {problem}")
    return LeaderElectionSettings(
        enabled=section.flag("enabled", defaults.enabled),
        lease_name=section.text("leaseName", defaults.lease_name),
        lease_namespace=section.text("leaseNamespace", defaults.lease_namespace),
        timing=timing,
    )


class _Section:
    """One mapping of the config document; remembers which keys were read to reject the others."""

    def __init__(self, value: object, path: str) -> None:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {type(value).__name__}")
        self._value: Mapping[Any, Any] = value
        self._path = path
        self._read: set[str] = set()

    @property
    def name(self) -> str:
        return self._path

    def _get(self, key: str) -> object:
        self._read.add(key)
        return self._value.get(key)

    def _name(self, key: str) -> str:
        return f"{self._path}.{key}"

    def section(self, key: str) -> _Section:
        return _Section(self._get(key), self._name(key))

    def reject_unknown(self) -> None:
        unknown = sorted(str(key) for key in self._value if key not in self._read)
        if unknown:
            raise ConfigError(f"{self._path}: unknown key(s) {', '.join(unknown)}")

    def text(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self._name(key)} must be a string, got {value!r}")
        return value

    def choice(self, key: str, default: Any, accepted: tuple[str, ...]) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool):  # YAML reads an unquoted true/false as a boolean
            value = "true" if value else "false"
        if value not in accepted:
            raise ConfigError(f"{self._name(key)} must be one of {', '.join(accepted)}; got {value!r}")
        return value

    def signal(self, key: str, default: str) -> str:
        value = self.text(key, default)
        name = signal_name(value)
        if name is None:
            raise ConfigError(
                f"{self._name(key)} must be a signal name such as SIGTERM or TERM, or empty; got {value!r}"
            )
        return name

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        flag = value if isinstance(value, bool) else boolean(value) if isinstance(value, str) else None
        if flag is None:
            raise ConfigError(
                f"{self._name(key)} must be true or false"
                f" ({' | '.join(ON)} | {' | '.join(OFF)}), got {value!r}"
            )
        return flag

    def port(self, key: str, default: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ConfigError(f"{self._name(key)} must be a port number 1-65535, got {value!r}")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        seconds = number(value)
        if seconds is None or not 0 <= seconds < math.inf:
            raise ConfigError(f"{self._name(key)} must be a non-negative number of seconds, got {value!r}")
        return seconds

    def positive(self, key: str, default: float, *, whole: bool = False) -> float:
        value = self._get(key)
        if value is None:
            return default
        positive = number(value)
        if positive is None or not 0 < positive < math.inf or (whole and positive != int(positive)):
            kind = "a whole number >= 1" if whole else "a finite number > 0"
            raise ConfigError(f"{self._name(key)} must be {kind}, got {value!r}")
        return positive

    def resources(
        self, key: str, default: Mapping[str, Mapping[str, str]]
    ) -> Mapping[str, Mapping[str, str]]:
        value = self._get(key)
        if value is None:
            return default
        section = _Section(value, self._name(key))
        result = {kind: section.quantities(kind) for kind in ("requests", "limits")}
        section.reject_unknown()
        return {kind: quantities for kind, quantities in result.items() if quantities}

    def env_vars(self, key: str) -> tuple[Mapping[str, Any], ...]:
        """A list of Kubernetes EnvVar objects: ``name`` and ``value`` (a string) or ``valueFrom``."""
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(f"{self._name(key)} must be a list of {{name, value}} or {{name, valueFrom}}")
        result = []
        for index, item in enumerate(value):
            where = f"{self._name(key)}[{index}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
                raise ConfigError(f"{where} must be a mapping with a non-empty name")
            if item["name"].startswith(names.ENV_PREFIX):
                raise ConfigError(f"{where}: {item['name']} is the sidecar's own ({names.ENV_PREFIX}*)")
            unknown = set(item) - {"name", "value", "valueFrom"}
            if unknown or ("value" in item) == ("valueFrom" in item):
                raise ConfigError(f"{where} must have exactly name and one of value or valueFrom")
            if "value" in item and not isinstance(item["value"], str):
                raise ConfigError(f"{where}.value must be a string, got {item['value']!r}")
            if "valueFrom" in item and not isinstance(item["valueFrom"], Mapping):
                raise ConfigError(f"{where}.valueFrom must be a mapping")
            result.append(dict(item))
        return tuple(result)

    def quantities(self, key: str) -> Mapping[str, str]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self._name(key)} must be a mapping of resource names to quantities")
        result: dict[str, str] = {}
        for name, quantity in value.items():
            try:
                parse_quantity(str(quantity))
            except QuantityError as e:
                raise ConfigError(f"{self._name(key)}.{name}: {e}") from e
            result[str(name)] = str(quantity)
        return result
