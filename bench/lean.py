"""The sidecar as the chart deploys it (``--events --pod-condition``, kmock as the API server): its
resident memory after a kill (the Event recorded, the condition patched), how long until ``/readyz``
answers 200 and until its API writer is ready (a kill's condition waits for that), and the image's
size as ``scripts/build-images`` built it (when it is built on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from bench import procfs
from bench.context import Context, Row
from tests.support.kubeapi import KubeApi
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, wait_for

NAMESPACE = "bench"
POD = "trainer-0"
UID = "0b5e1f4c-5d1e-4c3a-9d7e-3f0c2a9b8e11"
IMAGE = "ghcr.io/expiry-io/expiry-sidecar"


def host_pid(sidecar: Sidecar) -> int:
    """The sidecar's pid outside the pod: the only child of the nsenter that started it."""
    nsenter = sidecar.process.pid
    return int(Path(f"/proc/{nsenter}/task/{nsenter}/children").read_text().split()[0])


def one_round(workdir: Path, api: KubeApi) -> tuple[float, float, float, int]:
    """Seconds to /readyz, CPU seconds the sidecar spent until then, seconds to the API writer, RSS
    bytes after a kill."""
    workdir.mkdir()
    pod = Pod(workdir)
    try:
        started = time.monotonic()
        sidecar = Sidecar(pod, "--events", "--pod-condition")
        ready = time.monotonic() - started
        cpu = procfs.cpu_seconds(host_pid(sidecar))
        wait_for(lambda: "writing to the Kubernetes API" in sidecar.logs_text(), what="the API writer")
        writer = time.monotonic() - started
        worker = Worker(pod, sidecar.fifo, "hang", "--after", "0.2")
        worker.expect("armed")
        assert worker.wait() == -signal.SIGKILL
        sidecar.wait_metric("expiry_pod_conditions_total", 1, result="patched")
        sidecar.wait_metric("expiry_events_total", 1, result="recorded")
        rss = procfs.rss_bytes(host_pid(sidecar))
        sidecar.stop()
        return ready, cpu, writer, rss
    finally:
        pod.close()


def compiled(workdir: Path) -> dict[str, str]:
    """Environment for a sidecar that starts from compiled byte code, as the image's does (pip
    compiled it there), even where PYTHONDONTWRITEBYTECODE is set (an editable install's sources
    would be compiled again at every start): a byte-code cache of its own, filled once."""
    env = {"PYTHONPYCACHEPREFIX": str(workdir / "pycache"), "PYTHONDONTWRITEBYTECODE": ""}
    # (and the kubernetes package where it is installed: the sidecar before 0.2 loaded it at start)
    warm = (
        "import expiry_sidecar.cli, expiry_sidecar.daemon\n"
        "try: import kubernetes.client\nexcept ImportError: ..."
    )
    subprocess.run([sys.executable, "-c", warm], env={**os.environ, **env}, check=True)
    return env


def image_size() -> str:
    """The sidecar image's size as ``buildah images`` reports it (the newest tag on this machine)."""
    if shutil.which("buildah") is None:
        return "n/a: no buildah"
    listing = subprocess.run(["buildah", "images", "--json"], capture_output=True, text=True, check=False)
    images = json.loads(listing.stdout or "[]") if listing.returncode == 0 else []
    ours = [i for i in images if any(n.startswith(f"{IMAGE}:") for n in i.get("names") or [])]
    if not ours:
        return "n/a: not built (scripts/build-images)"
    size: str = max(ours, key=lambda image: image["created"])["size"]
    return size.removesuffix(" MB")


def run(ctx: Context) -> list[Row]:
    rounds = ctx.size(5, 1)
    api = KubeApi()
    results: list[tuple[float, float, float, int]] = []
    try:
        for n in range(rounds):
            api.create(
                f"/api/v1/namespaces/{NAMESPACE}/pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": POD, "namespace": NAMESPACE, "uid": UID},
                },
            )
            env = {
                "KUBECONFIG": str(api.kubeconfig(ctx.workdir / "kubeconfig")),
                "EXPIRY_POD_NAME": POD,
                "EXPIRY_POD_NAMESPACE": NAMESPACE,
                "EXPIRY_POD_UID": UID,
                **compiled(ctx.workdir),
            }
            with mock.patch.dict(os.environ, env):
                results.append(one_round(ctx.workdir / f"lean-{n}", api))
            api.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}")
    finally:
        api.close()
    ready = statistics.median(r[0] for r in results) * 1000
    cpu = statistics.median(r[1] for r in results) * 1000
    writer = statistics.median(r[2] for r in results) * 1000
    rss = statistics.median(r[3] for r in results) / 2**20
    ctx.notes.append(
        f"Lean sidecar: {rounds} rounds of `expiry-sidecar serve --events --pod-condition` against kmock,"
        " medians; ready = from starting the process (nsenter into the pod) to the first 200 of"
        " /readyz, polled every 20 ms (wall clock: on a loaded machine mostly waiting for a core; the"
        " CPU the sidecar used until then is the load-independent figure); API writer = to its"
        " 'writing to the Kubernetes API' log line;"
        " RSS after one kill with its condition patched and its Event recorded; the sidecar starts from"
        " compiled byte code, as in the image."
    )
    return [
        Row(
            "sidecar RSS, Events + pod condition, after a kill",
            "MB",
            {"expiry": f"{rss:.1f}"},
            goal="<= 30 MB",
            met=rss <= 30,
        ),
        Row(
            "sidecar start to /readyz, Events + pod condition",
            "ms",
            {"expiry": f"{ready:.0f}"},
            goal="< 500 ms",
            met=ready < 500,
        ),
        Row("sidecar CPU time until /readyz", "ms", {"expiry": f"{cpu:.0f}"}),
        Row("sidecar start to API writer ready", "ms", {"expiry": f"{writer:.0f}"}),
        Row("sidecar image size", "MB", {"expiry": image_size()}),
    ]
