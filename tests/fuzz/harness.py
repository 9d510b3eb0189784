"""One harness for every input surface: its inputs (a hypothesis strategy) and its contract (a check).

A surface's ``session`` sets up what the check needs (a real operator over TLS, an HTTP server, a
scratch directory) and yields ``check(input) -> outcome``: a short label for the tally ("denied:
annotation value", "400", ...), or a ``Violation`` when the contract broke (a traceback, a 5xx,
a dead process, an output the schema refuses). The suite runs each surface at CI size
(tests/fuzz/test_fuzz.py), ``scripts/fuzz`` at any size, and both tally the same outcomes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

settings.register_profile(
    "fuzz-ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking a webhook input can take minutes
    print_blob=True,
)
CI = settings.get_profile("fuzz-ci")
"""The suite's size: a few dozen inputs per surface (tests/fuzz/test_fuzz.py scales it per surface)."""

Check = Callable[[Any], str]
Notes = dict[str, str]
"""What a session measured besides the outcomes (the operator's RSS, ...), for the report."""


class Violation(AssertionError):
    """The surface broke its contract on an input."""


def stateless(check: Check) -> Callable[[Path, Notes], contextlib.AbstractContextManager[Check]]:
    """The session of a surface whose check needs nothing set up."""

    @contextlib.contextmanager
    def session(_: Path, _notes: Notes) -> Iterator[Check]:
        yield check

    return session


@dataclasses.dataclass(frozen=True)
class Surface:
    name: str
    what: str  # one line for the report: the inputs it is fed
    inputs: st.SearchStrategy[Any]
    session: Callable[[Path, Notes], contextlib.AbstractContextManager[Check]]


@dataclasses.dataclass
class Tally:
    """Outcomes by label; violations with the first few inputs that caused them."""

    outcomes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    violations: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    tracebacks: int = 0
    errors_5xx: int = 0

    @property
    def inputs(self) -> int:
        return sum(self.outcomes.values())

    def record(self, check: Check, value: Any) -> None:
        """Count what ``check`` made of ``value``; a violation is counted with the input behind it, so a
        bulk run goes on to the end (no shrinking: the input is reported as it was)."""
        try:
            self.outcomes[check(value)] += 1
        except Violation as e:
            self._violation(str(e), value)
        except Exception:  # the check itself failed on what the surface answered: a violation too
            self._violation(f"Traceback in the check: {traceback.format_exc()}", value)

    def _violation(self, message: str, value: Any) -> None:
        self.outcomes["VIOLATION"] += 1
        if "Traceback" in message:
            self.tracebacks += 1
        if message.startswith("HTTP 5"):
            self.errors_5xx += 1
        if len(self.violations) < 20:
            self.violations.append((message[:2000], repr(value)[:500]))


@dataclasses.dataclass(frozen=True)
class Run:
    """What a CLI ``main()`` did, run in-process."""

    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run_main(main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> Run:
    """``main(argv)`` with stdout and stderr captured; an exception escaping it is a Violation."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as e:  # argparse
                status = e.code if isinstance(e.code, int) else 1
    except Exception:
        raise Violation(f"Traceback from {list(argv)[:4]}: {traceback.format_exc()}") from None
    return Run(status, out.getvalue(), err.getvalue())


def one_line(run: Run, prefix: str) -> str:
    """The run's only stderr line (which must start with ``prefix``), else a Violation."""
    lines = run.err_lines
    if len(lines) != 1 or not lines[0].startswith(prefix) or "Traceback" in run.err:
        raise Violation(f"exit {run.status} expects one line starting {prefix!r} on stderr, got {run.err!r}")
    return lines[0]


@dataclasses.dataclass(frozen=True)
class Refusal:
    """One way a CLI may refuse an input: exit ``status`` with one stderr line starting ``prefix``;
    ``label`` names the outcome from that line."""

    prefix: str
    label: Callable[[str], str]
    status: int = 2


def cli_outcome(
    main: Callable[[Sequence[str]], int],
    argv: Sequence[str],
    accepted: Callable[[Run], str],
    refusals: Sequence[Refusal],
) -> str:
    """Run ``main(argv)`` in-process and name what it did: exit 0 and a silent stderr is ``accepted(run)``;
    otherwise the first refusal whose status and line prefix match; anything else (a traceback, another
    status, more or fewer lines than one) is a Violation."""
    run = run_main(main, argv)
    if run.status == 0 and not run.err:
        return accepted(run)
    lines = run.err_lines
    if len(lines) == 1 and "Traceback" not in run.err:
        for refusal in refusals:
            if run.status == refusal.status and lines[0].startswith(refusal.prefix):
                return refusal.label(lines[0])
    raise Violation(f"exit {run.status} for {list(argv)[:6]}: stderr {run.err[:1500]!r}")


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    """Room to serialize the deep nests the mutations make (json's C encoder counts recursion too)."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


class _TimeUp(Exception):
    pass


STOP = threading.Event()
"""Set (by ``scripts/fuzz``'s SIGINT/SIGTERM handler) to end a bulk run before its next input: a flag,
not an exception raised wherever the signal lands (inside a gc callback hypothesis registers, an
exception there is printed to the captured stderr and swallowed)."""


def run_many(
    surface: Surface,
    workdir: Path,
    count: int,
    tally: Tally,
    notes: Notes,
    *,
    seconds: float | None = None,
    progress: Callable[[Tally], None] | None = None,
    every: float = 60.0,
) -> None:
    """Feed ``count`` generated inputs to the surface (fewer if ``seconds`` run out first), counting
    outcomes and violations (no stop, no shrinking): the on-demand run of ``scripts/fuzz``.
    ``progress`` is called with the tally every ``every`` seconds."""
    stop = None if seconds is None else time.monotonic() + seconds
    next_report = time.monotonic() + every
    with surface.session(workdir, notes) as check:

        @settings(
            max_examples=count,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(surface.inputs)
        def feed(value: Any) -> None:
            nonlocal next_report
            now = time.monotonic()
            if (stop is not None and now > stop) or STOP.is_set():
                raise _TimeUp
            if progress is not None and now > next_report:
                next_report = now + every
                progress(tally)
            tally.record(check, value)

        with contextlib.suppress(_TimeUp):
            feed()
        if stop is not None and time.monotonic() > stop:
            notes["stopped"] = f"after {seconds:g} s, before {count:,} inputs"
