"""The wire format's two fast paths, held to the slow paths they stand in for.

``encode`` formats plain requests itself and leaves anything else to ``json.dumps``; ``decode`` takes
a well-formed line through one scan and leaves anything else to ``json.loads`` and strict checks.
Each fast path must give exactly what the slow one gives: the same bytes, the same verdict.
"""

from __future__ import annotations

import json
import math
import select
import signal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from expiry.wire import PID_MAX, PIPE_BUF, MalformedRequest, Request, decode, encode

INTEGERS = st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.sampled_from(list(signal.Signals)))
NUMBERS = st.one_of(INTEGERS, st.floats(allow_nan=True, allow_infinity=True))
OPTIONAL = st.one_of(st.none(), INTEGERS)


def reference(request: Request) -> bytes:
    fields: dict[str, Any] = {
        "version": 1,
        "pid": request.pid,
        "scope_id": request.scope_id,
        "expiration_time": request.expiration_time,
        "signal": request.signal,
    }
    if request.starttime is not None:
        fields["starttime"] = request.starttime
    if request.dump_signal is not None:
        fields["dump_signal"] = request.dump_signal
    return (json.dumps(fields, separators=(",", ":")) + "\n").encode()


REQUESTS = st.builds(Request, INTEGERS, st.text(max_size=40), NUMBERS, INTEGERS, OPTIONAL, OPTIONAL)


@given(REQUESTS)
@example(Request(7, "s", math.inf, 9))
@example(Request(7, "s", float("1e400"), 9))  # an infinity that is not the math.inf object
@example(Request(7, "s", -float("1e400"), 9))
@example(Request(True, "s", 1.5, 9))
@example(Request(7, "s", 1.5, True))
@example(Request(7, "s", 1.5, 9, starttime=True))
@example(Request(7, "s", 1.5, 9, dump_signal=False))
@example(Request(7, 'quote " and \u00e9', 1.5, 9, 3, 10))
def test_encode_writes_exactly_what_json_dumps_writes(request: Request) -> None:
    assert encode(request) == reference(request)


VALID = {"version": 1, "pid": 7, "scope_id": "s", "expiration_time": 1.5, "signal": 9}


@pytest.mark.parametrize("layout", ["compact", "spaced", "leading space", "trailing space"])
@pytest.mark.parametrize("dump_signal", [1, signal.SIGUSR1, signal.NSIG - 1])
def test_a_valid_dump_signal_is_kept_on_every_path(layout: str, dump_signal: int) -> None:
    """A leading space sends the line down the strict path; the compact one takes the fast path."""
    separators = (",", ":") if layout == "compact" else (", ", ": ")
    line = json.dumps({**VALID, "dump_signal": dump_signal}, separators=separators)
    line = {"leading space": " " + line, "trailing space": line + " "}.get(layout, line)
    assert decode(line) == Request(7, "s", 1.5, 9, None, dump_signal)


@pytest.mark.parametrize("layout", ["compact", "leading space"])
@pytest.mark.parametrize("dump_signal", [0, -1, signal.NSIG, 1000, True, 10.0, "10"])
def test_an_invalid_dump_signal_is_refused_on_every_path_and_the_range_named(
    layout: str, dump_signal: object
) -> None:
    line = json.dumps({**VALID, "dump_signal": dump_signal}, separators=(",", ":"))
    with pytest.raises(
        MalformedRequest, match=rf"dump_signal must be a signal number in 1\.\.{signal.NSIG - 1},"
    ):
        decode(" " + line if layout == "leading space" else line)


@pytest.mark.parametrize("layout", ["compact", "leading space"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 0),
        ("version", 2),
        ("pid", 0),
        ("pid", PID_MAX + 1),
        ("scope_id", None),
        ("expiration_time", True),
        ("expiration_time", -math.inf),
        ("signal", signal.NSIG),
        ("starttime", -1),
    ],
)
def test_a_field_out_of_range_is_refused_on_every_path(layout: str, field: str, value: object) -> None:
    line = json.dumps({**VALID, field: value}, separators=(",", ":"))
    with pytest.raises(MalformedRequest, match=field):
        decode(" " + line if layout == "leading space" else line)


@pytest.mark.parametrize("tail", [" x", "{}", ",", "]", "\x00"])
def test_bytes_after_the_request_make_the_line_malformed(tail: str) -> None:
    with pytest.raises(MalformedRequest, match="not JSON"):
        decode(json.dumps(VALID, separators=(",", ":")) + tail)


@pytest.mark.parametrize("layout", ["compact", "leading space"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pid", 1),
        ("pid", PID_MAX),
        ("signal", signal.NSIG - 1),
        ("signal", 0),
        ("signal", -9),
        ("starttime", 0),
        ("starttime", 123_456),
    ],
)
def test_a_field_at_its_bound_is_accepted_on_every_path(layout: str, field: str, value: int) -> None:
    line = json.dumps({**VALID, field: value}, separators=(",", ":"))
    request = decode(" " + line if layout == "leading space" else line)
    assert getattr(request, field) == value


def test_a_line_of_exactly_pipe_buf_bytes_is_written_and_one_more_is_refused() -> None:
    overhead = len(encode(Request(7, "", 1.5, 9)))
    assert len(encode(Request(7, "x" * (PIPE_BUF - overhead), 1.5, 9))) == PIPE_BUF
    with pytest.raises(ValueError, match="PIPE_BUF"):
        encode(Request(7, "x" * (PIPE_BUF - overhead + 1), 1.5, 9))


def test_only_a_negative_expiration_time_is_a_release() -> None:
    assert Request(7, "s", -1.0, 9).is_release
    assert not Request(7, "s", 0.0, 9).is_release


def test_json_nested_too_deeply_for_the_parser_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedRequest, match="nested too deeply"):
        decode("[" * 100_000 + "]" * 100_000)


def test_pipe_buf_is_the_kernel_s_atomic_write_limit() -> None:
    assert PIPE_BUF == select.PIPE_BUF


def test_pid_max_is_the_kernel_s_limit_and_no_pid_here_exceeds_it() -> None:
    assert PID_MAX == 2**22  # PID_MAX_LIMIT on 64-bit machines (include/linux/threads.h)
    with open("/proc/sys/kernel/pid_max") as pid_max:
        assert int(pid_max.read()) <= PID_MAX
