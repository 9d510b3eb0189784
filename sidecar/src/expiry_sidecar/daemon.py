"""The sidecar assembled: FIFO reader, timer server, event loop, listeners and HTTP endpoints."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from expiry.names import BUDGET_SPENT_REASON, FIFO_PATH, METRICS_PORT, NODE_NAME_ENV
from expiry_sidecar import alone, kills, rivals
from expiry_sidecar.advice import document
from expiry_sidecar.apiwriter import ApiWriter, PodRef
from expiry_sidecar.budget import DEFAULT_KILLS, FalseKillBudget
from expiry_sidecar.condition import PodCondition
from expiry_sidecar.deadlines import REQUESTED, Deadlines, Policy
from expiry_sidecar.events import EventRecorder
from expiry_sidecar.fifo import FifoReader, NameWatch, fifo_at, wake_readers
from expiry_sidecar.http import HttpEndpoint, Probes
from expiry_sidecar.killer import KillPool
from expiry_sidecar.loop import ServeLoop
from expiry_sidecar.metrics import (
    condition_counter,
    event_counter,
    make_registry,
    profile_counter,
    stack_dump_counter,
)
from expiry_sidecar.mode import Mode
from expiry_sidecar.profile import Owner
from expiry_sidecar.profile_sync import INTERVAL as PROFILE_INTERVAL
from expiry_sidecar.profile_sync import ProfileSync
from expiry_sidecar.server import KillReport, Listener, TimerServer, signal_name
from expiry_sidecar.stackdumps import StackDumper, find_py_spy
from expiry_sidecar.state import JournaledBook, StateFile

log = logging.getLogger("expiry.sidecar")

FIFO_CHECK_INTERVAL = 5.0
"""Seconds between checks that the FIFO is still there (one cheap stat), besides inotify's word."""
SETTLE = 0.2
"""Seconds between inotify's word that the FIFO's name changed and the check: a server that deletes
and remakes the file (torch's FileTimerServer) has made its FIFO by then, and opened it."""
RIVAL_CHECK_INTERVAL = 60.0
"""Seconds between scans for other readers of the FIFO when nothing asked for one (see rivals): a
safety net, since inotify reports each open of the FIFO and each close by a reader, and a scan
follows within a few seconds (rivals.MIN_GAP); without inotify, this is the only scan."""
COMPETING_READER = "CompetingTimerServer"
"""The reason of the Event about another process reading the FIFO."""


@dataclass
class Options:
    fifo: Path = Path(FIFO_PATH)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = METRICS_PORT
    """0: no HTTP endpoint at all."""
    kill_signal: int | None = None
    escalate_after: float = 10.0
    scope_metrics: bool = False
    state_file: Path | None = None
    exit_when_alone: bool = False
    alone_grace: float = alone.GRACE
    events: bool = False
    """Record a Kubernetes Event on the pod per burst of kills (see events)."""
    stack_dumps: Path | None = None
    """Capture a stuck worker's stack into this directory before killing it."""
    mode: Mode = Mode.ENFORCE
    pod_condition: bool = False
    """Mark the pod with the hang condition before each kill."""
    deadlines: str = REQUESTED
    adaptive_factor: float = 5.0
    adaptive_min_samples: int = 20
    adaptive_floor: float = 60.0
    false_kill_budget: int = DEFAULT_KILLS
    """Adaptive kills per budget.WINDOW before the pod falls back to requested deadlines."""
    deadline_profile: str | None = None
    """The workload's DeadlineProfile to start from and write to (None: none)."""
    profile_owner: Owner | None = None

    def policy(self) -> Policy:
        return Policy(self.deadlines, self.adaptive_factor, self.adaptive_min_samples, self.adaptive_floor)


class KillLog(Listener):
    def __init__(self, node: str | None = None) -> None:
        self.node = node
        """The pod's node (``EXPIRY_NODE_NAME``), named in every kill line; None when unknown."""

    def after_kill(self, report: KillReport) -> None:
        worker = report.worker
        fields = {
            "pid": worker.pid,
            "scope": "" if report.escalation else report.scope_id,
            "signal": signal_name(report.signal),
            "outcome": report.outcome.value,
            "late_seconds": round(report.lateness, 6),
            "escalation": report.escalation,
            "rule": report.rule,
            "collective": report.collective,
            "node": self.node,
            "cmdline": worker.cmdline,
        }
        if report.outcome is kills.Outcome.OBSERVED:
            log.warning("observed a stuck worker (observe mode: not killed)", extra=fields)
        elif report.outcome is kills.Outcome.DELIVERED:
            log.warning("killed a stuck worker", extra=fields)
        else:
            log.warning("could not kill", extra=fields)


