"""One hang of a big job, end to end: N pods x W workers hang in one collective -> one HangDetected Event.

Starts kmock and the real ``expiry-operator run`` (its defaults: hang reports and the unprotected-pod
report on, ``hangReports.window`` 5 s), creates the pods of one JobSet, then posts one sidecar kill
Event per pod (the contract: all W workers of a pod in one Event's ``expiry.io/kills``) as fast as
this process can, every worker waiting in all_reduce except one rank stuck loading data. Prints:

- the delay from the last kill Event accepted by the API to the HangDetected Event being stored,
  and that delay minus the window (what the operator adds to the wait it is configured for);
- the operator's CPU seconds from the first kill Event to the report, its RSS before and after and
  its peak RSS (VmHWM);
- the Events the operator wrote for the hang (HangDetected count), and whether it named the odd rank.

kmock and the load generator (this process) share the machine's cores with the operator.

    .venv/bin/python bench/incidents.py [--pods 1000] [--workers 8] [--window 5] [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.operator.operator_harness import KubeApi, OperatorProcess, kill, kill_event, make_tls  # noqa: E402

NS = "ml"
JOBSET = "llama"
WAIT = ["train.py:30 in step", "distributed_c10d.py:2050 in all_reduce"]  # innermost last
STUCK = ["train.py:28 in step", "data.py:41 in next_batch"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def _pod(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{JOBSET}-workers-{index}",
            "namespace": NS,
            "uid": f"pod-uid-{index}",
            "labels": {
                "jobset.sigs.k8s.io/jobset-name": JOBSET,
                "jobset.sigs.k8s.io/jobset-uid": "jobset-uid",
                "batch.kubernetes.io/job-name": f"{JOBSET}-workers-{index}",
                "expiry.io/injected": "true",
            },
            "annotations": {"expiry.io/enabled": "true", "expiry.io/status": "injected"},
        },
        "spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]},
        "status": {"phase": "Running"},
    }


def measure(*, pods: int, workers: int, window: float) -> dict[str, Any]:
    odd_rank = pods * workers // 2 + 1
    with tempfile.TemporaryDirectory(prefix="bench-incidents-") as directory:
        config = {"hangReports": {"window": window}}
        workdir = Path(directory)
        with (
            KubeApi() as api,
            OperatorProcess(api, make_tls(workdir / "tls"), workdir, config=config) as operator,
        ):
            api.forget_requests_beyond(16)
            api_url = api.url
            session = requests.Session()
            for index in range(pods):
                session.post(
                    f"{api_url}/api/v1/namespaces/{NS}/pods", json=_pod(index), timeout=10
                ).raise_for_status()
            time.sleep(2)  # the operator's pod watch catches up (it would have, long before a hang)
            rss_before = _status_mib(operator.pid, "VmRSS")
            deadline = time.time()
            bodies = []
            for index in range(pods):
                kills = [
                    kill(
                        rank,
                        "train.py:25",
                        STUCK if rank == odd_rank else WAIT,
                        deadline=deadline + rank * 1e-4,
                    )
                    for rank in range(index * workers, (index + 1) * workers)
                ]
                bodies.append(json.dumps(kill_event(_pod(index), kills)))
            cpu_start = _cpu_seconds(operator.pid)
            url = f"{api_url}/apis/events.k8s.io/v1/namespaces/{NS}/events"

            local = threading.local()

            def post(body: str) -> float:
                if not hasattr(local, "session"):
                    local.session = requests.Session()
                headers = {"Content-Type": "application/json"}
                local.session.post(url, data=body, headers=headers, timeout=30).raise_for_status()
                return time.monotonic()

            first = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                last = max(pool.map(post, bodies))
            reports: list[dict[str, Any]] = []
            while not reports and time.monotonic() - last < window + 120:
                reply = session.get(f"{api_url}/api/v1/namespaces/{NS}/events", timeout=10)
                reports = [e for e in reply.json()["items"] if e["reason"] == "HangDetected"]
                if not reports:
                    time.sleep(0.02)
            reported = time.monotonic()
            cpu = _cpu_seconds(operator.pid) - cpu_start
            time.sleep(window + 1)  # anything more it would write for this hang
            reply = session.get(f"{api_url}/api/v1/namespaces/{NS}/events", timeout=10)
            written = [e for e in reply.json()["items"] if e["reason"] == "HangDetected"]
            message = written[0]["message"] if written else ""
            return {
                "pods": pods,
                "workers": pods * workers,
                "posting_s": last - first,
                "delay_s": reported - last,
                "beyond_window_s": reported - last - window,
                "operator_cpu_s": cpu,
                "rss_before_mib": rss_before,
                "rss_after_mib": _status_mib(operator.pid, "VmRSS"),
                "rss_peak_mib": _status_mib(operator.pid, "VmHWM"),
                "hang_events": len(written),
                "named_odd_rank": float(f"rank {odd_rank} " in message),
                "message_bytes": len(message.encode()),
                "message": message,
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8, help="workers per pod (one kill Event per pod)")
    parser.add_argument("--window", type=float, default=5.0, help="hangReports.window, seconds")
    parser.add_argument("--quick", action="store_true", help="50 pods")
    args = parser.parse_args(argv)
    f = measure(pods=50 if args.quick else args.pods, workers=args.workers, window=args.window)
    print(f"one collective hang: {f['workers']:.0f} workers in {f['pods']:.0f} pods, one kill Event per pod")
    print(f"  kill Events posted in {f['posting_s']:.2f} s ({f['pods'] / f['posting_s']:.0f}/s)")
    print(
        f"  last kill Event -> HangDetected: {f['delay_s']:.2f} s"
        f" (window {args.window:g} s; beyond it: {f['beyond_window_s']:.2f} s)"
    )
    print(f"  operator CPU, first kill Event -> report: {f['operator_cpu_s']:.2f} s")
    print(
        f"  operator RSS: {f['rss_before_mib']:.1f} MiB before, {f['rss_after_mib']:.1f} MiB after,"
        f" peak {f['rss_peak_mib']:.1f} MiB"
    )
    print(
        f"  Events written for the hang: {f['hang_events']:.0f} HangDetected"
        f" ({f['message_bytes']:.0f} bytes); odd rank named: {'yes' if f['named_odd_rank'] else 'NO'}"
    )
    print(f"  message: {f['message']}")
    print(f"load average (other processes share the cores): {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
