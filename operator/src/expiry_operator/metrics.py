"""The operator's own Prometheus metrics (kopf exports none)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from expiry_operator import __version__

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
    "Pods annotated expiry.io/enabled=true that run without the injected sidecar",
    ["namespace"],
)

leading = Gauge(
    "expiry_operator_leading",
    "1 while this replica holds the Lease and runs the pod watches (exactly one replica should)",
)
build_info = Gauge("expiry_build_info", "expiry-operator build", ["version"])
build_info.labels(version=__version__).set(1)

for _result in ADMISSION_RESULTS:
    admissions.labels(result=_result)
