"""``scripts/cluster up|down|status``: a real Kubernetes control plane on this machine, with expiry
installed by helm, for the tests (tests/cluster) and for anyone who wants to try expiry on a real API
server without a cluster.

``up`` builds (once, cached) and starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and kwok (tests/support/controlplane.py), registers two nodes - ``expiry-node``, whose pods are really
run by the kubelet stand-in (tests/support/kubelet.py), and ``kwok-node-0``, a kwok fake node tainted
so that only pods that tolerate it land there - and installs charts/expiry into ``expiry-system`` with
``helm install --wait``. Its last line is ``KUBECONFIG=<path>``. ``down`` stops every process it
started and removes its mounts, network namespaces and bridge. ``status`` says what runs.

The state lives in ``$EXPIRY_CLUSTER_DIR`` (default /tmp/expiry-cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support import controlplane, nodenet
from tests.support.kube import ApiError, Kube, wait_for

REPO = controlplane.REPO
STATE = Path(os.environ.get("EXPIRY_CLUSTER_DIR", "/tmp/expiry-cluster"))
RELEASE, NAMESPACE = "expiry", "expiry-system"
HELM = REPO / ".tools/bin/helm"
KWOK_NODE = "kwok-node-0"
DEMO_NAMESPACE = "ml"
# Beyond the chart's defaults: the pod condition on, and the sidecars' RBAC (Events, the condition) bound to
# the default ServiceAccount of the namespace "ml" (labelled for the restricted Pod Security Standard).
CHART_VALUES = [
    "podCondition.enabled=true",
    f"podCondition.bindings[0].namespace={DEMO_NAMESPACE}",
    "podCondition.bindings[0].serviceAccount=default",
    f"sidecarEvents.bindings[0].namespace={DEMO_NAMESPACE}",
    "sidecarEvents.bindings[0].serviceAccount=default",
]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """One ``up`` or ``down`` at a time (parallel test workers share one cluster)."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def is_up(state: Path = STATE) -> bool:
    alive = controlplane.running(state)
    return bool(alive) and all(alive.values()) and (state / "ready").is_file()


def kubeconfig(state: Path = STATE) -> Path:
    return state / "kubeconfig"


@contextlib.contextmanager
def exclusive(name: str, state: Path = STATE) -> Iterator[None]:
    """A lock of its own (not the up/down one), held across processes."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / f".lock-{name}").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def attach(owner: str, state: Path = STATE) -> Path:
    """Start the cluster unless it runs and count this process among its users, under one lock: a user
    that finishes cannot stop the cluster between another's start and its count."""
    with locked(state):
        users = _users(state)
        _ensure_up(state, owner=owner, users=users)
        _write_users(state, users | {os.getpid()})
        return kubeconfig(state)


def detach(owner: str, state: Path = STATE) -> None:
    """This process is done with the cluster; the last live user stops it if ``owner`` started it."""
    with locked(state):
        users = _users(state) - {os.getpid()}
        _write_users(state, users)
        if not users and _owner(state) == owner:
            _down(state)


def exited(state: Path = STATE) -> str:
    """Which started component is no longer running, with the end of its log ("" when all run)."""
    dead = [name for name, running in controlplane.running(state).items() if not running]
    return "\n".join(
        f"{name} exited; {state / 'logs' / name}.log ends:\n"
        + "\n".join((state / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-40:])
        for name in dead
    )


def _users(state: Path) -> set[int]:
    """The live processes counted as users (one killed without detaching is not counted)."""
    path = state / "users"
    text = path.read_text() if path.is_file() else ""
    return {int(pid) for pid in text.split() if pid.isdigit() and controlplane.alive(int(pid))}


def _write_users(state: Path, users: set[int]) -> None:
    (state / "users").write_text(" ".join(map(str, sorted(users))))


def _owner(state: Path) -> str:
    return (state / "owner").read_text() if (state / "owner").is_file() else ""


def up(state: Path = STATE, *, chart_values: Sequence[str] = (), owner: str = "") -> Path:
    """Start the cluster unless it runs; ``owner`` is written down, so only that owner's last user stops
    it (the tests never stop a cluster someone started by hand)."""
    with locked(state):
        _ensure_up(state, chart_values=chart_values, owner=owner, users=_users(state))
        return kubeconfig(state)


