"""How the operator's memory, CPU and API load grow with the number of pods in the cluster.

Two real ``expiry-operator run`` processes (a leader and a follower, as the chart's two replicas)
against kmock holding N pods: 1% annotated but not injected (the unprotected-pod report finds them),
20% injected, the rest plain. Each operator logs in with its own token, so kmock's request log says
who asked for what. Printed per N: the time the leader took to list and process every pod, both
processes' resident memory (now and peak), the leader's CPU for the initial list, and each one's
requests to the API server (initial, then per minute while idle).

    python bench/operator_scaling.py                 # 0, 1000 and 5000 pods
    python bench/operator_scaling.py --pods 0 1000 5000 10000 --idle 30
"""

from __future__ import annotations

import argparse
import collections
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kmock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procfs import cpu_seconds, rss_bytes
from tests.operator.operator_harness import KubeApi, OperatorProcess, admission_review, make_tls
from tests.operator.pod_corpus import INJECTED_CASES

MIB = 1024 * 1024
TIMING = {"leaseDuration": 15, "renewDeadline": 10, "retryPeriod": 2}  # the defaults, stated


def _pods(count: int, injected_template: dict[str, Any]) -> list[dict[str, Any]]:
    plain = copy.deepcopy(INJECTED_CASES["jobset"])
    plain["metadata"]["annotations"] = {}
    pods = []
    for index in range(count):
        if index % 100 == 0:
            pod = copy.deepcopy(INJECTED_CASES["jobset"])  # opted in, never injected
        elif index % 5 == 0:
            pod = copy.deepcopy(injected_template)
        else:
            pod = copy.deepcopy(plain)
        pod["metadata"].update(name=f"pod-{index}", namespace=f"team-{index % 20}")
        pod["status"] = {"phase": "Running"}
        pods.append(pod)
    return pods


def _injected(operator: OperatorProcess) -> dict[str, Any]:
    import jsonpatch

    from tests.operator.operator_harness import decoded_patch

    pod = INJECTED_CASES["jobset"]
    reply = operator.post(json=admission_review(pod))
    return dict(jsonpatch.JsonPatch(decoded_patch(reply.json())).apply(copy.deepcopy(pod)))


def _requests_by(api: KubeApi) -> dict[str, collections.Counter[str]]:
    """kmock's request log: per token, counts of "ACTION resource" (e.g. "list v1/pods")."""

    def collect(emulator: Any) -> dict[str, collections.Counter[str]]:
        by: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for request in list(emulator):
            token = str(request.headers.get("Authorization", "")).removeprefix("Bearer ")
            action = str(request.action.value if request.action is not None else request.method.value).lower()
            action = {"fetch": "get", "update": "patch"}.get(
                action, action
            )  # kmock's words: PATCH is "update"
            resource = request.resource
            what = (
                f"{resource.group or 'core'}/{resource.plural}" if resource is not None else request.url.path
            )
            by[token][f"{action} {what}"] += 1
        return dict(by)

    return api.call(collect)


def _diff(after: collections.Counter[str], before: collections.Counter[str]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in sorted(after) if after[key] - before.get(key, 0)}


def _unprotected_total(operator: OperatorProcess) -> float:
    return sum(
        float(line.split()[-1])
        for line in operator.metrics().splitlines()
        if line.startswith("expiry_unprotected_pods{")
    )


def _settle(pid: int, quiet: float = 0.02) -> None:
    """Wait until ``pid`` uses under ``quiet`` of a core over half a second (done with the list)."""
    while True:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < quiet * 0.5:
            return


def measure(count: int, idle: float, workdir: Path) -> dict[str, Any]:
    tls = make_tls(workdir / "tls")
    with KubeApi() as api:
        operators = {}
        for name in ("leader", "follower"):
            operator = OperatorProcess(
                api,
                tls,
                workdir / name,
                config={"leaderElection": {"leaseNamespace": "expiry-system", **TIMING}},
                env={"EXPIRY_POD_NAME": name},
            )
            kubeconfig = workdir / name / "kubeconfig"
            kubeconfig.write_text(kubeconfig.read_text().replace("not-checked", name))
            operators[name] = operator
        leader, follower = operators["leader"], operators["follower"]
        with leader:
            injected = _injected(leader)
            leader.stop()  # restarted below, with the pods in place: the initial list is what we measure
        pods = _pods(count, injected)

        def store(emulator: Any) -> None:  # straight into kmock's store: the creation is not measured
            resource = kmock.resource("v1/pods")
            for pod in pods:
                emulator.objects[resource, pod["metadata"]["namespace"], pod["metadata"]["name"]] = pod

        api.call(store)
        expected = count // 100 + (1 if count % 100 else 0) if count else 0
        before = _requests_by(api)
        with leader:
            started = time.monotonic()
            cpu_start = cpu_seconds(leader.pid)
            while (
                _unprotected_total(leader) < expected or "expiry_operator_leading 1.0" not in leader.metrics()
            ):
                time.sleep(0.05)
            listed = time.monotonic() - started
            _settle(leader.pid)
            cpu = cpu_seconds(leader.pid) - cpu_start
            with follower:
                time.sleep(3)  # the follower logs in and finds the lease held
                initial = _requests_by(api)
                time.sleep(idle)
                after = _requests_by(api)
                return {
                    "pods": count,
                    "unprotected": expected,
                    "list_and_process_s": listed,
                    "leader_cpu_s": cpu,
                    "leader_rss_mib": rss_bytes(leader.pid) / MIB,
                    "leader_peak_mib": rss_bytes(leader.pid, "VmHWM") / MIB,
                    "follower_rss_mib": rss_bytes(follower.pid) / MIB,
                    "follower_peak_mib": rss_bytes(follower.pid, "VmHWM") / MIB,
                    "initial": {
                        name: _diff(
                            initial.get(name, collections.Counter()), before.get(name, collections.Counter())
                        )
                        for name in operators
                    },
                    "idle_per_minute": {
                        name: {
                            key: round(value * 60 / idle, 1)
                            for key, value in _diff(
                                after.get(name, collections.Counter()),
                                initial.get(name, collections.Counter()),
                            ).items()
                        }
                        for name in operators
                    },
                }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[0, 1000, 5000])
    parser.add_argument("--idle", type=float, default=20, help="seconds of idle API load to count")
    args = parser.parse_args(argv)
    for count in args.pods:
        with tempfile.TemporaryDirectory(prefix="expiry-scaling-") as scratch:
            row = measure(count, args.idle, Path(scratch))
        print(
            f"{row['pods']:>6} pods ({row['unprotected']} unprotected): leader reported them after "
            f"{row['list_and_process_s']:.1f} s; {row['leader_cpu_s']:.2f} s CPU for the list; RSS leader "
            f"{row['leader_rss_mib']:.0f} MiB (peak {row['leader_peak_mib']:.0f}), follower "
            f"{row['follower_rss_mib']:.0f} MiB (peak {row['follower_peak_mib']:.0f})"
        )
        for name in ("leader", "follower"):
            print(f"    {name:<8} initial requests: {row['initial'][name]}")
            print(f"    {name:<8} idle, per minute: {row['idle_per_minute'][name]}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
