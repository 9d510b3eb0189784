"""The ``expiry-sidecar`` container as injected: command line, probes, resources, security context."""

from __future__ import annotations

import dataclasses
from typing import Any

from expiry import names
from expiry_operator.options import PodOptions
from expiry_operator.profiles import DeadlineProfileRef
from expiry_operator.quantities import parse_quantity
from expiry_operator.settings import SidecarSettings

SIDECAR_DEFAULTS = SidecarSettings()
"""The operator's defaults are the sidecar's own (tests/operator/test_settings_table.py holds them equal),
so a value equal to them need not be passed."""
SIDECAR_FALSE_KILL_BUDGET = 3
"""The sidecar's own default of --false-kill-budget: the flag is passed only when it differs, so a
sidecar image older than the flag still starts (version skew)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who the sidecar runs as: the trainer's uid/gid when known, else its image's user plus CAP_KILL."""

    uid: int | None
    gid: int | None

    @property
    def needs_kill_capability(self) -> bool:
        return self.uid is None


@dataclasses.dataclass(frozen=True)
class SidecarPlan:
    """Everything about this pod that shapes its sidecar."""

    options: PodOptions
    identity: Identity
    volume: str
    metrics_port: int
    native: bool
    exit_when_alone: bool
    guaranteed_qos: bool
    profile: DeadlineProfileRef | None = None
    """The workload's DeadlineProfile, when the pod uses one (profiles.profile_for)."""


def sidecar_container(settings: SidecarSettings, plan: SidecarPlan) -> dict[str, Any]:
    ready = {"path": "/readyz", "port": plan.metrics_port}
    probe = {"httpGet": ready, "periodSeconds": 1, "failureThreshold": 60}
    container: dict[str, Any] = {
        "name": names.SIDECAR_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": _args(plan),
        "env": [
            # The pod's own identity, for the Events the sidecar records about kills: kubectl
            # describe finds Events by name, namespace and uid.
            {"name": names.POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": names.POD_NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": names.POD_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            # The node, named in every kill, so the hang report says where a rank behind runs.
            {"name": names.NODE_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            *(dict(variable) for variable in settings.env),
        ],
        "ports": [{"name": names.METRICS_PORT_NAME, "containerPort": plan.metrics_port, "protocol": "TCP"}],
        "resources": _resources(settings, plan),
        "securityContext": _security_context(plan),
        "volumeMounts": [{"name": plan.volume, "mountPath": names.RUN_DIR}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": plan.metrics_port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if plan.native:
        # A native sidecar: kubelet starts the trainers only once the startup probe passes, and
        # stops the sidecar after them, so a Job completes without the sidecar's help.
        container["restartPolicy"] = "Always"
        container["startupProbe"] = probe
    else:
        container["readinessProbe"] = probe
    return container


def _args(plan: SidecarPlan) -> list[str]:
    options = plan.options
    args = ["serve", "--fifo", names.FIFO_PATH, "--metrics-port", str(plan.metrics_port)]
    args += ["--state-file", names.STATE_PATH, "--escalate-after", _number(options.escalate_after)]
    if options.kill_signal:
        args += ["--kill-signal", options.kill_signal]
    # Defaults are left out, so a sidecar image older than these flags still starts (docs/install.md,
    # version skew). The adaptive knobs go in every mode: with requested deadlines they still shape
    # the advice and the over-adaptive count that an adaptive roll-out is judged by (docs/deadlines.md).
    if options.mode != "enforce":
        args += ["--mode", options.mode]
    if options.deadlines != "requested":
        args += ["--deadlines", options.deadlines]
    if options.adaptive_factor != SIDECAR_DEFAULTS.adaptive_factor:
        args += ["--adaptive-factor", _number(options.adaptive_factor)]
    if options.adaptive_min_samples != SIDECAR_DEFAULTS.adaptive_min_samples:
        args += ["--adaptive-min-samples", str(options.adaptive_min_samples)]
    if options.adaptive_floor != SIDECAR_DEFAULTS.adaptive_floor:
        args += ["--adaptive-floor", _number(options.adaptive_floor)]
    if options.false_kill_budget != SIDECAR_FALSE_KILL_BUDGET:
        args += ["--false-kill-budget", str(options.false_kill_budget)]
    if plan.profile is not None:
        args += ["--deadline-profile", plan.profile.name]
        if plan.profile.owner is not None:
            args += ["--profile-owner", plan.profile.owner]
    if plan.exit_when_alone:
        args.append("--exit-when-alone")
    if options.events:
        args.append("--events")
    if options.pod_condition:
        args.append("--pod-condition")
    if options.scope_metrics:
        args.append("--scope-metrics")
    if options.stack_dumps != "off":
        args += ["--stack-dumps", names.DUMP_DIR]
    return args


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _resources(settings: SidecarSettings, plan: SidecarPlan) -> dict[str, dict[str, str]]:
    requests = dict(settings.resources.get("requests", {}))
    limits = dict(settings.resources.get("limits", {}))
    if plan.options.sidecar_cpu is not None:
        requests["cpu"] = plan.options.sidecar_cpu
    if plan.options.sidecar_memory is not None:
        requests["memory"] = plan.options.sidecar_memory
    for resource, request in requests.items():
        # A request above the configured limit would make the pod invalid: the limit follows it.
        if resource in limits and parse_quantity(request) > parse_quantity(limits[resource]):
            limits[resource] = request
    if plan.guaranteed_qos:
        # Adding a container without limits = requests would silently demote a Guaranteed pod
        # (exclusive CPUs under the static CPU manager, last to be evicted) to Burstable.
        for resource in ("cpu", "memory"):
            amount = limits.get(resource) or requests.get(resource)
            if amount is not None:
                requests[resource] = limits[resource] = amount
    return {kind: values for kind, values in (("requests", requests), ("limits", limits)) if values}


def _security_context(plan: SidecarPlan) -> dict[str, Any]:
    py_spy = plan.options.stack_dumps == "py-spy"
    # containerd and CRI-O give a non-root process no ambient capabilities, so an added capability is
    # lost at exec unless the user is root (kubernetes/kubernetes#56374): a sidecar that needs one is
    # root, and then needs CAP_KILL too to signal a trainer of another uid.
    root = plan.identity.needs_kill_capability or py_spy
    added = ["KILL"] if root and plan.identity.uid != 0 else []
    if py_spy:
        added.append("SYS_PTRACE")
    capabilities: dict[str, list[str]] = {"drop": ["ALL"]}
    if added:
        capabilities["add"] = added
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": capabilities,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if root:
        context["runAsUser"] = 0
        context["runAsNonRoot"] = False
    elif plan.identity.uid is not None:
        context["runAsUser"] = plan.identity.uid
        if plan.identity.uid != 0:
            context["runAsNonRoot"] = True
    if plan.identity.gid is not None:
        context["runAsGroup"] = plan.identity.gid
    return context