def _ensure_up(state: Path, *, owner: str, users: set[int], chart_values: Sequence[str] = ()) -> None:
    if is_up(state):
        return
    if users:  # restarting would pull the API server from under them: say what died instead
        raise RuntimeError(
            f"the cluster in {state} stopped while processes {sorted(users)} use it\n{exited(state)}"
        )
    _down(state)
    (state / "owner").write_text(owner)
    started = time.monotonic()
    binaries = controlplane.build(say)
    nodenet.bridge_up()
    plane = controlplane.ControlPlane(state, binaries, nodenet.GATEWAY)
    admin = plane.up(say)
    kube = Kube.from_kubeconfig(admin)
    controlplane.start(
        "kubelet",
        [
            sys.executable,
            "-m",
            "tests.support.kubelet",
            str(state),
            "--version",
            controlplane.kubernetes_version(),
        ],
        state,
        cwd=REPO,
    )
    add_kwok_node(kube)
    wait_for(lambda: node_ready(kube, "expiry-node") and node_ready(kube, KWOK_NODE), 60, "nodes Ready")
    wait_for(lambda: kube.exists("/api/v1/namespaces/default/serviceaccounts/default"), 60, "default SA")
    install_release(kube, admin, chart_values)
    (state / "ready").write_text(f"{time.monotonic() - started:.0f}\n")
    say(f"cluster up in {time.monotonic() - started:.0f} s (state in {state})")


def add_kwok_node(kube: Kube) -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": KWOK_NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": KWOK_NODE, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
    }
    with contextlib.suppress(ApiError):
        kube.create("/api/v1/nodes", node)


def node_ready(kube: Kube, name: str) -> bool:
    node = kube.get(f"/api/v1/nodes/{name}")
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", [])
    )


def helm(admin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(HELM), *args],
        env={**os.environ, "KUBECONFIG": str(admin)},
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise SystemExit(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def install_release(kube: Kube, admin: Path, chart_values: Sequence[str]) -> None:
    """The namespace "ml" (restricted Pod Security), then the chart with CHART_VALUES."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": DEMO_NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }
    kube.create("/api/v1/namespaces", namespace)
    install(admin, [*CHART_VALUES, *chart_values])


def install(admin: Path, values: list[str]) -> None:
    say("helm install expiry charts/expiry ...")
    sets = [arg for value in values for arg in ("--set", value)]
    helm(
        admin,
        "install",
        RELEASE,
        str(REPO / "charts/expiry"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
        *sets,
    )


def _down(state: Path) -> list[str]:
    plane = controlplane.ControlPlane(state, Path(), nodenet.GATEWAY)
    stopped = plane.down()
    nodenet.all_down()
    for leftover in ("ready", "kubeconfig"):
        (state / leftover).unlink(missing_ok=True)
    shutil.rmtree(state / "pods", ignore_errors=True)
    return stopped


def down(state: Path = STATE) -> list[str]:
    with locked(state):
        return _down(state)


def status(state: Path = STATE) -> int:
    alive = controlplane.running(state)
    if not alive:
        print("not running")
        return 1
    for name, running in alive.items():
        print(f"{name:<24} {'running' if running else 'EXITED (see ' + str(state / 'logs' / name) + '.log)'}")
    print(f"KUBECONFIG={kubeconfig(state)}" if is_up(state) else "not ready")
    return 0 if is_up(state) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start it (a no-op when it runs); last line KUBECONFIG=<path>")
    up_parser.add_argument("--set", action="append", default=[], help="a chart value for helm install")
    sub.add_parser("down", help="stop every process it started, remove its mounts")
    sub.add_parser("status", help="what runs")
    sub.add_parser("build", help="only build (or find cached) the binaries; print their directory")
    args = parser.parse_args()
    if args.command == "up":
        print(f"KUBECONFIG={up(chart_values=args.set)}")
    elif args.command == "down":
        stopped = down()
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    elif args.command == "build":
        print(controlplane.build(say))
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
