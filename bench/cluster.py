"""The operator's figures on the real API server of ``scripts/cluster`` (not kmock): run it after
``scripts/cluster up`` on a quiet machine.

- webhook: pod creates (server-side dry run, so nothing is stored or scheduled) through the API server,
  one at a time and 50 at once; opted-in pods (the API server calls the webhook over TLS) beside plain
  ones (it does not), so the difference is what the webhook adds; p50/p99 as the client sees them.
- scaling: N pods (20 % opted in and injected by the webhook, 1 % opted in with the sidecar removed,
  the rest plain) on the kwok node; the leader's and the follower's RSS and CPU after the creates, and
  the kube-apiserver's count of the operator's requests (its ``apiserver_request_total`` by user agent
  is not broken down by user, so requests are read from the operator's own side: none here).
- incidents: P pods x W workers of one JobSet hang in one collective: one kill Event per pod posted as
  fast as this process can; the delay from the last Event to the leader's HangDetected Event.

    .venv/bin/python -m bench.cluster [--only webhook scaling incidents] [--pods 10000] [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.incidents import STUCK, WAIT  # noqa: E402
from bench.procfs import cpu_seconds, rss_bytes  # noqa: E402
from bench.stats import median, percentile  # noqa: E402
from tests.operator.operator_harness import kill, kill_event  # noqa: E402
from tests.support import cluster as local_cluster  # noqa: E402
from tests.support.hostprocs import processes  # noqa: E402
from tests.support.kube import Kube, Obj, wait_for  # noqa: E402

MIB = 1024 * 1024
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def pod(name: str, opted_in: bool, *, kwok: bool = False, labels: dict[str, str] | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "trainer", "image": "trainer:1", "command": ["train"]}]}
    if kwok:
        spec.update(nodeName=local_cluster.KWOK_NODE, tolerations=[KWOK_TOLERATION])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": {"expiry.io/enabled": "true"} if opted_in else {},
        },
        "spec": spec,
    }


def namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(lambda: kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30, "default SA")
    return name


def operator_processes() -> dict[str, int]:
    """Pod name -> host pid of each operator process the node runs."""
    found = {}
    for pid, environ in processes(b"EXPIRY_POD_NAME=", b"expiry-operator"):
        name = next(v for v in environ if v.startswith(b"EXPIRY_POD_NAME="))
        found[name.split(b"=", 1)[1].decode()] = pid
    return found


def leader(kube: Kube) -> str:
    lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{local_cluster.NAMESPACE}/leases/expiry")
    return str(lease["spec"]["holderIdentity"])


# -- webhook ------------------------------------------------------------------------------------------


def webhook(kube: Kube, creates: int) -> list[tuple[str, str]]:
    ns = namespace(kube, "bench-webhook")
    local = threading.local()

    def create(index_opted: tuple[int, bool]) -> float:
        index, opted_in = index_opted
        if not hasattr(local, "kube"):
            local.kube = Kube.from_kubeconfig(local_cluster.kubeconfig())
        started = time.perf_counter()
        local.kube.create(f"/api/v1/namespaces/{ns}/pods", pod(f"p{index}", opted_in), dryRun="All")
        return time.perf_counter() - started

    rows = []
    for concurrency in (1, 50):
        for opted_in in (True, False):
            work = [(i, opted_in) for i in range(creates)]
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(create, work[: concurrency * 2]))  # connections and caches warm
                latencies = list(pool.map(create, work))
            what = "opted in (webhook called)" if opted_in else "plain (no webhook)"
            rows.append(
                (
                    f"pod create, {concurrency} concurrent, {what}",
                    f"p50 {median(latencies) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms",
                )
            )
    kube.delete(f"/api/v1/namespaces/{ns}")
    return rows


# -- scaling ------------------------------------------------------------------------------------------


def scaling(kube: Kube, count: int) -> list[tuple[str, str]]:
    ns = namespace(kube, "bench-scaling")
    processes = operator_processes()
    lead = leader(kube)
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    local = threading.local()

    def create(index: int) -> None:
        if not hasattr(local, "kube"):
            local.kube = Kube.from_kubeconfig(local_cluster.kubeconfig())
        body = pod(f"p{index}", opted_in=index % 5 == 0 or index % 100 == 1, kwok=True)
        local.kube.create(f"/api/v1/namespaces/{ns}/pods", body)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    took = time.monotonic() - started
    time.sleep(10)  # the leader's watch catches up
    rows = [
        (
            f"{count} pods created through the API server (20 % through the webhook)",
            f"{took:.0f} s ({count / took:.0f} pods/s)",
        )
    ]
    for name, pid in processes.items():
        role = "leader" if name == lead else "follower"
        rows.append((f"operator {role}: RSS with {count} pods", f"{rss_bytes(pid) / MIB:.1f} MiB"))
        rows.append(
            (f"operator {role}: CPU while they were created", f"{cpu_seconds(pid) - cpu_before[name]:.1f} s")
        )
    kube.delete(f"/api/v1/namespaces/{ns}")
    return rows


# -- incidents ----------------------------------------------------------------------------------------


def incidents(kube: Kube, pods: int, workers: int, window: float = 5.0) -> list[tuple[str, str]]:
    ns = namespace(kube, "bench-incidents")
    jobset, jobset_uid = "llama", str(uuid.uuid4())
    made: list[Obj] = []
    for index in range(pods):
        labels = {
            "jobset.sigs.k8s.io/jobset-name": jobset,
            "jobset.sigs.k8s.io/jobset-uid": jobset_uid,
            "batch.kubernetes.io/job-name": f"{jobset}-workers-{index}",
        }
        made.append(
            kube.create(
                f"/api/v1/namespaces/{ns}/pods", pod(f"{jobset}-{index}", False, kwok=True, labels=labels)
            )
        )
    time.sleep(3)
    odd_rank = pods * workers // 2 + 1
    deadline = time.time()
    bodies = []
    for index, body in enumerate(made):
        kills = [
            kill(rank, "train.py:25", STUCK if rank == odd_rank else WAIT, deadline=deadline + rank * 1e-4)
            for rank in range(index * workers, (index + 1) * workers)
        ]
        event = kill_event(body, kills)
        event["metadata"].pop("uid", None)
        event["regarding"]["uid"] = body["metadata"]["uid"]
        bodies.append(event)
    local = threading.local()

    def post(event: Obj) -> float:
        if not hasattr(local, "kube"):
            local.kube = Kube.from_kubeconfig(local_cluster.kubeconfig())
        local.kube.create(f"/apis/events.k8s.io/v1/namespaces/{ns}/events", copy.deepcopy(event))
        return time.monotonic()

    lead_pid = operator_processes()[leader(kube)]
    cpu_start = cpu_seconds(lead_pid)
    first = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        last = max(pool.map(post, bodies))

    def reported() -> list[Obj]:
        return [
            e
            for e in kube.items(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
            if e.get("reason") == "HangDetected"
        ]

    found = wait_for(reported, window + 120, "HangDetected", every=0.05)
    delay = time.monotonic() - last
    cpu = cpu_seconds(lead_pid) - cpu_start
    time.sleep(window + 1)
    written = reported()
    named = f"rank {odd_rank} " in json.dumps(found[0])
    kube.delete(f"/api/v1/namespaces/{ns}")
    return [
        (
            f"{pods} kill Events ({pods * workers} workers) posted",
            f"{last - first:.1f} s ({pods / (last - first):.0f}/s)",
        ),
        ("last kill Event -> HangDetected", f"{delay:.2f} s (window {window:g} s)"),
        ("leader CPU, first kill Event -> report", f"{cpu:.2f} s"),
        ("HangDetected Events written / odd rank named", f"{len(written)} / {'yes' if named else 'NO'}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["webhook", "scaling", "incidents"],
        default=["webhook", "scaling", "incidents"],
    )
    parser.add_argument("--pods", type=int, default=10_000, help="pods for the scaling figure")
    parser.add_argument("--creates", type=int, default=500, help="pod creates per webhook row")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    if not local_cluster.is_up():
        print("the local cluster is not running: scripts/cluster up", file=sys.stderr)
        return 2
    kube = Kube.from_kubeconfig(local_cluster.kubeconfig())
    rows: list[tuple[str, str]] = []
    if "webhook" in args.only:
        rows += webhook(kube, 50 if args.quick else args.creates)
    if "scaling" in args.only:
        rows += scaling(kube, 200 if args.quick else args.pods)
    if "incidents" in args.only:
        rows += incidents(kube, 20 if args.quick else 1000, 8)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    version = local_cluster.controlplane.kubernetes_version()
    print(f"kube-apiserver {version}; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__: list[Any] = []
