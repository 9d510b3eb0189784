"""The timer server's logic: requests in, kills out. No FIFO, no sockets, no threads.

The rules, in the order a request meets them:

1. The byte stream is cut into lines; each line that is not a valid version-1 request is counted
   as malformed and skipped; the lines around it are unaffected.
2. A release disarms its (pid, scope) and its block's duration is learned (see :mod:`.deadlines`),
   per container and scope (the worker's container: :mod:`.processes`, :func:`.blocks.key`).
   Releasing what is not armed is harmless.
3. An acquire first attaches to its worker (see :mod:`.processes`): a request whose writer is
   already gone, or whose pid now belongs to another process, arms nothing. Its wall-clock
   expiration time becomes a monotonic deadline on arrival, which the deadline policy may lower;
   re-acquiring a scope replaces it.
4. When a deadline passes the timer expires. What happens to its worker is the mode's rule (see
   :mod:`.mode`): with a signal <= 0, nothing; otherwise the worker is ordered killed (``kill_signal``
   overrides the client's choice; in observe mode only as if), and all of its timers are cleared:
   a worker is killed once, however many of its timers expired, and never again while its kill is
   under way. An expiry at an adaptive deadline teaches its scope and charges the pod's false-kill
   budget (see :mod:`.deadlines`).
5. A kill order is carried out off the loop (``dispatch``): the slow work before the signal (stack
   dump, pod condition) runs, each piece within its own bound, then the signal goes out (unless
   observing or the worker is protected), and the report comes back to the loop (``killed``) for
   the bookkeeping. Workers expiring together are killed in parallel; no deadline waits for a dump.
   The worker's pidfd stays open until its report is back, so the signal reaches that very process.
   A kill that nothing slow precedes (no dump, no pod condition: no listener says ``slow``) is
   signalled on the loop at once, which is quicker than a hand-over to a pool thread; its
   bookkeeping (``killed``: metrics, the log line, listeners) waits until every signal of the turn
   is out, and ``after_signals`` (the daemon's: give the CPU to the dying workers) has run.
6. A worker that got any signal but SIGKILL and is still alive ``escalate_after`` seconds later
   gets SIGKILL. One still alive ``UNKILLABLE_AFTER`` seconds after SIGKILL is stuck where no
   signal reaches (uninterruptible sleep, e.g. on a dead NFS server): it is reported, loudly.
7. A worker that exits disarms all its timers.
"""

from __future__ import annotations

import logging
import signal as signals
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from expiry.wire import MalformedRequest, Request, decode
from expiry_sidecar import blocks, kills, processes
from expiry_sidecar.deadlines import Deadlines
from expiry_sidecar.lines import LineSplitter
from expiry_sidecar.mode import Action, Mode, on_expiry
from expiry_sidecar.processes import NotAttached, Worker
from expiry_sidecar.state import SavedTimer
from expiry_sidecar.timers import Timer, TimerBook

log = logging.getLogger("expiry.sidecar")

ESCALATION_SCOPE = "\0expiry:escalation"
"""The scope reported for the SIGKILL that follows an unheeded softer signal."""
SCOPE_LABELS_MAX = 200
"""Scope ids are unbounded; as labels (opt-in) they are capped so Prometheus is never flooded."""
UNKILLABLE_AFTER = 30.0
"""Seconds a worker may outlive its SIGKILL before it is reported as stuck in the kernel."""


@dataclass
class Stats:
    acquires: int = 0
    releases: int = 0
    malformed: int = 0
    stale: int = 0
    """Acquires whose writer was gone (or its pid reused) by the time they were read."""
    expirations: int = 0
    observed: int = 0
    """Expirations that observe mode reported instead of killing."""
    escalations: int = 0
    worker_exits: int = 0
    unkillable: int = 0
    """Workers still alive UNKILLABLE_AFTER seconds after their SIGKILL."""
    expirations_by_scope: Counter[str] = field(default_factory=Counter)
    """Only with ``scope_metrics``: at most SCOPE_LABELS_MAX scopes, the rest counted as "other"."""
    kills: Counter[str] = field(default_factory=Counter)
    kill_failures: Counter[str] = field(default_factory=Counter)
    last_kill_time: float = 0.0
    restored: int = 0
    """Timers a restarted sidecar took over from its state file."""
    restore_dropped: int = 0
    """Saved timers whose worker had exited (or whose pid was reused) while no sidecar ran."""
    state_errors: int = 0


