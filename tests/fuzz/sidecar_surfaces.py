"""The sidecar's input surfaces: its flags, its state file, ``advise`` (a state file or ``/blocks``),
and the FIFO."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from expiry import wire
from expiry.wire import MalformedRequest
from expiry_sidecar import advice
from expiry_sidecar import cli as sidecar_cli
from expiry_sidecar.blocks import BlockStats
from expiry_sidecar.deadlines import REQUESTED, Deadlines, Policy
from expiry_sidecar.state import StateFile, blocks_line, boot_id
from expiry_sidecar.timers import TimerBook
from tests.fuzz.harness import (
    Check,
    Notes,
    Refusal,
    Run,
    Surface,
    Violation,
    cli_outcome,
    deep_recursion,
    stateless,
)
from tests.fuzz.mutations import DEEP, NASTY_STRINGS, mutated, nested
from tests.sidecar.test_core import World, line

# -- flags ------------------------------------------------------------------------------------------


def _flag_table() -> dict[str, list[tuple[str, bool]]]:
    """Every option of every command, from the real parser: (flag, takes a value)."""
    group = sidecar_cli.parser()._subparsers
    assert group is not None
    commands: dict[str, argparse.ArgumentParser] = group._group_actions[0].choices  # type: ignore[assignment]
    return {
        name: [
            (action.option_strings[-1], action.nargs != 0)
            for action in command._actions
            if action.option_strings and action.dest != "help"
        ]
        for name, command in commands.items()
    }


FLAGS = _flag_table()
FLAG_VALUES = st.one_of(
    st.sampled_from(["1", "0", "-1", "2.5", "1e308", "1e309", "nan", "inf", "9" * 30, "SIGTERM", "TERM"]),
    st.sampled_from(["65536", "0x10", "enforce", "observe", "adaptive", "json", "debug", "/tmp/x", ""]),
    NASTY_STRINGS,
    st.text(max_size=8),
)


@st.composite
def _argv(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(FLAGS)))
    argv = [command]
    for flag, takes_value in draw(st.lists(st.sampled_from(FLAGS[command]), max_size=4)):
        argv += [flag, draw(FLAG_VALUES)] if takes_value else [flag]
    if command == "run":
        argv += ["--", "true"]
    return argv


def _would_start(argv: Sequence[str]) -> int:
    """What the real CLI does with ``argv`` before it starts serving or reading: parse, build."""
    args = sidecar_cli.parser().parse_args(argv)
    if args.command == "advise":
        base = Policy()
        Policy(
            REQUESTED,
            args.adaptive_factor or base.factor,
            args.adaptive_min_samples or base.min_samples,
            args.adaptive_floor or base.floor,
        )
    else:
        sidecar_cli.options_from(args).policy()
    return 0


def _check_flags(argv: list[str]) -> str:
    def named(line: str) -> str:
        if "error:" not in line or not (
            any(word in line for word in argv if word.startswith("--")) or "required" in line
        ):
            raise Violation(f"the refusal of {argv} names no flag: {line!r}")
        return "refused: exit 2, one line naming the flag"

    return cli_outcome(_would_start, argv, lambda _: "accepted", [Refusal("expiry-sidecar ", named)])


FLAGS_SURFACE = Surface(
    "sidecar-flags",
    "`expiry-sidecar serve|run|advise` flags (every option of the real parser, hostile values), "
    "parsed and built into the options the daemon starts from",
    _argv(),
    stateless(_check_flags),
)


# -- the state file ---------------------------------------------------------------------------------

PIDS = st.integers(min_value=1, max_value=50)
SCOPES = st.sampled_from(["train.py#10", "train.py#20", "eval.py#5", "ü#1"])
OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("arm"), PIDS, st.integers(1, 10**6), SCOPES, st.floats(0, 1e6), st.sampled_from([9, 15])
        ),
        st.tuples(st.just("release"), PIDS, SCOPES),
        st.tuples(st.just("forget"), PIDS),
    ),
    max_size=12,
)


def _blocks() -> str:
    stats = BlockStats()
    for index, seconds in enumerate([1.0, 2.5, 0.3, 40.0]):
        stats.record(f"train.py#{index % 2}", seconds, 60.0)
    return blocks_line(stats.export())


def _journal(ops: list[tuple[Any, ...]], with_blocks: bool) -> list[str]:
    header = json.dumps({"expiry_state": 1, "boot_id": boot_id()})
    body = [json.dumps([*op, 0.0, 60.0] if op[0] == "arm" else list(op)) for op in ops]
    return [header, *body, *([_blocks()] if with_blocks else [])]


def _replay(ops: list[tuple[Any, ...]]) -> set[tuple[int, str]]:
    armed: set[tuple[int, str]] = set()
    for op in ops:
        if op[0] == "arm":
            armed.add((op[1], op[3]))
        elif op[0] == "release":
            armed.discard((op[1], op[2]))
        else:
            armed = {key for key in armed if key[0] != op[1]}
    return armed


with deep_recursion():
    _DEEP_ENTRY = json.dumps(nested(DEEP))
HOSTILE_ENTRIES = [
    '["arm", 5, 1, "s", 1e308, 9]',
    '["arm", 5, 1, "s", NaN, 9]',
    '["arm", 5, 1, "s", Infinity, 9]',
    f'["arm", {10**400}, 1, "s", 1.0, 9]',
    f'["arm", 5, 1, "s", {10**400}, 9]',
    '["arm", -1, 1, "s", 1.0, 9]',
    '["arm", 5, 1, "s", 1.0, 100000]',
    f'["arm", 5, 1, "s", 1.0, 9, {10**400}, null]',
    f'["blocks", 1, {{"s": [1, {10**400}, 1, 1, {{"3": 1}}]}}]',
    '["blocks", 1, {"s": [1, 1e308, 1e308, 1e308, {"3": 1}]}]',
    '["blocks", 1, {"s": [1, 1, 1, 1, {"99999999999999999999": 1}]}]',
    '["blocks", 1, {"s": [1, 1, 1, 1, {"1e3": 1}]}]',
    '["blocks", 2, {}]',
    "x" * 100_000,
    _DEEP_ENTRY,
]
"""Journal entries of hostile sizes: integers no float holds, NaN, infinity, deep nests."""


@st.composite
def _state_files(draw: st.DrawFn) -> tuple[str, bytes, set[tuple[int, str]] | None]:
    """(how it was made, the file's bytes, the timers that must survive, or None: no promise)."""
    ops, with_blocks = draw(OPS), draw(st.booleans())
    lines = _journal(ops, with_blocks)
    data = ("\n".join(lines) + "\n").encode()
    how = draw(st.sampled_from(["intact", "truncated", "mutated", "mutated", "foreign", "hostile"]))
    if how == "intact":
        return how, data, _replay(ops)
    if how == "truncated":  # a kill mid-write: what came before the torn line stands
        cut = draw(st.integers(0, len(data)))
        complete = data[:cut].count(b"\n") - 1  # entries (after the header) whole before the cut
        return how, data[:cut], _replay(ops[: max(complete, 0)])
    if how == "mutated":
        index = draw(st.integers(0, len(lines) - 1))
        entry = draw(mutated(st.just(json.loads(lines[index]))))
        with deep_recursion():
            lines[index] = json.dumps(entry)
        return how, ("\n".join(lines) + "\n").encode(), None
    if how == "foreign":
        return (
            how,
            draw(st.binary(max_size=300) | st.sampled_from([b"{}\n", b"[]\n", b"\xff\xfe\n", b"null\n"])),
            None,
        )
    hostile = draw(st.sampled_from(HOSTILE_ENTRIES))
    return how, ("\n".join([*lines, hostile]) + "\n").encode(), None


def _check_state(workdir: Path, value: tuple[str, bytes, set[tuple[int, str]] | None]) -> str:
    how, data, must_keep = value
    for old in workdir.glob("state*"):
        old.unlink()
    path = workdir / "state.json"
    path.write_bytes(data)
    state = StateFile(path)
    try:
        saved = state.load()
        stats = BlockStats()
        state.load_blocks(stats)
        book = TimerBook()
        for timer in saved:
            book.arm(timer.pid, timer.scope_id, timer.deadline, timer.signal)
        deadline = book.next_deadline()
    except Exception as e:
        raise Violation(f"Traceback loading a {how} state file: {e!r}") from None
    if deadline is not None and not math.isfinite(deadline):
        raise Violation(f"a {how} state file armed a timer for {deadline}")
    kept = {(timer.pid, timer.scope_id) for timer in saved}
    set_aside = sorted(p.name for p in workdir.glob("state.json.*corrupt-*"))
    if must_keep is not None and (kept != must_keep or state.errors):
        raise Violation(
            f"a {how} state file lost timers: kept {kept}, expected {must_keep}, errors {state.errors}"
        )
    if state.errors != len(set_aside):
        raise Violation(f"{state.errors} errors counted, {set_aside} set aside")
    path.write_bytes(data)
    cli_outcome(
        sidecar_cli.main,
        ["advise", "--state-file", str(path)],
        lambda _: "advice printed",
        [Refusal(f"expiry-sidecar advise: cannot read {path}: ", lambda _: "refused (exit 2)")],
    )
    if not state.errors:
        return f"{how}: loaded, timers kept" if saved else f"{how}: loaded"
    return f"{how}: set aside and counted" + (", timers kept" if saved else "")


@contextlib.contextmanager
def _state_session(workdir: Path, _notes: Notes) -> Iterator[Check]:
    yield lambda value: _check_state(workdir, value)


STATE_SURFACE = Surface(
    "state-file",
    "the sidecar's --state-file (and `advise --state-file`): real journals intact, truncated anywhere, "
    "one entry mutated, foreign bytes, hostile sizes (10**400, NaN, 1e308, 100 kB lines, 2000-deep nests)",
    _state_files(),
    _state_session,
)


# -- advise --url: a /blocks document from the network ------------------------------------------------


def _document() -> dict[str, Any]:
    stats = BlockStats()
    for index in range(30):
        stats.record(f"train.py#{index % 3}", 1.0 + index, 60.0)
    return advice.document(Deadlines(Policy(), stats))


BLOCKS_INPUTS = st.one_of(
    st.just(_document()),
    mutated(st.just(_document())),
    st.binary(max_size=200),
    st.sampled_from([b"\xff\xfe", b"[" * 5000, b"{" * 100 + b"}" * 100, b"null", b"[]", b'{"scopes": 5}']),
)


class _Blocks(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: Any) -> None:
        pass


def _check_blocks(url: str, value: Any) -> str:
    with deep_recursion():
        _Blocks.body = value if isinstance(value, bytes) else json.dumps(value).encode()
    return cli_outcome(
        sidecar_cli.main,
        ["advise", "--url", url],
        _printed,
        [Refusal(f"expiry-sidecar advise: {url}/blocks is not a sidecar's /blocks: ", lambda _: REFUSED)],
    )


REFUSED = "refused: exit 2, one line naming the field"


def _printed(run: Run) -> str:
    if not run.out:
        raise Violation("advise exited 0 and printed nothing")
    return "advice printed"


@contextlib.contextmanager
def _blocks_session(_: Path, _notes: Notes) -> Iterator[Check]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Blocks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield lambda value: _check_blocks(f"http://127.0.0.1:{server.server_address[1]}", value)
    finally:
        server.shutdown()


BLOCKS_SURFACE = Surface(
    "advise-blocks",
    "`expiry-sidecar advise --url` against a real HTTP server: a sidecar's /blocks document, mutated; "
    "raw, non-UTF-8 and deep bodies",
    BLOCKS_INPUTS,
    _blocks_session,
)


# -- the FIFO (bytes cut anywhere) ------------------------------------------------------------------

VALID = st.tuples(
    st.sampled_from([10, 11, 12]), st.text(max_size=20), st.floats(0.001, 100), st.sampled_from([9, 15])
)
REQUEST = {"version": 1, "pid": 10, "scope_id": "train.py#1", "expiration_time": 1.5e9, "signal": 9}


def _one_line(value: Any) -> bytes:
    with deep_recursion():
        text = json.dumps(value)
    return text.replace("\n", " ").encode() + b"\n"


def _malformed(data: bytes) -> bool:
    """Whether the wire format refuses ``data`` (a mutation may leave a request valid: not garbage)."""
    try:
        wire.decode(data)
    except MalformedRequest:
        return True
    except Exception:  # the decoder broke: feed the line anyway, the server's check will say so
        return True
    return False


GARBAGE = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ") + b"\n"),
    mutated(st.just(REQUEST)).map(_one_line),
).filter(_malformed)
FIFO_INPUTS = st.tuples(
    st.lists(st.one_of(VALID, GARBAGE), max_size=30),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)


