"""``--exit-when-alone``: for clusters without native sidecars, where the sidecar is a regular
container and a Job's pod completes only when every container has exited.

Once the sidecar has seen another process in the pod (or heard from a worker, however briefly it
lived), and then sees none but itself, its own
children and PID 1 (the pause process) for ``GRACE`` seconds in a row, it exits 0. The grace
period covers a trainer container restarting.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger("expiry.sidecar")

CHECK_INTERVAL = 2.0
GRACE = 10.0


def others() -> list[int]:
    """Pids in this PID namespace that are neither PID 1, this process, nor its descendants."""
    import psutil  # only in this mode: it costs the sidecar ~1 MB to load

    me = psutil.Process()
    mine = {me.pid} | {child.pid for child in me.children(recursive=True)}
    return [pid for pid in psutil.pids() if pid != 1 and pid not in mine]


class Solitude:
    def __init__(
        self,
        on_alone: Callable[[], None],
        grace: float = GRACE,
        clock: Callable[[], float] = time.monotonic,
        list_others: Callable[[], list[int]] = others,
        heard_from_workers: Callable[[], bool] = lambda: False,
    ) -> None:
        self.on_alone = on_alone
        self.grace = grace
        self.clock = clock
        self.list_others = list_others
        self.heard_from_workers = heard_from_workers
        self.seen_company = False
        self.alone_since: float | None = None

    def check(self) -> None:
        if self.list_others():
            self.seen_company = True
            self.alone_since = None
            return
        if not (self.seen_company or self.heard_from_workers()):
            return
        now = self.clock()
        if self.alone_since is None:
            self.alone_since = now
            log.info("no trainer process left; exiting in %gs unless one appears", self.grace)
        elif now - self.alone_since >= self.grace:
            log.info("alone in the pod: exiting", extra={"pid": os.getpid()})
            self.on_alone()
