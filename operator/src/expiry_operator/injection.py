"""The injection core: a Pod (a plain dict) in, the JSON patch that injects it or a denial out. No I/O.

``admit`` never mutates its argument. For a pod seen for the first time it writes the patch directly
from what it adds (a handful of ``add`` operations), without copying or diffing the pod: that patch is
what the webhook returns. For an already injected pod (one that carries the injection record) it
strips what the record lists, injects afresh, and returns an empty patch when the fresh injection is
the same as the one already there, so reinvocation and restores are no-ops.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jsonpatch
import jsonpointer

from expiry import names
from expiry_operator import record as records
from expiry_operator.opt_in import OptIn, invalid_message, opt_in
from expiry_operator.options import (
    CONTAINERS,
    RECORD_ANNOTATION,
    OptionError,
    PodOptions,
    parse_options,
)
from expiry_operator.profiles import profile_for
from expiry_operator.quantities import QuantityError, parse_quantity
from expiry_operator.settings import SidecarSettings
from expiry_operator.shape import pod_problem
from expiry_operator.sidecar_spec import Identity, SidecarPlan, sidecar_container

Pod = dict[str, Any]
JsonPatch = list[dict[str, Any]]
"""RFC 6902 operations, as a mutating webhook returns them."""

BAD_REQUEST = 400
FORBIDDEN = 403
SCRAPE, SCRAPE_PORT, SCRAPE_PATH = "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"
SCRAPE_ANNOTATIONS = (SCRAPE, SCRAPE_PORT, SCRAPE_PATH)


@dataclasses.dataclass(frozen=True)
class Injected:
    """The pod is injected: ``patch`` turns ``original`` into the injected pod (empty: already is)."""

    original: Mapping[str, Any]
    patch: JsonPatch

    @property
    def changed(self) -> bool:
        return bool(self.patch)

    @property
    def pod(self) -> Pod:
        """The injected pod, as a new object (the patch applied to a copy of the original)."""
        pod: Pod = jsonpatch.apply_patch(dict(self.original), self.patch)
        return pod


@dataclasses.dataclass(frozen=True)
class Skipped:
    reason: str


@dataclasses.dataclass(frozen=True)
class Denied:
    message: str
    code: int


Outcome = Injected | Skipped | Denied


class _Deny(Exception):
    def __init__(self, message: str, code: int = FORBIDDEN) -> None:
        super().__init__(message)
        self.code = code


def admit(pod: Mapping[str, Any], settings: SidecarSettings, *, native_sidecars_supported: bool) -> Outcome:
    """Decide what admission makes of ``pod``: inject it, leave it alone, or deny it."""
    problem = pod_problem(pod)
    if problem is not None:
        return Denied(f"expiry: not a pod: {problem}", BAD_REQUEST)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    enabled = opt_in(annotations)
    if enabled is OptIn.INVALID:
        return Denied(f"expiry: {invalid_message(annotations[names.ENABLED_ANNOTATION])}", BAD_REQUEST)
    if enabled is not OptIn.ON:
        return Skipped(f"{names.ENABLED_ANNOTATION} is {enabled.value}")
    try:
        options = parse_options(annotations, settings)
        patch = _patch(pod, annotations.get(RECORD_ANNOTATION), settings, options, native_sidecars_supported)
    except OptionError as e:
        return Denied(f"expiry: {e}", BAD_REQUEST)
    except records.RecordError as e:
        return Denied(f"expiry: {e}", BAD_REQUEST)
    except _Deny as e:
        return Denied(f"expiry: {e}", e.code)
    return Injected(original=pod, patch=patch)


def _patch(
    pod: Mapping[str, Any],
    recorded: str | None,
    settings: SidecarSettings,
    options: PodOptions,
    native_ok: bool,
) -> JsonPatch:
    spec = pod.get("spec") or {}
    _check_process_namespace(spec)
    if recorded is None:
        return _injection(pod, settings, options, native_ok)
    # Injected before: strip the recorded injection from a copy, inject that afresh, compare.
    stripped: Pod = copy.deepcopy(dict(pod))
    records.strip(stripped, records.loads(recorded))
    result = jsonpatch.apply_patch(
        stripped, _injection(stripped, settings, options, native_ok), in_place=True
    )
    if _canonical(result) == _canonical(pod):
        return []
    replaced: JsonPatch = jsonpatch.make_patch(dict(pod), result).patch  # rare: a repair or an upgrade
    return replaced


def _injection(
    pod: Mapping[str, Any], settings: SidecarSettings, options: PodOptions, native_ok: bool
) -> JsonPatch:
    """The operations that inject ``pod``, which has no injection yet; the pod itself is not touched."""
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    spec: Mapping[str, Any] = pod.get("spec") or {}
    _check_reserved_name(spec)
    trainers = _trainers(spec, options.containers)
    native = {"true": True, "false": False}.get(options.native_sidecar, native_ok)
    plan = SidecarPlan(
        options=options,
        identity=_identity(spec, [trainer for _, trainer in trainers]),
        volume=_free_name(names.VOLUME_NAME, (v.get("name") for v in spec.get("volumes") or [])),
        metrics_port=_free_port(settings.metrics_port, spec),
        native=native,
        exit_when_alone=not native and spec.get("restartPolicy", "Always") != "Always",
        guaranteed_qos=_is_guaranteed(spec),
        profile=profile_for(pod) if options.deadline_profile else None,
    )
    sidecar = sidecar_container(settings, plan)
    token = _service_account_mount(spec)
    if token is not None:
        sidecar["volumeMounts"].append(token)
    ops: JsonPatch = []
    env_added, mounts_added = {}, {}
    for index, trainer in trainers:
        path = f"/spec/containers/{index}"
        env = _missing_env(trainer, _trainer_env(options, trainer["name"])) + _flight_recorder_env(
            trainer, options
        )
        _check_no_torch_timer_server(trainer)
        _check_run_dir_free(trainer)
        _append(ops, path, trainer, "env", [{"name": name, "value": value} for name, value in env])
        _append(ops, path, trainer, "volumeMounts", [{"name": plan.volume, "mountPath": names.RUN_DIR}])
        env_added[trainer["name"]] = tuple(name for name, _ in env)
        mounts_added[trainer["name"]] = (plan.volume,)
    scrape = _scrape_annotations(metadata, plan.metrics_port)
    record = records.Record(
        containers=() if native else (sidecar["name"],),
        init_containers=(sidecar["name"],) if native else (),
        volumes=(plan.volume,),
        env=env_added,
        volume_mounts=mounts_added,
        share_process_namespace="shareProcessNamespace" not in spec,
        annotations=tuple(scrape),
    )
    _append(ops, "/spec", spec, "initContainers" if native else "containers", [sidecar])
    _append(ops, "/spec", spec, "volumes", [{"name": plan.volume, "emptyDir": {}}])
    ops.append({"op": "add", "path": "/spec/shareProcessNamespace", "value": True})
    _put(ops, "/metadata", metadata, "labels", {names.INJECTED_LABEL: "true"})
    _put(
        ops,
        "/metadata",
        metadata,
        "annotations",
        {names.STATUS_ANNOTATION: names.INJECTED, RECORD_ANNOTATION: record.dumps(), **scrape},
    )
    return ops


def _scrape_annotations(metadata: Mapping[str, Any], port: int) -> dict[str, str]:
    """``prometheus.io/*`` scrape hints for clusters without the Prometheus operator's PodMonitor.

    A pod holds one set of them, so a pod that already has any (its trainer's own metrics) keeps its
    own, untouched: its sidecar is then scraped through the PodMonitor only.
    """
    annotations = metadata.get("annotations") or {}
    if any(key in annotations for key in SCRAPE_ANNOTATIONS):
        return {}
    return {SCRAPE: "true", SCRAPE_PORT: str(port), SCRAPE_PATH: "/metrics"}


def _append(ops: JsonPatch, path: str, owner: Mapping[str, Any], field: str, items: list[Any]) -> None:
    """Operations appending ``items`` to the list ``owner[field]`` (at ``path``), made if absent or empty."""
    if not items:
        return
    if owner.get(field):
        ops.extend({"op": "add", "path": f"{path}/{field}/-", "value": item} for item in items)
    else:
        ops.append({"op": "add", "path": f"{path}/{field}", "value": items})


def _put(ops: JsonPatch, path: str, owner: Mapping[str, Any], field: str, entries: dict[str, str]) -> None:
    """Operations setting ``entries`` in the map ``owner[field]`` (at ``path``), made if absent or empty."""
    if owner.get(field):
        ops.extend(
            {"op": "add", "path": f"{path}/{field}/{jsonpointer.escape(key)}", "value": value}
            for key, value in entries.items()
        )
    else:
        ops.append({"op": "add", "path": f"{path}/{field}", "value": entries})


def _check_process_namespace(spec: Mapping[str, Any]) -> None:
    if spec.get("hostPID") is True:
        raise _Deny(
            "pod has hostPID: true; the sidecar would then see (and could signal) every process "
            "on the node, so expiry refuses to inject it. Remove hostPID or the "
            f"{names.ENABLED_ANNOTATION} annotation."
        )
    if spec.get("shareProcessNamespace") is False:
        raise _Deny(
            "pod sets shareProcessNamespace: false, but the sidecar must share the pod's process "
            "namespace to see and signal the trainer. Remove that field (expiry sets it to true) "
            f"or the {names.ENABLED_ANNOTATION} annotation."
        )
    if (spec.get("os") or {}).get("name") == "windows":
        raise _Deny("pod runs on Windows (spec.os.name: windows); the expiry sidecar supports Linux only.")


def _check_reserved_name(spec: Mapping[str, Any]) -> None:
    for field in ("containers", "initContainers", "ephemeralContainers"):
        if any(c.get("name") == names.SIDECAR_CONTAINER for c in spec.get(field) or []):
            raise _Deny(
                f"pod already has a container named {names.SIDECAR_CONTAINER} in {field}, but no "
                f"{RECORD_ANNOTATION} record saying expiry injected it; that name is reserved for the "
                "injected sidecar: rename the container.",
                BAD_REQUEST,
            )


def _trainers(spec: Mapping[str, Any], wanted: tuple[str, ...] | None) -> list[tuple[int, dict[str, Any]]]:
    """The trainer containers, each with its index in ``spec.containers``."""
    containers: list[dict[str, Any]] = spec.get("containers") or []
    if not containers:
        raise _Deny("pod has no containers to protect", BAD_REQUEST)
    if wanted is None:
        return list(enumerate(containers))
    by_name = {c.get("name"): (index, c) for index, c in enumerate(containers)}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise _Deny(
            f"annotation {CONTAINERS}: {', '.join(unknown)} is not a container of this pod; "
            f"expected names among: {', '.join(str(name) for name in by_name)}",
            BAD_REQUEST,
        )
    return [by_name[name] for name in dict.fromkeys(wanted)]


def _effective(spec: Mapping[str, Any], container: Mapping[str, Any], field: str) -> Any:
    """A security-context field as the container gets it: its own value over the pod's."""
    own = (container.get("securityContext") or {}).get(field)
    return own if own is not None else (spec.get("securityContext") or {}).get(field)


def _identity(spec: Mapping[str, Any], trainers: list[dict[str, Any]]) -> Identity:
    """The uid the sidecar must share with the trainers to signal them with no capability at all."""
    uids = {t["name"]: _effective(spec, t, "runAsUser") for t in trainers}
    if len(set(uids.values())) > 1:
        listed = ", ".join(f"{name} (runAsUser {uid})" for name, uid in uids.items())
        raise _Deny(
            f"trainer containers run as different users: {listed}. Without CAP_KILL the sidecar can "
            f"signal one uid only; run the trainers as one uid, or list the ones to protect in {CONTAINERS}."
        )
    uid = next(iter(uids.values()))
    if uid is None and any(_effective(spec, t, "runAsNonRoot") is True for t in trainers):
        raise _Deny(
            "the trainer must run as non-root (runAsNonRoot: true) but its uid is left to the image, so "
            "the sidecar cannot be given the same uid, and the capability to signal other users "
            "(CAP_KILL) is not allowed under the restricted Pod Security level. Set "
            "securityContext.runAsUser on the pod or on its trainer containers."
        )
    gids = {_effective(spec, t, "runAsGroup") for t in trainers}
    return Identity(uid=uid, gid=gids.pop() if len(gids) == 1 else None)


def _free_name(wanted: str, taken: Iterable[str | None]) -> str:
    used = set(taken)
    candidates = (wanted if n == 0 else f"{wanted}-{n}" for n in range(len(used) + 1))
    return next(name for name in candidates if name not in used)


def _free_port(wanted: int, spec: Mapping[str, Any]) -> int:
    """The configured metrics port, or the next one no container of the pod declares."""
    used = {
        port.get("containerPort")
        for field in ("containers", "initContainers")
        for container in spec.get(field) or []
        for port in container.get("ports") or []
    }
    port = wanted
    while port in used:
        port += 1
    return port


def _trainer_env(options: PodOptions, container: str) -> list[tuple[str, str]]:
    """The FIFO, the container's own name (the sidecar keeps its statistics per container), the dumps."""
    env = [(names.TIMER_FILE_ENV, names.FIFO_PATH), (names.CONTAINER_ENV, container)]
    if options.stack_dumps != "off":
        env.append((names.DUMP_DIR_ENV, names.DUMP_DIR))
    return env


def _flight_recorder_env(container: Mapping[str, Any], options: PodOptions) -> list[tuple[str, str]]:
    """torch's flight recorder on, for the pre-kill dump to name the collective; the trainer's own
    TORCH_FR_BUFFER_SIZE (any value, 0 too) wins."""
    if options.stack_dumps == "off" or not options.flight_recorder:
        return []
    if any(item.get("name") == names.FLIGHT_RECORDER_ENV for item in container.get("env") or []):
        return []
    return [(names.FLIGHT_RECORDER_ENV, str(names.FLIGHT_RECORDER_ENTRIES))]


def _missing_env(container: Mapping[str, Any], wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The variables the container lacks (to add, and record for a later strip)."""
    present = {item.get("name"): item for item in container.get("env") or []}
    missing = []
    for name, value in wanted:
        if name in present:
            if present[name].get("value") != value:
                raise _Deny(
                    f"container {container['name']} already sets {name} to something else; expiry needs "
                    f"it to be {value!r}. Remove it from the container (expiry sets it).",
                    BAD_REQUEST,
                )
            continue
        missing.append((name, value))
    return missing


def _service_account_mount(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trainers' mount of the service account token, for the sidecar (its Events, the condition).

    The API server's ServiceAccount admission mounts the token into every container before mutating
    webhooks run, and does not run again after them: a container a webhook adds has no token unless
    the webhook mounts it (found on a real API server: the sidecar's writes were off, "no service
    account token"). None when the pod has no such mount (automountServiceAccountToken: false, or a
    manifest the API server has not admitted yet, where it will mount the token in every container).
    """
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for mount in container.get("volumeMounts") or []:
            if mount.get("mountPath", "").rstrip("/") == names.SERVICE_ACCOUNT_DIR:
                return {"name": mount["name"], "mountPath": names.SERVICE_ACCOUNT_DIR, "readOnly": True}
    return None


def _check_no_torch_timer_server(container: Mapping[str, Any]) -> None:
    """Deny ``TORCHELASTIC_ENABLE_FILE_TIMER=1``: torchrun would serve the sidecar's FIFO itself.

    With it, torchrun's agent starts torch's own FileTimerServer on ``TORCHELASTIC_TIMER_FILE``,
    deleting and recreating the FIFO at every restart. Denying says why at once; quietly dropping
    the variable would leave a manifest that means something else than it says. (A value read from
    a ConfigMap or set in a launch script is not seen here: the sidecar reports that reader.)
    """
    for item in container.get("env") or []:
        if item.get("name") == names.TORCH_FILE_TIMER_ENV and item.get("value") == "1":
            raise _Deny(
                f"container {container['name']} sets {names.TORCH_FILE_TIMER_ENV}=1, which makes torchrun "
                f"start torch's own FileTimerServer on the expiry sidecar's FIFO ({names.TIMER_FILE_ENV}): "
                "two timer servers would split the workers' requests. Remove the variable: the sidecar "
                "is the timer server, and torch's expires/FileTimerClient work with it unchanged.",
                BAD_REQUEST,
            )


def _check_run_dir_free(container: Mapping[str, Any]) -> None:
    if any(m.get("mountPath", "").rstrip("/") == names.RUN_DIR for m in container.get("volumeMounts") or []):
        raise _Deny(
            f"container {container['name']} already mounts a volume at {names.RUN_DIR}, where expiry "
            "mounts the timer FIFO's volume. Remove that mount.",
            BAD_REQUEST,
        )


def _is_guaranteed(spec: Mapping[str, Any]) -> bool:
    """Whether the pod has the Guaranteed QoS class (every container's requests equal its limits)."""
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    for container in containers:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = {**limits, **(resources.get("requests") or {})}
        for resource in ("cpu", "memory"):
            if resource not in limits or not _same_quantity(requests[resource], limits[resource]):
                return False
    return bool(containers)


def _same_quantity(a: object, b: object) -> bool:
    try:
        return parse_quantity(str(a)) == parse_quantity(str(b))
    except QuantityError:
        return False


_SORT_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
}


def _canonical(value: Any) -> Any:
    """The pod with its name-keyed lists sorted, so another webhook's reordering is no change."""
    if isinstance(value, Mapping):
        return {key: _canonical_field(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def _canonical_field(key: str, value: Any) -> Any:
    canonical = _canonical(value)
    sort_key = _SORT_KEYS.get(key)
    if sort_key is not None and isinstance(canonical, list) and all(isinstance(i, dict) for i in canonical):
        return sorted(canonical, key=lambda entry: str(entry.get(sort_key, "")))
    return canonical
