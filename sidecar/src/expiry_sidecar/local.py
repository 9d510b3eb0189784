"""``expiry-sidecar run -- CMD``: the sidecar on a machine without Kubernetes.

A private server on a FIFO in a fresh temporary directory; CMD runs with ``TORCHELASTIC_TIMER_FILE``
pointing at it; the server stops when CMD exits, and CMD's exit status is returned (128 + the
signal number when a signal ended it, as shells report it). SIGINT and SIGTERM are passed to CMD.
``TORCHELASTIC_ENABLE_FILE_TIMER=1`` in the environment is refused (exit 2, before CMD starts): torchrun
would start torch's own FileTimerServer on the private FIFO, a second server splitting the requests.
With ``--stack-dumps DIR``, CMD gets ``EXPIRY_DUMP_DIR`` too, so expiry's client in it can dump its
stacks when the sidecar asks, before the kill.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client import generate_latest

from expiry.names import DUMP_DIR_ENV, TIMER_FILE_ENV, TORCH_FILE_TIMER_ENV
from expiry_sidecar.daemon import Options, Sidecar

USAGE_ERROR = 2


def torch_timer_conflict(environ: Mapping[str, str]) -> str | None:
    """Why ``environ`` would start a second timer server under torchrun, or None."""
    if environ.get(TORCH_FILE_TIMER_ENV) != "1":
        return None
    return (
        f"{TORCH_FILE_TIMER_ENV}=1 is set: torchrun would start torch's own FileTimerServer on this"
        f" sidecar's FIFO ({TIMER_FILE_ENV}), and the two servers would split the workers' requests."
        f" Unset it (e.g. env -u {TORCH_FILE_TIMER_ENV} expiry-sidecar run ...): the sidecar is the"
        " timer server, and torch's expires/FileTimerClient work with it unchanged."
    )


def run_command(options: Options, argv: Sequence[str], *, print_metrics: bool = False) -> int:
    conflict = torch_timer_conflict(os.environ)
    if conflict:
        sys.stderr.write(f"expiry-sidecar run: {conflict}\n")
        return USAGE_ERROR
    workdir = Path(tempfile.mkdtemp(prefix="expiry-"))
    options.fifo = workdir / "timer.fifo"
    try:
        sidecar = Sidecar(options)
        env = {**os.environ, TIMER_FILE_ENV: str(options.fifo)}
        if options.stack_dumps:
            env[DUMP_DIR_ENV] = str(options.stack_dumps)
        child = subprocess.Popen(argv, env=env)
        pidfd = os.pidfd_open(child.pid)
        sidecar.loop.watch_fd(pidfd, sidecar.loop.stop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: child.send_signal(signum))
        sidecar.run()
        os.close(pidfd)
        status = child.wait()
        if print_metrics:
            sys.stderr.write(_exposition(sidecar))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return status if status >= 0 else 128 - status


def _exposition(sidecar: Sidecar) -> str:
    """The final series for a person to read: no HELP/TYPE comments or histogram buckets."""
    text = generate_latest(sidecar.registry).decode()
    return "".join(
        line + "\n" for line in text.splitlines() if line.startswith("expiry_") and "_bucket{" not in line
    )