class BudgetNotice(Listener):
    """Says, once, that the pod spent its false-kill budget: the log, and an Event when Events are on."""

    def __init__(self, events: EventRecorder | None) -> None:
        self.events = events

    def adaptive_suspended(self, kills: int, window: float) -> None:
        note = (
            f"{kills} blocks were killed at adaptive deadlines within {window:g} s, the false-kill budget:"
            " every block keeps its requested deadline for the rest of this pod's life"
        )
        log.warning("adaptive deadlines suspended: %s", note, extra={"kills": kills, "window": window})
        if self.events:
            self.events.notice(BUDGET_SPENT_REASON, note)


class Sidecar:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.loop = ServeLoop(FifoReader(options.fifo))
        self.dumper = StackDumper(options.stack_dumps, py_spy=find_py_spy()) if options.stack_dumps else None
        uses_api = options.events or options.pod_condition or options.deadline_profile
        self.writer = ApiWriter(PodRef.from_environment()) if uses_api else None
        node = os.environ.get(NODE_NAME_ENV) or None
        self.events = EventRecorder(self.writer, node=node) if self.writer and options.events else None
        self.condition = PodCondition(self.writer) if self.writer and options.pod_condition else None
        optional: list[Listener] = [x for x in (self.dumper, self.events, self.condition) if x is not None]
        self.kills = KillPool()
        self.server = TimerServer(
            kill_signal=options.kill_signal,
            escalate_after=options.escalate_after,
            scope_metrics=options.scope_metrics,
            listeners=[KillLog(node), BudgetNotice(self.events), *optional],
            on_watch=self.loop.watch,
            on_unwatch=self.loop.unwatch,
            mode=options.mode,
            pod_condition=options.pod_condition,
            dispatch=self.kills.dispatch,
            deadlines=Deadlines(options.policy(), budget=FalseKillBudget(options.false_kill_budget)),
            # A worker signalled on the loop may have been woken on the loop's own CPU: let it die
            # before the kill's bookkeeping, not after it (docs/performance.md, "Kill latency").
            after_signals=os.sched_yield,
        )
        if self.dumper:
            self.dumper.peers = lambda: list(self.server.workers.values())
        self.loop.watch_fd(self.kills.fd, lambda: self.kills.collect(self.server.killed), once=False)
        if options.state_file is not None:
            self._take_over(options.state_file)
        self.profile = self._profile() if self.writer and options.deadline_profile else None
        self.registry = make_registry(self.server)
        if self.profile:
            self.registry.register(profile_counter(self.profile.results))
        if self.dumper:
            self.registry.register(stack_dump_counter(self.dumper.results))
        if self.events:
            self.registry.register(event_counter(self.events.results))
        if self.condition:
            self.registry.register(condition_counter(self.condition.results))
        self.probes = Probes()
        self.http = (
            HttpEndpoint(
                options.metrics_host,
                options.metrics_port,
                self.registry,
                self.probes,
                {"/blocks": self._blocks_document},
            )
            if options.metrics_port
            else None
        )
        self.rivals = rivals.RivalWatch(self.loop.reader.inode, on_new=self._rival)
        self.registry.register(rivals.RivalGauge(self.rivals))
        self.loop.periodic.append((FIFO_CHECK_INTERVAL, self._check_fifo))
        self._check_pending = False
        self.name_watch = self._watch_name()
        if options.exit_when_alone:
            watch = alone.Solitude(
                on_alone=self.loop.stop,
                grace=options.alone_grace,
                heard_from_workers=lambda: self.server.stats.acquires > 0,
            )
            self.loop.periodic.append((alone.CHECK_INTERVAL, watch.check))

    def _take_over(self, path: Path) -> None:
        """Journal timers to ``path``, first re-arming what a previous sidecar left there."""
        state = StateFile(path)
        saved = state.load()
        deadlines = self.server.deadlines
        state.load_blocks(deadlines.stats, deadlines.budget)  # before the timers: they keep what was learned
        self.server.stats.state_errors = state.errors
        if deadlines.budget.exhausted:
            log.warning(
                "adaptive deadlines stay suspended: this pod spent its false-kill budget before the restart"
            )
        book = JournaledBook(
            state,
            self.server.starttime_of,
            on_error=self._state_error,
            blocks=deadlines.stats,
            budget=deadlines.budget,
        )
        self.server.book = book
        self.server.restore(saved)
        book.snapshot()

    def _profile(self) -> ProfileSync:
        """Start from the workload's profile (a fresh pod), and write to it now and then."""
        assert self.writer is not None and self.options.deadline_profile is not None
        state = self.options.state_file
        sync = ProfileSync(
            self.writer,
            name=self.options.deadline_profile,
            owner=self.options.profile_owner,
            stats=self.server.deadlines.stats,
            policy=self.server.deadlines.policy,
            baseline_file=state.with_name(f"{state.name}.profile") if state else None,
        )
        sync.start()
        if sync.seeded and isinstance(self.server.book, JournaledBook):
            self.server.book.snapshot()  # the seed is this pod's own state from now on
        self.loop.periodic.append((PROFILE_INTERVAL, sync.due))
        return sync

    def _watch_name(self) -> NameWatch | None:
        """inotify on the FIFO's name, so a replacement is undone at once (else: every 5 s)."""
        try:
            watch = NameWatch(self.options.fifo)
        except OSError as exc:
            log.warning(
                "cannot watch the FIFO's name with inotify (%s); checking it every %gs",
                exc,
                FIFO_CHECK_INTERVAL,
            )
            return None

        def on_change() -> None:
            renamed, held = watch.changes()
            if held:
                self.rivals.soon()
            if renamed and not self._check_pending:
                self._check_pending = True
                self.loop.call_later(SETTLE, self._check_fifo)

        self.loop.watch_fd(watch.fd, on_change, once=False)
        return watch

    def _check_fifo(self) -> None:
        """Put a FIFO of our own back if someone deleted or replaced ours: clients must find us, and only us.

        Clients still holding the old pipe get EPIPE on their next write once it is closed, and
        reconnect to the new one, re-arming their timers (see expiry.pipe). A FIFO put in our place
        is another timer server's (torch's FileTimerServer removes and recreates the file): it is
        replaced too, so no worker writes to it, and its readers are named (see rivals).
        """
        self._check_pending = False
        if self.loop.reader.still_linked():
            return
        path = self.options.fifo
        foreign = fifo_at(path)
        if foreign is not None:
            self.rivals.suspect(foreign)
            wake_readers(path)
        log.warning(
            "the FIFO was %s; recreating it",
            "replaced by another FIFO" if foreign else "deleted",
            extra={"fifo": str(path)},
        )
        self._take_path()
        if foreign is not None:  # once the woken reader has its descriptor
            self.rivals.soon()

    def _take_path(self) -> None:
        """Read a new FIFO of our own at the path from now on; drain and close the old one."""
        old = self.loop.replace_reader(FifoReader(self.options.fifo, claim=True))
        self.rivals.own_fifo = self.loop.reader.inode
        while chunk := old.read():
            self.server.receive(chunk)
        old.close()

    def _rival(self, reader: rivals.Reader) -> None:
        if self.events:
            self.events.notice(COMPETING_READER, rivals.event_note(reader))

    def _blocks_document(self) -> bytes:
        with self.server.lock:  # the loop thread changes what is read here
            doc = document(self.server.deadlines)
        return json.dumps(doc).encode()

    def _state_error(self) -> None:
        self.server.stats.state_errors += 1

    def run(self) -> int:
        """Serve until stopped (SIGTERM/SIGINT in ``serve``); returns the exit status."""
        self.probes.loop_thread = threading.current_thread()
        if self.http:
            self.http.start()
        self.rivals.start(RIVAL_CHECK_INTERVAL, settle=SETTLE)
        log.info(
            "serving",
            extra={
                "fifo": str(self.options.fifo),
                "metrics_port": self.http.port if self.http else None,
                "pid": os.getpid(),
                "mode": self.options.mode.value,
            },
        )
        try:
            return self.loop.run(self.server, ready=self._ready)
        finally:
            self.probes.ready = False
            self.close()

    def _ready(self) -> None:
        self.probes.ready = True

    def serve_until_signalled(self) -> int:
        self.loop.stop_on_signals(signal.SIGTERM, signal.SIGINT)
        status = self.run()
        log.info("stopped", extra={"timers_dropped": len(self.server.book)})
        return status

    def close(self) -> None:
        self.rivals.stop()
        if self.name_watch:
            self.name_watch.close()
        with self.server.lock:  # the kills under way finish (each is bounded) and are counted
            self.kills.close(self.server.killed)
            if self.profile:  # on shutdown, what was learned since the last write
                self.profile.due()
        if self.writer:
            self.writer.close()
        if self.http:
            self.http.stop()
        self.server.close()
        self.loop.close()
        self.loop.reader.close()
