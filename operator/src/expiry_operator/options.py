"""Per-pod options: the ``expiry.io/*`` annotations, parsed and checked against their accepted values.

Every error names the annotation, the value it got and what it accepts, because the message
reaches the pod's owner verbatim as the reason the API server refused the pod.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import TypeVar

from expiry import names
from expiry_operator.opt_in import OFF, ON
from expiry_operator.quantities import ACCEPTED as ACCEPTED_QUANTITY
from expiry_operator.quantities import QuantityError, parse_quantity
from expiry_operator.settings import (
    DEADLINE_POLICIES,
    MODES,
    NATIVE_SIDECAR_MODES,
    SIGNAL_NAMES,
    STACK_DUMP_MODES,
    DeadlinePolicy,
    Mode,
    NativeSidecarMode,
    SidecarSettings,
    StackDumpMode,
    boolean,
    signal_name,
)

P = names.ANNOTATION_PREFIX
CONTAINERS = f"{P}containers"
KILL_SIGNAL = f"{P}kill-signal"
ESCALATE_AFTER = f"{P}escalate-after"
SIDECAR_CPU = f"{P}sidecar-cpu"
SIDECAR_MEMORY = f"{P}sidecar-memory"
STACK_DUMPS = f"{P}stack-dumps"
NATIVE_SIDECAR = f"{P}native-sidecar"
EVENTS = f"{P}events"
FLIGHT_RECORDER = f"{P}flight-recorder"
POD_CONDITION = f"{P}pod-condition"
SCOPE_METRICS = f"{P}scope-metrics"
MODE = f"{P}mode"
DEADLINES = f"{P}deadlines"
ADAPTIVE_FACTOR = f"{P}adaptive-factor"
ADAPTIVE_MIN_SAMPLES = f"{P}adaptive-min-samples"
ADAPTIVE_FLOOR = f"{P}adaptive-floor"
FALSE_KILL_BUDGET = f"{P}false-kill-budget"
DEADLINE_PROFILE = f"{P}deadline-profile"
RECORD_ANNOTATION = f"{P}injection"
"""What the operator injected (JSON), so re-admission strips exactly that before injecting again."""

OWN_ANNOTATIONS = frozenset({names.ENABLED_ANNOTATION, names.STATUS_ANNOTATION, RECORD_ANNOTATION})
T = TypeVar("T")
S = TypeVar("S", bound=str)


class OptionError(ValueError):
    """A per-pod annotation holds a value outside its accepted set; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class PodOptions:
    containers: tuple[str, ...] | None  # None: every regular container is a trainer
    kill_signal: str  # "" = the signal the client asked for
    escalate_after: float
    sidecar_cpu: str | None
    sidecar_memory: str | None
    stack_dumps: StackDumpMode
    native_sidecar: NativeSidecarMode
    events: bool
    pod_condition: bool
    scope_metrics: bool
    flight_recorder: bool
    mode: Mode
    deadlines: DeadlinePolicy
    adaptive_factor: float
    adaptive_min_samples: int
    adaptive_floor: float
    false_kill_budget: int
    deadline_profile: bool


