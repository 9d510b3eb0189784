"""expiry-sidecar: kills training workers whose timers expire.

`serve` in a pod; `run -- CMD` on a machine without Kubernetes; `advise` reads what a sidecar
learned about its blocks and suggests deadlines.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from expiry.names import FIFO_PATH, METRICS_PORT
from expiry_sidecar import __version__, advice, alone, logs
from expiry_sidecar.budget import DEFAULT_KILLS, WINDOW
from expiry_sidecar.daemon import Options, Sidecar
from expiry_sidecar.deadlines import POLICIES, REQUESTED, Deadlines, Policy
from expiry_sidecar.local import run_command
from expiry_sidecar.mode import Mode
from expiry_sidecar.profile import Owner
from expiry_sidecar.state import read_blocks


def signal_number(text: str) -> int:
    """``SIGTERM``, ``TERM`` or ``15``."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if 0 < number < signal.NSIG:
            return number
    else:
        with contextlib.suppress(KeyError):
            return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    raise argparse.ArgumentTypeError(f"not a signal: {text!r} (use a name such as SIGTERM or SIGKILL)")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds >= 0: {text!r}")
    return value


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a finite number > 0: {text!r}")
    return value


def count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return int(text)


def policy_flags(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The adaptive rule's flags (argparse names the flag when a value is rejected); ``defaults``
    False: None when not given."""
    rule = Policy()
    parser.add_argument(
        "--adaptive-factor",
        type=positive,
        default=rule.factor if defaults else None,
        metavar="F",
        help=f"adaptive deadline: F x the scope's longest completed block (default {rule.factor:g})",
    )
    parser.add_argument(
        "--adaptive-min-samples",
        type=count,
        default=rule.min_samples if defaults else None,
        metavar="N",
        help=f"adaptive deadlines apply once a scope has N completed blocks (default {rule.min_samples})",
    )
    parser.add_argument(
        "--adaptive-floor",
        type=positive,
        default=rule.floor if defaults else None,
        metavar="SECONDS",
        help=f"an adaptive deadline is never shorter than this (default {rule.floor:g})",
    )


def owner(text: str) -> Owner:
    try:
        return Owner.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0-65535): {text!r}")
    return int(text)


EXIT_BAD_INPUT = 2
"""A flag, a state file or a /blocks document is refused: one line on stderr naming the problem."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused flag is one line (``PROG: error: ...``, no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n"
        )


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="expiry-sidecar", description=__doc__)
    top.add_argument("--version", action="version", version=f"expiry-sidecar {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    common = _Parser(add_help=False)
    common.add_argument("--metrics-host", default="0.0.0.0", help="address for /metrics, /readyz, /healthz")
    common.add_argument(
        "--kill-signal", type=signal_number, help="signal to send instead of the one the client asks for"
    )
    common.add_argument(
        "--escalate-after",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="SIGKILL a worker still alive this long after a softer signal (0: never; default 10)",
    )
    common.add_argument(
        "--scope-metrics",
        action="store_true",
        help="count expirations by scope id (expiry_timer_expirations_total; at most 200 scopes)",
    )
    common.add_argument(
        "--stack-dumps",
        type=Path,
        metavar="DIR",
        help="before a kill, capture the worker's Python stack into DIR and the log",
    )
    common.add_argument(
        "--mode",
        type=Mode,
        choices=list(Mode),
        default=Mode.ENFORCE,
        help="observe: everything an expiry does (stack dump, log, Event, metrics) but the signal"
        " (default enforce)",
    )
    common.add_argument(
        "--deadlines",
        choices=POLICIES,
        default=REQUESTED,
        help="adaptive: lower each block's deadline to what its scope's completed blocks justify"
        " (never above the requested one; default requested)",
    )
    policy_flags(common)
    common.add_argument(
        "--false-kill-budget",
        type=count,
        default=DEFAULT_KILLS,
        metavar="N",
        help=f"after N blocks killed at adaptive deadlines within {WINDOW / 3600:g} h, fall back to requested"
        f" deadlines for the rest of the pod's life, and say so (default {DEFAULT_KILLS})",
    )
    common.add_argument("--log-format", choices=["json", "text"], default="json")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    serve = commands.add_parser("serve", parents=[common], help="serve the timer FIFO until SIGTERM")
    serve.add_argument(
        "--fifo", type=Path, default=Path(FIFO_PATH), help=f"the FIFO to read (default {FIFO_PATH})"
    )
    serve.add_argument("--metrics-port", type=port, default=METRICS_PORT, help="0: no HTTP endpoint")
    serve.add_argument(
        "--state-file",
        type=Path,
        help="keep armed timers in this file (on the shared volume) so a restarted sidecar takes them over",
    )
    serve.add_argument(
        "--exit-when-alone",
        action="store_true",
        help="exit 0 once no process but this one and PID 1 is left in the pod (no native sidecars)",
    )
    serve.add_argument(
        "--alone-grace",
        type=seconds,
        default=alone.GRACE,
        metavar="SECONDS",
        help=f"with --exit-when-alone: how long to be alone before exiting (default {alone.GRACE:g})",
    )
    serve.add_argument(
        "--events",
        action="store_true",
        help="record a Kubernetes Event on this pod per burst of kills (needs EXPIRY_POD_NAME,"
        " EXPIRY_POD_NAMESPACE and credentials allowed to create and patch events)",
    )
    serve.add_argument(
        "--pod-condition",
        action="store_true",
        help="before a kill, set the condition expiry.io/WorkerHung on this pod (waits at most 1 s; needs"
        " EXPIRY_POD_NAME, EXPIRY_POD_NAMESPACE and credentials allowed to patch pods/status)",
    )
    serve.add_argument(
        "--deadline-profile",
        metavar="NAME",
        help="start a fresh pod from this DeadlineProfile (expiry.io) in the pod's namespace and write what"
        " is learned to it (needs EXPIRY_POD_NAME, EXPIRY_POD_NAMESPACE and credentials allowed to get,"
        " create and patch deadlineprofiles)",
    )
    serve.add_argument(
        "--profile-owner",
        type=owner,
        metavar="JSON",
        help='the workload that owns the profile: {"apiVersion", "kind", "name", "uid"} (deleted with it)',
    )

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run CMD under a private timer server",
        usage="%(prog)s [options] -- CMD ...",
    )
    run.add_argument(
        "--metrics-port", type=port, default=0, help="serve /metrics while CMD runs (default: off)"
    )
    run.add_argument(
        "--print-metrics", action="store_true", help="print the final metrics to stderr when CMD exits"
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")

    advise = commands.add_parser(
        "advise",
        help="per scope: blocks, p50/p99/longest, requested and suggested deadline",
        description="Read what a sidecar learned about its blocks and suggest deadlines. The adaptive"
        " rule's flags default to the running sidecar's own (with --url) or to the defaults.",
    )
    source = advise.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="a running sidecar's HTTP endpoint, e.g. http://10.0.0.7:9402")
    source.add_argument("--state-file", type=Path, help="a sidecar's --state-file")
    policy_flags(advise, defaults=False)  # not given: the running sidecar's own values apply
    return top


