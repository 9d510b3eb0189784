"""The operator's own Prometheus metrics (kopf exports none)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from expiry_operator import __version__

# no `_created` series: a sample per counter and histogram that nobody queries
disable_created_metrics()  # type: ignore[no-untyped-call]

ADMISSION_RESULTS = ("injected", "skipped", "denied", "error")

admissions = Counter(
    "expiry_admissions_total",
    "Pod admission reviews answered, by result (injected, skipped, denied, error)",
    ["result"],
)
admission_duration = Histogram(
    "expiry_admission_duration_seconds",
    "Time to answer one admission review, from the parsed request to the response",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
unprotected_pods = Gauge(
    "expiry_unprotected_pods",
    "Pods opted in with expiry.io/enabled (or misspelling it) that run without the injected sidecar",
    ["pod_namespace"],
)
webhook_certificate_expiry = Gauge(
    "expiry_webhook_certificate_expiry_timestamp_seconds",
    "notAfter of the serving certificate the webhook currently serves, in Unix seconds",
)
hang_incidents = Counter(
    "expiry_hang_incidents_total",
    "Hang incidents reported (one HangDetected Event each), by the pods' namespace and workload kind",
    ["pod_namespace", "kind"],
)

leading = Gauge(
    "expiry_operator_leading",
    "1 while this replica holds the Lease and runs the pod watches (exactly one replica should)",
)
build_info = Gauge("expiry_build_info", "expiry build: its version and component", ["version", "component"])
build_info.labels(version=__version__, component="operator").set(1)

for _result in ADMISSION_RESULTS:
    admissions.labels(result=_result)
