"""The wire format: PyTorch's ``FileTimerRequest``, version 1.

A request is one JSON object on one line::

    {"version": 1, "pid": 4242, "scope_id": "train.py#57", "expiration_time": 1767225600.5, "signal": 9}

- ``pid`` is the worker to kill; it must be positive (``kill(-1, SIGKILL)`` would reach every process).
- ``expiration_time`` is wall-clock epoch seconds; a negative value releases the scope.
- ``signal <= 0`` expires the timer without signalling anyone.
- Extra keys are allowed and ignored by torch. expiry's client adds ``starttime``: the writer's start
  time in clock ticks since boot (field 22 of ``/proc/PID/stat``), so the server can tell the writer
  from a later process that reuses its pid; and, when it has registered a stack-dump handler (see
  :mod:`expiry.dumps`), ``dump_signal``: the signal that makes it write its Python stacks.
- A line goes out in one ``write()`` of at most ``PIPE_BUF`` bytes, which POSIX makes atomic: lines
  from concurrent writers never interleave.
"""

from __future__ import annotations

import json
import math
import signal as _signal
from collections.abc import Callable
from typing import Any, Final, NamedTuple

VERSION: Final = 1
PIPE_BUF: Final = 4096
PID_MAX: Final = 4_194_304
"""The kernel's PID_MAX_LIMIT on 64-bit machines: no pid is larger."""


class MalformedRequest(ValueError):
    """A line that is not a valid version-1 request."""


class Request(NamedTuple):
    """One request. A NamedTuple, not a dataclass: the sidecar builds one per line, and a tuple is
    built at a fraction of a frozen dataclass's cost."""

    pid: int
    scope_id: str
    expiration_time: float
    signal: int
    starttime: int | None = None
    dump_signal: int | None = None

    @property
    def is_release(self) -> bool:
        return self.expiration_time < 0


def encode(request: Request) -> bytes:
    """One newline-terminated line, ready for a single ``write()``.

    The bytes are exactly ``json.dumps(fields, separators=(",", ":"))``'s; plain values (every
    request the client makes) are formatted directly, at a quarter of json.dumps' cost per call.
    """
    line = _format(request) if _plain(request) else _dumps(request)
    if len(line) > PIPE_BUF:
        raise ValueError(
            f"request is {len(line)} bytes, over PIPE_BUF ({PIPE_BUF}) past which one write() is not"
            f" atomic: shorten the scope id ({len(request.scope_id)} characters)"
        )
    return line


def _plain(request: Request) -> bool:
    """Only ints, a finite float and a str: values json.dumps writes as repr() does."""
    expiration_time = request.expiration_time
    return (
        type(request.pid) is int
        and type(request.scope_id) is str
        and type(expiration_time) in _NUMBERS
        and -_INF < expiration_time < _INF
        and type(request.signal) is int
        and type(request.starttime) in _OPTIONAL_INT
        and type(request.dump_signal) in _OPTIONAL_INT
    )


def _format(request: Request) -> bytes:
    starttime = "" if request.starttime is None else f',"starttime":{request.starttime}'
    dump_signal = "" if request.dump_signal is None else f',"dump_signal":{request.dump_signal}'
    return (
        f'{{"version":{VERSION},"pid":{request.pid},"scope_id":{_quote(request.scope_id)},'
        f'"expiration_time":{request.expiration_time!r},"signal":{request.signal}{starttime}{dump_signal}}}\n'
    ).encode()


def _dumps(request: Request) -> bytes:
    fields: dict[str, Any] = {
        "version": VERSION,
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


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_OPTIONAL_INT = (int, type(None))


def decode(line: bytes | str) -> Request:
    """Parse one line (without its newline); raise MalformedRequest saying what is wrong.

    This runs once per request in the sidecar, so a well-formed line takes a fast path: one call of
    json's C scanner and plain type checks. Anything it does not accept goes to :func:`_decode_strictly`,
    which decides (json.loads' rules: whitespace, a UTF-8 BOM...) and says what is wrong.
    """
    try:
        text = line if isinstance(line, str) else line.decode()
        obj, end = _scan(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return _decode_strictly(line)
    if end != len(text) or type(obj) is not dict:
        return _decode_strictly(line)
    get: Callable[[str], Any] = obj.get
    version, pid, scope_id = get("version"), get("pid"), get("scope_id")
    expiration_time, sig, starttime, dump_signal = (
        get("expiration_time"),
        get("signal"),
        get("starttime"),
        get("dump_signal"),
    )
    if (
        type(version) is int  # JSON's integers: bool is a subclass of int, not int itself
        and version == VERSION
        and type(pid) is int
        and 0 < pid <= PID_MAX
        and type(scope_id) is str
        and type(expiration_time) in _NUMBERS
        and -_INF < expiration_time < _INF  # finite (NaN fails both)
        and type(sig) is int
        and sig < _signal.NSIG
        and (starttime is None or (type(starttime) is int and starttime >= 0))
        and (dump_signal is None or (type(dump_signal) is int and 0 < dump_signal < _signal.NSIG))
    ):
        try:  # not contextlib.suppress: this runs once per request, and try costs nothing
            return Request(pid, scope_id, float(expiration_time), sig, starttime, dump_signal)
        except OverflowError:  # an integer no float holds: the strict path says so
            pass
    return _decode_strictly(line)


_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_NUMBERS = (float, int)
_INF = math.inf


def _decode_strictly(line: bytes | str) -> Request:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"not JSON: {exc}") from None
    except RecursionError:
        raise MalformedRequest("not a request: nested too deeply") from None
    if not isinstance(obj, dict):
        raise MalformedRequest(f"not a JSON object but {type(obj).__name__}")
    version = obj.get("version")
    if _integer(version) != VERSION:
        raise MalformedRequest(f"version must be {VERSION}, not {version!r}")
    pid = _integer(obj.get("pid"))
    if pid is None or not 0 < pid <= PID_MAX:
        raise MalformedRequest(f"pid must be an integer in 1..{PID_MAX}, not {obj.get('pid')!r}")
    scope_id = obj.get("scope_id")
    if not isinstance(scope_id, str):
        raise MalformedRequest(f"scope_id must be a string, not {scope_id!r}")
    expiration_time = _finite(obj.get("expiration_time"))
    if expiration_time is None:
        shown = str(obj.get("expiration_time"))[:40]
        raise MalformedRequest(f"expiration_time must be a finite number, not {shown}")
    sig = _integer(obj.get("signal"))
    if sig is None or sig >= _signal.NSIG:
        raise MalformedRequest(f"signal must be an integer below {_signal.NSIG}, not {obj.get('signal')!r}")
    starttime = obj.get("starttime")
    if starttime is not None and (_integer(starttime) is None or starttime < 0):
        raise MalformedRequest(f"starttime must be a non-negative integer, not {starttime!r}")
    dump_signal = obj.get("dump_signal")
    if dump_signal is not None and not 0 < (_integer(dump_signal) or 0) < _signal.NSIG:
        raise MalformedRequest(
            f"dump_signal must be a signal number in 1..{_signal.NSIG - 1}, not {dump_signal!r}"
        )
    return Request(pid, scope_id, expiration_time, sig, starttime, dump_signal)


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite JSON number (an integer too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _integer(value: object) -> int | None:
    """``value`` if it is a JSON integer (``true`` is not one, though Python says ``True == 1``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