def advise_command(args: argparse.Namespace) -> int:
    """Exit 1 when the sidecar cannot be reached, 2 when what it or the file holds is refused."""
    if args.url:
        try:
            doc = advice.fetch(args.url)
        except OSError as exc:
            sys.stderr.write(f"expiry-sidecar advise: cannot read {args.url}/blocks: {exc}\n")
            return 1
        except advice.DocumentError as exc:
            sys.stderr.write(f"expiry-sidecar advise: {args.url}/blocks is not a sidecar's /blocks: {exc}\n")
            return EXIT_BAD_INPUT
        own = doc["policy"]
        base = Policy(REQUESTED, own["adaptive_factor"], own["adaptive_min_samples"], own["adaptive_floor"])
    else:
        try:
            stats = read_blocks(args.state_file)
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"expiry-sidecar advise: cannot read {args.state_file}: {exc}\n")
            return EXIT_BAD_INPUT
        base = Policy()
        doc = advice.document(Deadlines(base, stats))
        doc["policy"]["deadlines"] = "(unknown: read from a state file)"
        doc["blocks_over_adaptive_deadline"] = None  # a counter: not kept in the file
    policy = Policy(
        REQUESTED,
        base.factor if args.adaptive_factor is None else args.adaptive_factor,
        base.min_samples if args.adaptive_min_samples is None else args.adaptive_min_samples,
        base.floor if args.adaptive_floor is None else args.adaptive_floor,
    )
    for line in advice.render(advice.advise(doc, policy), policy, doc):
        print(line)
    return 0


def options_from(args: argparse.Namespace) -> Options:
    """What ``serve`` or ``run`` was asked for (no I/O: the fuzzers check every flag ends here)."""
    options = Options(
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        kill_signal=args.kill_signal,
        escalate_after=args.escalate_after,
        scope_metrics=args.scope_metrics,
        stack_dumps=args.stack_dumps,
        mode=args.mode,
        deadlines=args.deadlines,
        adaptive_factor=args.adaptive_factor,
        adaptive_min_samples=args.adaptive_min_samples,
        adaptive_floor=args.adaptive_floor,
        false_kill_budget=args.false_kill_budget,
    )
    if args.command == "serve":
        options.fifo = args.fifo
        options.state_file = args.state_file
        options.exit_when_alone = args.exit_when_alone
        options.alone_grace = args.alone_grace
        options.events = args.events
        options.pod_condition = args.pod_condition
        options.deadline_profile = args.deadline_profile
        options.profile_owner = args.profile_owner
    return options


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "advise":
        return advise_command(args)
    logs.configure(args.log_format, args.log_level)
    options = options_from(args)
    if args.command == "serve":
        return Sidecar(options).serve_until_signalled()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser().error("run needs a command: expiry-sidecar run [options] -- CMD ...")
    return run_command(options, cmd, print_metrics=args.print_metrics)


if __name__ == "__main__":
    sys.exit(main())