def _check_fifo(value: tuple[list[Any], list[int]]) -> str:
    """Any bytes cut anywhere: nothing crashes, every valid request is honoured, each worker killed once."""
    stream, cuts = value
    world = World()
    world.alive = {10: 1, 11: 2, 12: 3}
    server = world.server(escalate_after=0)
    data = b"".join(
        item if isinstance(item, bytes) else line(item[0], item[1], world.wall(item[2]), item[3])
        for item in stream
    )
    valid = [item for item in stream if not isinstance(item, bytes)]
    try:
        previous = 0
        for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
            server.receive(data[previous:cut])
            previous = cut
        armed = {(pid, scope) for pid, scope, _, _ in valid}
        kept = {(t.pid, t.scope_id) for t in server.book}
        world.now += 101
        server.expire_due()
    except Exception as e:
        raise Violation(f"Traceback from the FIFO's reader: {e!r}") from None
    if kept != armed or server.stats.acquires != len(valid):
        raise Violation(f"armed {kept}, expected {armed}; {server.stats.acquires} acquires of {len(valid)}")
    if {pid for pid, _ in world.signals} != {pid for pid, _ in armed}:
        raise Violation(f"signals {world.signals} for {armed}")
    if len(world.signals) != len({pid for pid, _ in armed}):
        raise Violation("a worker was killed twice")
    garbage = len(stream) - len(valid)
    return "valid and malformed lines" if valid and garbage else "malformed only" if garbage else "valid only"


FIFO_SURFACE = Surface(
    "fifo",
    "the FIFO's byte stream (the server's receive path): valid requests, random bytes and mutated "
    "requests, cut anywhere",
    FIFO_INPUTS,
    stateless(_check_fifo),
)

SURFACES = (FLAGS_SURFACE, STATE_SURFACE, BLOCKS_SURFACE, FIFO_SURFACE)