@dataclass(frozen=True)
class KillOrder:
    """What the loop decided for one worker; carried out off the loop."""

    worker: Worker
    scope_id: str
    signal: int
    deadline: float
    """Monotonic seconds."""
    deadline_wall: float
    """The same deadline in epoch seconds, for people and the API."""
    ordered_at: float
    """Monotonic seconds; bounds on the work before the signal count from here."""
    send: bool = True
    """False: observe mode, the signal is only reported."""
    condition: bool = False
    """Mark the pod with the hang condition before the signal."""
    escalation: bool = False
    rule: str = "requested"
    """Which deadline fired and why."""
    frames: list[str] = field(default_factory=list)
    """Filled in by the stack dump: up to a few innermost frames, innermost last."""
    collective: dict[str, object] = field(default_factory=dict)
    """Filled in by the stack dump: the worker's latest flight-recorder collective (empty: none)."""
    told_ranks: dict[str, int] = field(default_factory=dict)
    """Filled in by the stack dump: ``rank`` and ``local_rank`` as the worker told them on its debug
    channel, for when its environment cannot be read (it holds capabilities the sidecar lacks)."""


@dataclass(frozen=True)
class KillReport:
    worker: Worker
    scope_id: str
    signal: int
    outcome: kills.Outcome
    lateness: float
    """Seconds from the deadline to the signal (to the refusal, when refused; to the report, observing)."""
    escalation: bool = False
    rule: str = "requested"
    """Which deadline fired and why (deadlines.Policy.explain)."""
    deadline: float = 0.0
    """Epoch seconds the deadline passed."""
    frames: tuple[str, ...] = ()
    """The innermost frames of the worker's stack when it was dumped, innermost last."""
    collective: dict[str, object] | None = None
    """``{"group", "seq", "op", "state"}``: its latest flight-recorder collective, when it had one."""


class Listener:
    """Told about kills as they happen: metrics, logs, Kubernetes Events, stack dumps, the pod condition."""

    def ordered(self, order: KillOrder) -> None:
        """On the loop, as the kill is ordered: must not block (queue work, at most)."""

    def slow(self, order: KillOrder) -> bool:
        """On the loop: may ``before_kill`` take a moment for this order? (Then it runs off the loop.)"""
        return False

    def before_kill(self, order: KillOrder) -> None:
        """Before the signal, off the loop if any listener is ``slow``: within its own bound."""

    def after_kill(self, report: KillReport) -> None:
        """On the loop, once per kill ordered: delivered, refused or observed."""

    def block_completed(self, pid: int, armed_at: float) -> None:
        """On the loop, for each release of an armed block (monotonic ``armed_at``): must not block.
        Only listeners that override it are called (a release is the hottest path)."""

    def adaptive_suspended(self, kills: int, window: float) -> None:
        """On the loop, once: ``kills`` adaptive kills within ``window`` s spent the pod's false-kill
        budget, so every block keeps its requested deadline from now on (must not block)."""


Dispatch = Callable[[Callable[[], KillReport]], None]
"""Runs a kill (a job returning its report) and hands the report to ``TimerServer.killed`` on the
loop; inline by default, on a thread pool in the daemon (see :mod:`.killer`)."""


def carry_out(
    order: KillOrder,
    listeners: Iterable[Listener],
    send: Callable[[Worker, int], kills.Outcome],
    monotonic: Callable[[], float],
) -> KillReport:
    """The slow part of a kill, off the loop: what comes before the signal, then the signal."""
    for listener in listeners:
        try:
            listener.before_kill(order)
        except Exception:  # whatever fails before it, the signal goes out
            log.exception("preparing the kill of pid %d failed; killing it anyway", order.worker.pid)
    outcome = send(order.worker, order.signal) if order.send else kills.Outcome.OBSERVED
    return KillReport(
        order.worker,
        order.scope_id,
        order.signal,
        outcome,
        monotonic() - order.deadline,
        order.escalation,
        order.rule,
        order.deadline_wall,
        tuple(order.frames),
        dict(order.collective) or None,
    )


