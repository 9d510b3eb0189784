"""A training worker for the tests, run inside a pod: ``python worker.py ACTION [options]``.

It prints ``pid N`` (its pid in the pod) first, then one line per step, flushing each, so a test
can follow it. Actions:
  hang      arm a block of --after seconds, print "armed", then hang inside it; with --at-from-stdin,
            print "ready" first and read the block's deadline (epoch seconds) from stdin
  blocks    run --count blocks of --after seconds, each doing nothing; print "done N"
  nested    an outer block of --after seconds around an inner quick block; then hang in the outer
  recurse   a decorated recursive function, --depth deep, the innermost hangs
  exit      arm a block of --after seconds, print "armed", wait for a line on stdin, then exit
            without releasing
  later     run one quick block (opening the pipe), print "connected", wait for a line on stdin,
            then hang in a block of --after seconds
  soak      for --seconds seconds: blocks of 60 s, and every 50th a watch-only block (signal 0) that
            outlives its 5 ms deadline; print "done ACQUIRES RELEASES WATCHES"
  hold      arm --count timers of --after seconds, print "armed", wait for a line on stdin, release
            them all, print "released", wait for another line
  gil       arm a block of --after seconds, print "armed", then hang in C code holding the GIL (a
            regular expression that backtracks for hours): only a signal handler can answer then
  two       arm a --after block and a 3600 s block (one pid, two scopes), print "armed", hang
  torch     torch's own expires/FileTimerClient: arm a block of --after seconds and hang
  torch-blocks  torch's own expires/FileTimerClient: run --count blocks of --after seconds; print "done N"
  steps     blocks of --after seconds in one scope, each busy --step seconds (--count of them) or
            the --durations given (comma-separated); print "done N"; then with --hang, print "armed T"
            (T: CLOCK_MONOTONIC before the acquire) and hang in one more block of that scope.
            --client torch: torch's expires and FileTimerClient
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from typing import Any

from expiry import FileTimerClient, expires


def say(*words: object) -> None:
    print(*words, flush=True)


def hang() -> None:
    threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action")
    parser.add_argument("--after", type=float, default=1.0)
    parser.add_argument("--at-from-stdin", action="store_true")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--step", type=float, default=0.0)
    parser.add_argument("--durations", default="")
    parser.add_argument("--scope", default="step", help="steps: the scope of every block (expiry's client)")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--client", choices=["expiry", "torch"], default="expiry")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    say("pid", os.getpid())

    if args.action == "hang":
        if args.at_from_stdin:
            say("ready")
            args.after = float(sys.stdin.readline()) - time.time()
        with expires(after=args.after):
            say("armed")
            hang()
    elif args.action == "blocks":
        for _ in range(args.count):
            with expires(after=args.after):
                pass
        say("done", args.count)
    elif args.action == "nested":
        with expires(after=args.after):
            with expires(after=3600):
                say("inner")
            say("armed")
            hang()
    elif args.action == "recurse":

        @expires(after=args.after)
        def descend(depth: int) -> None:
            if depth == 0:
                say("armed")
                hang()
            descend(depth - 1)

        descend(args.depth)
    elif args.action == "gil":
        with expires(after=args.after):
            say("armed")
            re.match(r"(a+)+b", "a" * 64)
    elif args.action == "exit":
        expires(after=args.after).__enter__()
        say("armed")
        sys.stdin.readline()
        os._exit(0)
    elif args.action == "later":
        with expires(after=60):
            pass
        say("connected")
        sys.stdin.readline()
        with expires(after=args.after):
            say("armed")
            hang()
    elif args.action == "soak":
        watch_only = FileTimerClient(os.environ["TORCHELASTIC_TIMER_FILE"], signal=0)
        blocks = watches = 0
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            blocks += 1
            if blocks % 50:
                with expires(after=60):
                    pass
            else:
                watches += 1
                with expires(after=0.005, client=watch_only):
                    time.sleep(0.01)
        say("done", blocks, blocks, watches)
    elif args.action == "hold":
        client = FileTimerClient(os.environ["TORCHELASTIC_TIMER_FILE"])
        expiration = time.time() + args.after
        for n in range(args.count):
            client.acquire(f"held-{n}", expiration)
        say("armed")
        sys.stdin.readline()
        for n in range(args.count):
            client.release(f"held-{n}")
        say("released")
        sys.stdin.readline()
    elif args.action == "two":
        with expires(after=3600, scope="long"), expires(after=args.after, scope="short"):
            say("armed")
            hang()
    elif args.action in ("torch", "torch-blocks"):
        from torch.distributed.elastic.timer import FileTimerClient as TorchClient
        from torch.distributed.elastic.timer import configure
        from torch.distributed.elastic.timer import expires as torch_expires

        configure(TorchClient(os.environ["TORCHELASTIC_TIMER_FILE"]))
        if args.action == "torch-blocks":
            for _ in range(args.count):
                with torch_expires(after=args.after):
                    pass
            say("done", args.count)
            return
        with torch_expires(after=args.after):
            say("armed")
            hang()
    elif args.action == "steps":
        steps(args)
    else:
        sys.exit(f"unknown action {args.action}")


def steps(args: argparse.Namespace) -> None:
    durations = [float(d) for d in args.durations.split(",")] if args.durations else [args.step] * args.count
    if args.client == "torch":
        from torch.distributed.elastic.timer import FileTimerClient as TorchClient
        from torch.distributed.elastic.timer import configure
        from torch.distributed.elastic.timer import expires as torch_expires

        configure(TorchClient(os.environ["TORCHELASTIC_TIMER_FILE"]))

        def block(after: float) -> Any:
            return torch_expires(after=after)  # one scope for every block (torch's computes it so)
    else:

        def block(after: float) -> Any:
            return expires(after=after, scope=args.scope)

    for duration in [*durations, None]:
        if duration is None:
            say("done", len(durations))
            if not args.hang:
                return
        before = time.monotonic()
        with block(args.after):
            if duration is None:
                say("armed", before)
                hang()
            else:
                time.sleep(duration)


if __name__ == "__main__":
    main()
