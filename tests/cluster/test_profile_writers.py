"""The sidecars' DeadlineProfile writes on the real API server, under their own ServiceAccounts.

The RBAC is the chart's (``deadlineProfiles.bindings``, rendered by the real helm) judged by the real
authorizer; each writer authenticates with a TokenRequest token of its ServiceAccount (as the kubelet
gives a pod), and the write is the sidecar's own code: a real ``expiry-sidecar serve`` fed by a real
worker, or its ``ProfileSync`` over its ``ApiWriter`` and ``KubeClient``.

- A bound account writes its workload's profile; an unbound one is refused (403): said in the log,
  counted (``expiry_profile_writes_total{result="failed"}``), and the state file still holds what the
  pod learned.
- Two writers racing on one profile: the loser's write carries the resourceVersion it read, so the API
  server answers 409 (on the create: AlreadyExists; on the patch: Conflict); it reads again, adds its
  blocks to the winner's, and the profile holds both, each block once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from expiry_sidecar import kubecreds, profile
from expiry_sidecar.apiwriter import ApiWriter, PodRef
from expiry_sidecar.blocks import BlockStats, ScopeStats
from expiry_sidecar.deadlines import Policy
from expiry_sidecar.kubeclient import ApiError, Body, KubeClient
from expiry_sidecar.metrics import profile_counter
from expiry_sidecar.profile_sync import ProfileSync
from expiry_sidecar.state import read_blocks
from tests.cluster.conftest import Cluster
from tests.support import cluster as local_cluster
from tests.support.kube import documents, wait_for
from tests.support.sidecar import free_port, serve_command

ROOT = Path(__file__).resolve().parents[2]
BOUND, UNBOUND = "trainer", "stranger"


@dataclass
class Accounts:
    """A namespace with two ServiceAccounts, the chart's profile RBAC bound to one of them."""

    cluster: Cluster
    namespace: str
    workdir: Path

    def kubeconfig(self, account: str) -> Path:
        """A kubeconfig holding a TokenRequest token of ``account`` (what kubecreds reads)."""
        token = self.cluster.kube.token(self.namespace, account)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.cluster.kube.server,
                        "certificate-authority": str(self.cluster.kube.session.verify),
                    },
                }
            ],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": "test", "user": account}}],
            "current-context": account,
        }
        path = self.workdir / f"{account}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def profile(self, name: str) -> dict[str, Any] | None:
        path = profile.path(self.namespace, name)
        return self.cluster.kube.get(path) if self.cluster.kube.exists(path) else None


