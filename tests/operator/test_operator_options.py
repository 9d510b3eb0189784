"""Per-pod options parsed straight from annotations: the edges the injection tests do not reach."""

from __future__ import annotations

import pytest

from expiry_operator.options import (
    ADAPTIVE_FACTOR,
    ADAPTIVE_FLOOR,
    ADAPTIVE_MIN_SAMPLES,
    ESCALATE_AFTER,
    EVENTS,
    KILL_SIGNAL,
    SIDECAR_CPU,
    SIDECAR_MEMORY,
    SIGNAL_NAMES,
    OptionError,
    PodOptions,
    parse_options,
)
from expiry_operator.settings import SidecarSettings

DEFAULTS = SidecarSettings()


def parse(annotations: dict[str, str], defaults: SidecarSettings = DEFAULTS) -> PodOptions:
    return parse_options(annotations, defaults)


@pytest.mark.parametrize("default", [True, False])
def test_the_events_annotation_overrides_the_setting_and_its_absence_keeps_it(default: bool) -> None:
    defaults = SidecarSettings(events=default)
    assert parse({}, defaults).events is default
    assert parse({EVENTS: "true"}, defaults).events is True
    assert parse({EVENTS: "false"}, defaults).events is False


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("0.5", 0.5), ("30", 30.0)])
def test_escalate_after_accepts_zero_and_fractions(text: str, seconds: float) -> None:
    assert parse({ESCALATE_AFTER: text}).escalate_after == seconds


@pytest.mark.parametrize("text", ["-0.5", "-1", "soon", "", "nan", "inf"])
def test_escalate_after_refuses_negative_and_non_numbers(text: str) -> None:
    with pytest.raises(OptionError, match="non-negative number of seconds"):
        parse({ESCALATE_AFTER: text})


@pytest.mark.parametrize("key", [ADAPTIVE_FACTOR, ADAPTIVE_FLOOR])
@pytest.mark.parametrize("text", ["fast", "", "0", "-2", "nan"])
def test_positive_options_refuse_non_numbers_as_an_option_error(key: str, text: str) -> None:
    with pytest.raises(OptionError, match=f"{key}: .* a finite number > 0"):
        parse({key: text})


@pytest.mark.parametrize(
    ("text", "name"),
    [("SIGTERM", "SIGTERM"), ("term", "SIGTERM"), (" sigusr1 ", "SIGUSR1"), ("Kill", "SIGKILL")],
)
def test_signal_names_are_normalised(text: str, name: str) -> None:
    assert parse({KILL_SIGNAL: text}).kill_signal == name


@pytest.mark.parametrize("text", ["", "SIG", "SIGSIGTERM", "TERMINATE", "9"])
def test_unknown_signals_are_refused_naming_the_accepted_ones(text: str) -> None:
    with pytest.raises(OptionError, match="SIGKILL, SIGPIPE"):
        parse({KILL_SIGNAL: text})


def test_every_signal_of_this_machine_is_accepted_by_its_name() -> None:
    assert {"SIGTERM", "SIGKILL", "SIGINT", "SIGUSR1", "SIGRTMIN"} <= set(SIGNAL_NAMES)
    assert all(name.startswith("SIG") and "_" not in name for name in SIGNAL_NAMES)


@pytest.mark.parametrize("key", ["expiry.io/z-typo", "expiry.io/kill-sigal"])
def test_an_unknown_annotation_is_named_first_in_sorted_order(key: str) -> None:
    with pytest.raises(OptionError, match=r"^unknown annotation expiry\.io/a-typo: accepted") as error:
        parse({key: "1", "expiry.io/a-typo": "1"})
    assert key not in str(error.value).split(":")[0]


@pytest.mark.parametrize(("text", "samples"), [("1", 1), ("2", 2), (" 20 ", 20)])
def test_adaptive_min_samples_accepts_any_whole_number_from_one(text: str, samples: int) -> None:
    assert parse({ADAPTIVE_MIN_SAMPLES: text}).adaptive_min_samples == samples


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "many"])
def test_adaptive_min_samples_refuses_zero_and_what_is_not_whole(text: str) -> None:
    with pytest.raises(OptionError, match="whole number >= 1"):
        parse({ADAPTIVE_MIN_SAMPLES: text})


@pytest.mark.parametrize("key", [ADAPTIVE_FACTOR, ADAPTIVE_FLOOR])
def test_positive_options_accept_fractions_below_one(key: str) -> None:
    options = parse({key: "0.25"})
    assert (options.adaptive_factor if key == ADAPTIVE_FACTOR else options.adaptive_floor) == 0.25


def test_sidecar_quantities_are_passed_on_without_surrounding_spaces() -> None:
    options = parse({SIDECAR_CPU: " 50m ", SIDECAR_MEMORY: "256Mi\n"})
    assert (options.sidecar_cpu, options.sidecar_memory) == ("50m", "256Mi")
