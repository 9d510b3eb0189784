"""The wire format: torch's FileTimerRequest v1, decoded strictly."""

from __future__ import annotations

import json
import math

import pytest

from expiry.wire import PIPE_BUF, MalformedRequest, Request, decode, encode


def test_a_request_survives_encoding_and_decoding() -> None:
    request = Request(4242, "train.py#57", 1767225600.25, 9, starttime=123456)
    line = encode(request)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line.rstrip(b"\n")) == request


def test_a_release_is_a_negative_expiration_time() -> None:
    assert decode(encode(Request(1, "s", -1, 0))).is_release
    assert not decode(encode(Request(1, "s", 0.5, 0))).is_release


def test_torch_requests_decode_and_torch_reads_ours() -> None:
    torch_timer = pytest.importorskip("torch.distributed.elastic.timer.file_based_local_timer")
    theirs = torch_timer.FileTimerRequest(
        worker_pid=77, scope_id="contextlib.py#137", expiration_time=12.5, signal=9
    )
    assert decode(theirs.to_json()) == Request(77, "contextlib.py#137", 12.5, 9)
    ours = json.loads(encode(Request(77, "a#1", 12.5, 15, starttime=5)))
    rebuilt = torch_timer.FileTimerRequest(
        ours["pid"], ours["scope_id"], ours["expiration_time"], ours["signal"]
    )
    assert rebuilt == torch_timer.FileTimerRequest(77, "a#1", 12.5, 15)


def test_a_request_longer_than_pipe_buf_is_refused_before_it_is_written() -> None:
    with pytest.raises(ValueError, match="PIPE_BUF"):
        encode(Request(1, "x" * PIPE_BUF, 1.0, 9))


VALID = {"version": 1, "pid": 10, "scope_id": "s", "expiration_time": 1.5, "signal": 9}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"pid": 0}, "pid"),
        ({"pid": -1}, "pid"),
        ({"pid": True}, "pid"),
        ({"pid": "10"}, "pid"),
        ({"pid": 2**40}, "pid"),
        ({"scope_id": 5}, "scope_id"),
        ({"expiration_time": "soon"}, "expiration_time"),
        ({"expiration_time": math.inf}, "expiration_time"),
        ({"expiration_time": math.nan}, "expiration_time"),
        ({"expiration_time": False}, "expiration_time"),
        ({"signal": 1000}, "signal"),
        ({"signal": 9.0}, "signal"),
        ({"starttime": -3}, "starttime"),
        ({"starttime": "x"}, "starttime"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, object], complaint: str) -> None:
    with pytest.raises(MalformedRequest, match=complaint):
        decode(json.dumps({**VALID, **change}))


@pytest.mark.parametrize("line", [b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"version": 1}'])
def test_lines_that_are_not_requests_are_malformed(line: bytes) -> None:
    with pytest.raises(MalformedRequest):
        decode(line)


def test_extra_keys_are_ignored_and_non_positive_signals_allowed() -> None:
    request = decode(json.dumps({**VALID, "signal": -1, "note": "from a newer client"}))
    assert request.signal == -1


def test_an_expiration_time_no_float_holds_is_malformed_not_a_crash() -> None:
    # json reads the integer exactly; float() of it overflows. One such line crashed the sidecar's loop.
    line = '{"version": 1, "pid": 10, "scope_id": "s", "expiration_time": 1' + "0" * 400 + ', "signal": 9}'
    with pytest.raises(MalformedRequest, match="expiration_time must be a finite number"):
        decode(line)