@pytest.fixture
def accounts(cluster: Cluster, tmp_path: Path) -> Iterator[Accounts]:
    namespace = cluster.namespace("writers")
    for account in (BOUND, UNBOUND):
        cluster.kube.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        )
    release = f"writers-{uuid.uuid4().hex[:6]}"  # its own ClusterRole, beside the session's release
    rendered = subprocess.run(
        [
            str(local_cluster.HELM),
            "template",
            release,
            str(ROOT / "charts/expiry"),
            "--show-only",
            "templates/sidecar-deadline-profiles-rbac.yaml",
            "--set",
            "deadlineProfiles.enabled=true",
            "--set",
            f"deadlineProfiles.bindings[0].namespace={namespace}",
            "--set",
            f"deadlineProfiles.bindings[0].serviceAccount={BOUND}",
            "--set",
            "crds.install=false",  # the CRD and its view/edit roles are the session release's
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = list(documents(rendered))
    assert sorted(obj["kind"] for obj in objects) == ["ClusterRole", "RoleBinding"]
    cluster.kube.apply_all(objects)
    (role,) = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "ClusterRole"]
    try:
        yield Accounts(cluster, namespace, tmp_path)
    finally:
        cluster.kube.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")


def learn(fifo: Path, blocks: int) -> None:
    """A real worker (expiry's client) runs ``blocks`` quick blocks of scope ``step``."""
    trace = fifo.with_name("trace.json")
    trace.write_text(json.dumps([["step", 0.01, 600.0]] * blocks))
    worker = subprocess.run(
        [sys.executable, "-m", "bench.replay", str(trace), "0"],
        cwd=ROOT,
        env={"TORCHELASTIC_TIMER_FILE": str(fifo), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr


def serve(accounts: Accounts, account: str, pod: str, name: str, blocks: int) -> list[dict[str, Any]]:
    """A real sidecar of ``pod`` under ``account``'s token: a worker's blocks, then SIGTERM (on which it
    writes the profile). Its JSON log lines."""
    workdir = accounts.workdir / pod
    workdir.mkdir()
    fifo, port, log = workdir / "timer.fifo", free_port(), workdir / "sidecar.log"
    flags = ["--deadline-profile", name, "--state-file", str(workdir / "state.json")]
    env = {
        **os.environ,
        "KUBECONFIG": str(accounts.kubeconfig(account)),
        "EXPIRY_POD_NAME": pod,
        "EXPIRY_POD_NAMESPACE": accounts.namespace,
    }
    with log.open("w") as out:
        sidecar = subprocess.Popen(
            serve_command(fifo, port, *flags), stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_for(lambda: _ready(port), 30, "the sidecar ready")
        learn(fifo, blocks)
        wait_for(lambda: _releases(port) >= blocks, 30, "the blocks at the sidecar")
    finally:
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(timeout=30) == 0
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok
    except requests.ConnectionError:
        return False


def _releases(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('expiry_requests_total{kind="release"}')
    )


def test_a_bound_service_account_writes_its_profile(accounts: Accounts) -> None:
    logs = serve(accounts, BOUND, "train-0", "job-train", blocks=6)
    written = accounts.profile("job-train")
    assert written is not None, [e["message"] for e in logs]
    assert written["status"]["blocks"] == 6 and written["status"]["lastWriter"] == "train-0"
    assert not [e for e in logs if e["message"].startswith("could not")]


def test_an_unbound_service_account_is_refused_and_its_pod_keeps_what_it_learned(accounts: Accounts) -> None:
    logs = serve(accounts, UNBOUND, "other-0", "job-other", blocks=4)
    assert accounts.profile("job-other") is None
    # The read at start is refused first: said once for the outage; the write on SIGTERM is then counted.
    (said,) = [e for e in logs if e["message"].startswith("could not") and "Profile" in e["message"]]
    assert "answered 403 Forbidden" in said["reason"] and said["level"] == "warning"
    permission = "needs RBAC permission to get, create and patch expiry.io deadlineprofiles"
    assert f"{permission} in namespace {accounts.namespace}" in said["reason"]
    state = accounts.workdir / "other-0/state.json"
    assert read_blocks(state).scopes["step"].count == 4, "the local state still rules"


def stats(*durations: tuple[str, float]) -> dict[str, ScopeStats]:
    learned = BlockStats()
    for scope, seconds in durations:
        learned.record(scope, seconds, 600.0)
    return learned.scopes


def exact(scopes: dict[str, ScopeStats]) -> dict[str, tuple[Any, ...]]:
    """What adds up exactly (counts, buckets) or is a maximum; not the float sum, whose order varies."""
    return {k: (v.count, v.longest, v.requested, v.buckets, v.killed_after) for k, v in scopes.items()}


class Racing:
    """The real KubeClient, with a hook run once before the next write (POST or PATCH), and the error
    statuses the API server answered to writes."""

    def __init__(self, real: KubeClient) -> None:
        self.real = real
        self.before_write: Callable[[], None] | None = None
        self.statuses: list[int] = []

    def request(
        self, method: str, path: str, body: Body | None = None, content_type: str = "application/json"
    ) -> Body:
        write = method in ("POST", "PATCH")
        if write and self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        try:
            return self.real.request(method, path, body, content_type)
        except ApiError as exc:
            if write:
                self.statuses.append(exc.status)
            raise


def test_two_writers_racing_on_one_profile_merge_without_double_counting(accounts: Accounts) -> None:
    """Writer A reads the profile; before its write lands, writer B writes; A's write is then refused
    with 409, A reads again and adds its blocks to B's. Once on the create, once on the patch."""
    kubeconfig = accounts.kubeconfig(BOUND)
    clients: dict[str, Racing] = {}
    syncs: dict[str, ProfileSync] = {}
    for pod in ("train-0", "train-1"):
        clients[pod] = Racing(KubeClient(kubecreds.from_kubeconfig(kubeconfig)))
        writer = ApiWriter(PodRef(pod, accounts.namespace), connect=lambda pod=pod: clients[pod])
        syncs[pod] = ProfileSync(
            writer, name="job-race", owner=None, stats=BlockStats(), policy=Policy(), baseline_file=None
        )
    a, b = syncs["train-0"], syncs["train-1"]

    def written(sync: ProfileSync, count: int) -> bool:
        return sync.results["written"] + sync.results["failed"] >= count

    def b_writes_first(count: int) -> Callable[[], None]:
        def hook() -> None:
            b.due()
            wait_for(lambda: written(b, count), 30, "writer B's write")

        return hook

    everything: dict[str, ScopeStats] = {}
    for round_, (mine, theirs) in enumerate(
        [
            (stats(("step", 0.05), ("step", 0.07), ("eval", 3.0)), stats(("step", 0.2), ("step", 0.2))),
            (stats(("step", 0.06), ("save", 9.0)), stats(("eval", 4.5), ("step", 0.04), ("step", 0.3))),
        ],
        start=1,
    ):
        profile.add(a.stats.scopes, mine)
        profile.add(b.stats.scopes, theirs)
        profile.add(everything, mine)
        profile.add(everything, theirs)
        clients["train-0"].before_write = b_writes_first(round_)
        a.due()
        wait_for(lambda round_=round_: written(a, round_), 30, "writer A's write")
        assert a.results == {"written": round_} and b.results == {"written": round_}
        assert clients["train-0"].statuses == [409] * round_, "A's stale write was refused with 409"
        assert clients["train-1"].statuses == []

    stored = accounts.profile("job-race")
    assert stored is not None
    merged = profile.scopes_of(stored)
    assert exact(merged) == exact(everything), "both writers' blocks, each once"
    assert {k: v.total for k, v in merged.items()} == pytest.approx(
        {k: v.total for k, v in everything.items()}
    )
    assert stored["status"]["blocks"] == 10
    for sync in syncs.values():
        sync.writer.close()


def test_a_refused_write_is_counted(accounts: Accounts) -> None:
    """What ``expiry_profile_writes_total{result="failed"}`` exports after the API server's 403; the
    blocks stay for the next write (the API server may be fixed later)."""
    kubeconfig = accounts.kubeconfig(UNBOUND)
    writer = ApiWriter(
        PodRef("other-0", accounts.namespace),
        connect=lambda: KubeClient(kubecreds.from_kubeconfig(kubeconfig)),
    )
    sync = ProfileSync(
        writer, name="job-other", owner=None, stats=BlockStats(), policy=Policy(), baseline_file=None
    )
    sync.stats.record("step", 0.05, 600.0)
    sync.due()
    wait_for(lambda: sync.results["failed"] == 1, 30, "the refused write counted")
    (family,) = profile_counter(sync.results).collect()
    values = {s.labels["result"]: s.value for s in family.samples if s.name == "expiry_profile_writes_total"}
    assert values == {"written": 0, "failed": 1}
    assert accounts.profile("job-other") is None
    writer.close()