@dataclass(frozen=True)
class FollowUp:
    deadline: float
    escalate: bool
    """True: SIGKILL the worker if still alive; False (it had SIGKILL): report it as unkillable."""


@dataclass
class Clock:
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


class TimerServer:
    def __init__(
        self,
        *,
        kill_signal: int | None = None,
        escalate_after: float = 10.0,
        listeners: Iterable[Listener] = (),
        clock: Clock | None = None,
        attach: Callable[[int, int | None], Worker] = processes.attach,
        send: Callable[[Worker, int], kills.Outcome] = kills.send,
        on_watch: Callable[[Worker], None] = lambda worker: None,
        on_unwatch: Callable[[Worker], None] = lambda worker: None,
        book: TimerBook | None = None,
        scope_metrics: bool = False,
        mode: Mode = Mode.ENFORCE,
        pod_condition: bool = False,
        dispatch: Dispatch | None = None,
        deadlines: Deadlines | None = None,
        after_signals: Callable[[], None] = lambda: None,
    ) -> None:
        self.kill_signal = kill_signal
        self.mode = mode
        self.pod_condition = pod_condition
        self.escalate_after = escalate_after
        self.scope_metrics = scope_metrics
        self.listeners = list(listeners)
        self._completions = [
            listener
            for listener in self.listeners
            if type(listener).block_completed is not Listener.block_completed
        ]
        self.clock = clock or Clock()
        self.book = book if book is not None else TimerBook()
        self.deadlines = deadlines or Deadlines()
        self.workers: dict[int, Worker] = {}
        self.stats = Stats()
        self._attach = attach
        self._send = send
        self._on_watch = on_watch
        self._on_unwatch = on_unwatch
        self._lines = LineSplitter()
        self.lock = threading.Lock()
        """Held by the loop while it changes anything; taken by readers in other threads (scrapes)."""
        self._follow_ups: dict[int, FollowUp] = {}
        """Signalled workers to look at again: escalate to SIGKILL, or report as unkillable."""
        self._dispatch = dispatch or self._inline
        self.killing: set[Worker] = set()
        """Workers whose kill is under way (ordered, report not yet back)."""
        self._after_signals = after_signals
        self._signalled: list[KillReport] = []
        """Kills carried out on the loop this turn, their bookkeeping still to do."""

    # -- requests ------------------------------------------------------------------------------

    def receive(self, chunk: bytes) -> None:
        """Take a chunk of the FIFO's byte stream, however it is cut."""
        lines, oversized = self._lines.feed(chunk)
        self.stats.malformed += oversized
        mono, wall = self.clock.monotonic(), self.clock.wall()
        first_error = None
        bad = oversized
        for line in lines:
            try:
                request = decode(line)
            except MalformedRequest as exc:
                bad += 1
                first_error = first_error or (exc, line)
                continue
            self.apply(request, mono, wall)
        self.stats.malformed += bad - oversized
        if bad:
            why, line = first_error or ("longer than any request can be", b"")
            log.warning(
                "skipped %d malformed line(s); first: %s",
                bad,
                why,
                extra={"malformed": bad, "example": line[:120].decode(errors="replace")},
            )

    def apply(self, request: Request, mono: float, wall: float) -> None:
        if request.expiration_time < 0:  # a release (Request.is_release, without a call per request)
            self.stats.releases += 1
            block = self.book.release(request.pid, request.scope_id)
            if block is not None:
                key = _key(self.workers.get(request.pid), block.scope_id)
                self.deadlines.completed(key, block.armed_at, block.requested, block.learned, mono)
                for listener in self._completions:
                    listener.block_completed(request.pid, block.armed_at)
            return
        self.stats.acquires += 1
        worker = self._worker(request.pid, request.starttime)
        if worker is None:
            return
        if request.dump_signal is not None:
            worker.dump_signal = request.dump_signal
        requested = mono + (request.expiration_time - wall)
        deadline, learned = self.deadlines.arm(_key(worker, request.scope_id), mono, requested)
        self.book.arm(
            request.pid,
            request.scope_id,
            deadline,
            request.signal,
            armed_at=mono,
            requested=requested,
            learned=learned,
        )

    def _worker(self, pid: int, claimed_starttime: int | None) -> Worker | None:
        worker = self.workers.get(pid)
        if worker is not None:
            if claimed_starttime is None or claimed_starttime == worker.starttime:
                return worker
            if claimed_starttime < worker.starttime:  # a late request of an earlier holder of the pid
                self.stats.stale += 1
                log.info("ignored a request from pid %d: it was sent by an earlier process", pid)
                return None
            # A new process holds the pid: the one we knew must have exited.
            self.worker_exited(pid)
        try:
            worker = self._attach(pid, claimed_starttime)
        except NotAttached as exc:
            self.stats.stale += 1
            log.info("ignored a request from pid %d: %s", pid, exc.reason, extra={"pid": pid})
            return None
        self.workers[pid] = worker
        self._on_watch(worker)
        return worker

    def restore(self, saved: Iterable[SavedTimer]) -> None:
        """Re-arm the timers a previous sidecar saved, for workers that are still the same processes."""
        for timer in saved:
            worker = self.workers.get(timer.pid)
            if worker is None or worker.starttime != timer.starttime:
                try:
                    worker = self._attach(timer.pid, timer.starttime)
                except NotAttached:
                    self.stats.restore_dropped += 1
                    continue
                self.workers[timer.pid] = worker
                self._on_watch(worker)
            learned = self.deadlines.learned(_key(worker, timer.scope_id))
            self.book.arm(
                timer.pid,
                timer.scope_id,
                timer.deadline,
                timer.signal,
                armed_at=timer.armed_at,
                requested=timer.requested,
                learned=learned,
            )
            self.stats.restored += 1
        if self.stats.restored or self.stats.restore_dropped:
            log.info(
                "restored timers from the state file",
                extra={"restored": self.stats.restored, "dropped": self.stats.restore_dropped},
            )

    def starttime_of(self, pid: int) -> int:
        worker = self.workers.get(pid)
        return worker.starttime if worker is not None else -1

    # -- deadlines -----------------------------------------------------------------------------

    def seconds_to_next_deadline(self) -> float | None:
        deadlines = [f.deadline for f in self._follow_ups.values()]
        if (deadline := self.book.next_deadline()) is not None:
            deadlines.append(deadline)
        return max(0.0, min(deadlines) - self.clock.monotonic()) if deadlines else None

    def expire_due(self) -> None:
        """Expire every timer whose deadline has passed, ordering each worker killed at most once."""
        now = self.clock.monotonic()
        ordered: set[int] = set()
        for timer in self.book.pop_due(now):
            action = on_expiry(self.mode, timer.signal, self.kill_signal, self.pod_condition)
            self._count_expiration(timer, action)
            worker = self.workers[timer.pid]
            if action is not None and worker not in self.killing and timer.pid not in ordered:
                ordered.add(timer.pid)
                self._order(worker, timer, action)
            key = _key(worker, timer.scope_id)
            if self.deadlines.expired(key, timer.armed_at, timer.deadline, timer.requested, now):
                for listener in self.listeners:
                    listener.adaptive_suspended(self.deadlines.budget.kills, self.deadlines.budget.window)
        for pid, follow_up in list(self._follow_ups.items()):
            if follow_up.deadline <= now:
                del self._follow_ups[pid]
                if follow_up.escalate:
                    escalation = Timer(pid, ESCALATION_SCOPE, follow_up.deadline, signals.SIGKILL)
                    sigkill = Action(signals.SIGKILL, send=True, condition=False)
                    self._order(self.workers[pid], escalation, sigkill)
                else:
                    self._report_unkillable(pid)
        if self._signalled:  # the turn's signals are out: now the bookkeeping of those sent here
            self._after_signals()
            reports, self._signalled = self._signalled, []
            for report in reports:
                self.killed(report)

    def _count_expiration(self, timer: Timer, action: Action | None) -> None:
        self.stats.expirations += 1
        if self.scope_metrics:
            by_scope = self.stats.expirations_by_scope
            scope = (
                timer.scope_id if timer.scope_id in by_scope or len(by_scope) < SCOPE_LABELS_MAX else "other"
            )
            by_scope[scope] += 1
        # signal: what this expiry sends (or, observing, would send); the client's own request may differ
        # (--kill-signal overrides it).
        sent = signal_name(action.signal) if action is not None else "none"
        log.info(
            "timer expired",
            extra={"pid": timer.pid, "scope": timer.scope_id, "signal": sent, "client_signal": timer.signal},
        )

    def _order(self, worker: Worker, timer: Timer, action: Action) -> None:
        mono, wall = self.clock.monotonic(), self.clock.wall()
        order = KillOrder(
            worker,
            timer.scope_id,
            action.signal,
            timer.deadline,
            wall - (mono - timer.deadline),
            mono,
            send=action.send,
            condition=action.condition,
            escalation=timer.scope_id == ESCALATION_SCOPE,
            rule=self.deadlines.explain(
                _key(worker, timer.scope_id), timer.armed_at, timer.requested, timer.learned
            ),
        )
        self.book.forget(worker.pid)
        self.killing.add(worker)
        for listener in self.listeners:
            listener.ordered(order)
        listeners, send, monotonic = tuple(self.listeners), self._send, self.clock.monotonic
        slow = any(listener.slow(order) for listener in listeners)
        (self._dispatch if slow else self._inline)(lambda: carry_out(order, listeners, send, monotonic))

    def _inline(self, job: Callable[[], KillReport]) -> None:
        self._signalled.append(job())

    def killed(self, report: KillReport) -> None:
        """A kill's report is back on the loop: count it, schedule what follows, tell the listeners."""
        worker, sig, outcome = report.worker, report.signal, report.outcome
        self.killing.discard(worker)
        current = self.workers.get(worker.pid) is worker
        if not current:  # it exited (or its pid was reused) while the kill was under way
            worker.close()
        elif outcome is not kills.Outcome.OBSERVED:
            self.book.forget(worker.pid)  # anything it armed while the kill was prepared
        if outcome is kills.Outcome.OBSERVED:
            self.stats.observed += 1
        elif outcome is kills.Outcome.DELIVERED:
            self.stats.kills[signal_name(sig)] += 1
            self.stats.escalations += report.escalation
            self.stats.last_kill_time = self.clock.wall()
            soft = sig != signals.SIGKILL and self.escalate_after > 0
            if current and (sig == signals.SIGKILL or soft):
                wait = self.escalate_after if soft else UNKILLABLE_AFTER
                self._follow_ups[worker.pid] = FollowUp(self.clock.monotonic() + wait, escalate=soft)
        else:
            self.stats.kill_failures[outcome.value] += 1
        for listener in self.listeners:
            listener.after_kill(report)

    def _report_unkillable(self, pid: int) -> None:
        self.stats.unkillable += 1
        log.error(
            "worker still alive %gs after SIGKILL: it is stuck in the kernel (uninterruptible sleep,"
            " e.g. on a dead NFS server or a hung device); only the node can free it",
            UNKILLABLE_AFTER,
            extra={"pid": pid, "cmdline": self.workers[pid].cmdline},
        )

    # -- workers -------------------------------------------------------------------------------

    def worker_exited(self, pid: int) -> None:
        """The worker's process is gone: disarm its timers and stop watching it."""
        worker = self.workers.pop(pid, None)
        self._follow_ups.pop(pid, None)
        held = self.book.forget(pid)
        if held:
            self.stats.worker_exits += 1
            log.info("worker exited holding %d timer(s)", len(held), extra={"pid": pid})
        if worker is not None:
            self._on_unwatch(worker)
            if worker not in self.killing:  # else its kill still holds the pidfd: closed in killed()
                worker.close()

    def close(self) -> None:
        for pid in list(self.workers):
            worker = self.workers.pop(pid)
            self._on_unwatch(worker)
            worker.close()


def _key(worker: Worker | None, scope_id: str) -> str:
    """What the deadline policy learns ``scope_id`` under for this worker: per container and scope."""
    return blocks.key(worker.container if worker is not None else "", scope_id)


def signal_name(sig: int) -> str:
    try:
        return signals.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"