def parse_options(annotations: Mapping[str, str], defaults: SidecarSettings) -> PodOptions:
    """Read the pod's options; an absent annotation takes the operator-wide default."""
    unknown = sorted(key for key in annotations if key.startswith(P) and key not in _KNOWN)
    if unknown:
        raise OptionError(
            f"unknown annotation {unknown[0]}: accepted expiry.io annotations are {', '.join(sorted(_KNOWN))}"
        )

    def read(key: str, parse: Callable[[str, str], T], default: T) -> T:
        value = annotations.get(key)
        return default if value is None else parse(key, value)

    return PodOptions(
        containers=read(CONTAINERS, _container_list, None),
        kill_signal=read(KILL_SIGNAL, _signal_name, defaults.kill_signal),
        escalate_after=read(ESCALATE_AFTER, _seconds, defaults.escalate_after),
        sidecar_cpu=read(SIDECAR_CPU, _quantity, None),
        sidecar_memory=read(SIDECAR_MEMORY, _quantity, None),
        stack_dumps=read(STACK_DUMPS, _one_of(STACK_DUMP_MODES), defaults.stack_dumps),
        native_sidecar=read(NATIVE_SIDECAR, _one_of(NATIVE_SIDECAR_MODES), defaults.native_sidecar),
        events=read(EVENTS, _boolean, defaults.events),
        pod_condition=read(POD_CONDITION, _boolean, defaults.pod_condition),
        scope_metrics=read(SCOPE_METRICS, _boolean, defaults.scope_metrics),
        flight_recorder=read(FLIGHT_RECORDER, _boolean, defaults.flight_recorder),
        mode=read(MODE, _one_of(MODES), defaults.mode),
        deadlines=read(DEADLINES, _one_of(DEADLINE_POLICIES), defaults.deadlines),
        adaptive_factor=read(ADAPTIVE_FACTOR, _positive, defaults.adaptive_factor),
        adaptive_min_samples=read(ADAPTIVE_MIN_SAMPLES, _whole, defaults.adaptive_min_samples),
        adaptive_floor=read(ADAPTIVE_FLOOR, _positive, defaults.adaptive_floor),
        false_kill_budget=read(FALSE_KILL_BUDGET, _whole, defaults.false_kill_budget),
        deadline_profile=read(DEADLINE_PROFILE, _boolean, defaults.deadline_profile),
    )


def _bad(key: str, value: str, accepted: str) -> OptionError:
    return OptionError(f"annotation {key}: {value!r} is not accepted; expected {accepted}")


def _container_list(key: str, value: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(","))
    if not all(items):
        raise _bad(key, value, "a comma-separated list of container names, e.g. 'trainer,worker'")
    return items


def _signal_name(key: str, value: str) -> str:
    name = signal_name(value)
    if not name:
        raise _bad(key, value, f"a signal name: {', '.join(SIGNAL_NAMES)}")
    return name


def _boolean(key: str, value: str) -> bool:
    flag = boolean(value)
    if flag is None:
        raise _bad(key, value, f"{' | '.join(ON)} or {' | '.join(OFF)}")
    return flag


def _seconds(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise _bad(key, value, "a non-negative number of seconds, e.g. '30' (0 = never escalate)")
    return seconds


def _positive(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise _bad(key, value, "a finite number > 0, e.g. '5' or '2.5'")
    return number


def _whole(key: str, value: str) -> int:
    text = value.strip()
    # isdigit() alone takes "³" (int() refuses it) and any number of digits (int() refuses 4,301)
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) < 1:
        raise _bad(key, value, "a whole number >= 1, e.g. '20' (at most 9 digits)")
    return int(text)


def _quantity(key: str, value: str) -> str:
    try:
        parse_quantity(value)
    except QuantityError:
        raise _bad(key, value, ACCEPTED_QUANTITY) from None
    return value.strip()


def _one_of(accepted: tuple[S, ...]) -> Callable[[str, str], S]:
    def parse(key: str, value: str) -> S:
        for candidate in accepted:
            if candidate == value:
                return candidate
        raise _bad(key, value, " | ".join(accepted))

    return parse


_KNOWN = OWN_ANNOTATIONS | {
    CONTAINERS,
    KILL_SIGNAL,
    ESCALATE_AFTER,
    SIDECAR_CPU,
    SIDECAR_MEMORY,
    STACK_DUMPS,
    NATIVE_SIDECAR,
    EVENTS,
    FLIGHT_RECORDER,
    POD_CONDITION,
    SCOPE_METRICS,
    MODE,
    DEADLINES,
    ADAPTIVE_FACTOR,
    ADAPTIVE_MIN_SAMPLES,
    ADAPTIVE_FLOOR,
    FALSE_KILL_BUDGET,
    DEADLINE_PROFILE,
}
