"""Prometheus metrics, read from the server's own counters at scrape time.

The hot path only bumps plain integers in :class:`~expiry_sidecar.server.Stats`; this collector
turns them into metric families when Prometheus asks, so counting costs nothing per request.
Label values are bounded: request kinds, signal names, failure reasons. Scope ids are unbounded
and never become labels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from expiry_sidecar import __version__, kills
from expiry_sidecar.blocks import PROMETHEUS_BOUNDS, BlockStats, ScopeStats, split
from expiry_sidecar.server import KillReport, Listener, TimerServer, signal_name

# no `_created` series: a sample per counter and histogram that nobody queries
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FAILURE_REASONS = tuple(
    o.value for o in kills.Outcome if o not in (kills.Outcome.DELIVERED, kills.Outcome.OBSERVED)
)


PLAIN_COUNTERS = (
    # (metric name without _total, help, Stats attribute)
    ("expiry_malformed_requests", "Lines that were not a valid request", "malformed"),
    (
        "expiry_stale_requests",
        "Acquires whose writer had exited, or whose pid was reused, before they were read",
        "stale",
    ),
    ("expiry_expirations", "Timers that passed their deadline", "expirations"),
    (
        "expiry_observed_expirations",
        "Expirations that --mode observe reported instead of killing (the kills enforce would have made)",
        "observed",
    ),
    ("expiry_escalations", "SIGKILLs sent after a softer signal went unheeded", "escalations"),
    ("expiry_worker_exits", "Workers that exited while holding armed timers", "worker_exits"),
    (
        "expiry_unkillable_workers",
        "Workers still alive 30 s after SIGKILL (stuck in uninterruptible sleep)",
        "unkillable",
    ),
    ("expiry_state_restored_timers", "Timers taken over from the state file at start", "restored"),
    (
        "expiry_state_dropped_timers",
        "Saved timers dropped at start because their worker had exited meanwhile",
        "restore_dropped",
    ),
    ("expiry_state_errors", "State files found unusable, or writes to them that failed", "state_errors"),
)


class ServerCollector(Collector):
    def __init__(self, server: TimerServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        with self.server.lock:  # the loop thread changes what is read here
            families = list(self._families())
        yield from families

    def _families(self) -> Iterator[Metric]:
        stats, server = self.server.stats, self.server
        yield _info(__version__)
        yield GaugeMetricFamily("expiry_timers_active", "Timers currently armed", value=len(server.book))
        yield GaugeMetricFamily(
            "expiry_workers_watched",
            "Worker processes the sidecar holds a handle on",
            value=len(server.workers),
        )
        remaining = server.seconds_to_next_deadline()
        yield GaugeMetricFamily(
            "expiry_next_deadline_seconds",
            "Seconds until the nearest armed deadline (+Inf when no timer is armed)",
            value=math.inf if remaining is None else remaining,
        )
        yield GaugeMetricFamily(
            "expiry_last_kill_timestamp_seconds",
            "Unix time of the last signal delivered",
            value=stats.last_kill_time,
        )
        for name, documentation, attribute in PLAIN_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(stats, attribute))
        yield _labelled(
            "expiry_requests",
            "Well-formed requests by kind",
            "kind",
            {"acquire": stats.acquires, "release": stats.releases},
        )
        # The signals this sidecar sends by default exist from the start at 0, so that rate() and
        # increase() see a pod's first kill (a series born at 1 has no increase to show).
        expected = {"SIGKILL"} | ({signal_name(server.kill_signal)} if server.kill_signal else set())
        yield _labelled(
            "expiry_kills",
            "Signals delivered to workers",
            "signal",
            {name: stats.kills[name] for name in sorted(expected | set(stats.kills))},
        )
        yield _labelled(
            "expiry_kill_failures",
            "Kills refused or failed",
            "reason",
            {reason: stats.kill_failures[reason] for reason in FAILURE_REASONS},
        )
        if server.scope_metrics:
            yield _labelled(
                "expiry_timer_expirations",
                "Timers that passed their deadline, by scope (--scope-metrics)",
                "scope",
                dict(sorted(stats.expirations_by_scope.items())),
            )
        blocks = server.deadlines.stats
        yield CounterMetricFamily(
            "expiry_blocks_over_adaptive_deadline",
            "Blocks that finished after running past their adaptive deadline (adaptive would have"
            " killed them)",
            value=blocks.over_adaptive,
        )
        yield CounterMetricFamily(
            "expiry_adaptive_expirations",
            "Blocks that expired at their adaptive deadline (killed, or observed): each one held its scope"
            " at requested deadlines and was charged to the false-kill budget",
            value=server.deadlines.adaptive_expirations,
        )
        yield GaugeMetricFamily(
            "expiry_adaptive_suspended",
            "1 once the pod spent its false-kill budget: requested deadlines for every block from then on",
            value=int(server.deadlines.suspended),
        )
        yield _block_durations(blocks, server.scope_metrics)


def _labelled(name: str, documentation: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in counts.items():
        family.add_metric([value], count)
    return family


def _block_durations(blocks: BlockStats, by_scope: bool) -> HistogramMetricFamily:
    """Completed blocks' durations: the whole pod, or (``--scope-metrics``) each tracked scope, its
    containers summed (one series per scope id, as the expirations' ``scope`` label), and the pool as
    ``other`` (blocks.MAX_SCOPES bounds the series as SCOPE_LABELS_MAX does)."""
    family = HistogramMetricFamily(
        "expiry_block_duration_seconds",
        "Durations of completed blocks (acquire to release)",
        labels=["scope"] if by_scope else None,
    )
    series: list[tuple[list[str], ScopeStats]] = (
        [([scope], stats) for scope, stats in sorted(_by_scope(blocks).items())]
        + [(["other"], blocks.pooled)]
        if by_scope
        else [([], blocks.total())]
    )
    for labels, stats in series:
        buckets = [
            (repr(round(bound, 6)), float(n))
            for bound, n in zip(PROMETHEUS_BOUNDS, stats.cumulative(), strict=True)
        ]
        family.add_metric(labels, [*buckets, ("+Inf", float(stats.count))], stats.total)
    return family


def _by_scope(blocks: BlockStats) -> dict[str, ScopeStats]:
    """Each tracked scope id's statistics, its containers' merged."""
    merged: dict[str, ScopeStats] = {}
    for learned, stats in blocks.scopes.items():
        scope = split(learned)[1]
        if scope in merged:
            merged[scope].merge(stats)
        else:
            merged[scope] = ScopeStats.from_json(stats.to_json())
    return merged


def _info(version: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "expiry_build_info", "expiry build: its version and component", labels=["version", "component"]
    )
    family.add_metric([version, "sidecar"], 1)
    return family


class KillLatency(Listener):
    """The kill-latency histogram: deadline to signal delivered."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "expiry_kill_latency_seconds",
            "Seconds from a timer's deadline to its signal being delivered",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def after_kill(self, report: KillReport) -> None:
        if report.outcome is kills.Outcome.DELIVERED:
            self.histogram.observe(max(0.0, report.lateness))


class ResultCounter(Collector):
    """One counter family labelled ``result``, read at scrape time from an optional listener's counts."""

    def __init__(self, name: str, documentation: str, results: tuple[str, ...], counts: Counter[str]) -> None:
        self.name, self.documentation, self.results, self.counts = name, documentation, results, counts

    def collect(self) -> Iterator[Metric]:
        yield _labelled(self.name, self.documentation, "result", {r: self.counts[r] for r in self.results})


def stack_dump_counter(counts: Counter[str]) -> ResultCounter:
    return ResultCounter(
        "expiry_stack_dumps", "Stacks of stuck workers captured before the kill", ("ok", "failed"), counts
    )


def event_counter(counts: Counter[str]) -> ResultCounter:
    return ResultCounter(
        "expiry_events", "Kubernetes Events about kills, by result", ("recorded", "failed"), counts
    )


def condition_counter(counts: Counter[str]) -> ResultCounter:
    return ResultCounter(
        "expiry_pod_conditions",
        "Pod conditions (expiry.io/WorkerHung) set before a kill, by result",
        ("patched", "failed", "timeout"),
        counts,
    )


def profile_counter(counts: Counter[str]) -> ResultCounter:
    return ResultCounter(
        "expiry_profile_writes",
        "Writes of the workload's DeadlineProfile, by result",
        ("written", "failed"),
        counts,
    )


def make_registry(server: TimerServer) -> CollectorRegistry:
    """A registry with the server's metrics; the kill-latency listener is attached to the server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    server.listeners.append(KillLatency(registry))
    return registry
