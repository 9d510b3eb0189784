"""What observability costs a pod: metric series per sidecar, and the sidecar's memory (VmRSS).

``.venv/bin/python -m bench.observability`` (as root: it makes a PID namespace) runs a real
``expiry-sidecar serve`` in a pod, plain and then with everything on (``--events`` posting to kmock
as the API server, ``--stack-dumps``, ``--state-file``), kills one stuck worker in each, and prints
the series a Prometheus scrape finds (after the kill, so every label value that appears has) and
the resident memory before and after the kill.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import requests

from bench import procfs
from tests.support.kubeapi import KubeApi
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker, wait_for


def series(sidecar: Sidecar) -> int:
    text = requests.get(f"{sidecar.url}/metrics", timeout=5).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def host_pid(sidecar: Sidecar) -> int:
    """The sidecar's pid outside the pod: the only child of the nsenter that started it."""
    nsenter = sidecar.process.pid
    return int(Path(f"/proc/{nsenter}/task/{nsenter}/children").read_text().split()[0])


def measure(workdir: Path, label: str, *args: str) -> tuple[str, int, int, int, int]:
    workdir.mkdir()
    pod = Pod(workdir)
    try:
        sidecar = Sidecar(pod, *args)
        pid = host_pid(sidecar)
        if "--events" in args:  # the client is loaded in the background at start
            wait_for(lambda: "writing to the Kubernetes API" in sidecar.logs_text(), what="the client")
        before = series(sidecar), procfs.rss_bytes(pid)
        worker = Worker(pod, sidecar.fifo, "hang", "--after", "0.2")
        worker.expect("armed")
        assert worker.wait() == -signal.SIGKILL
        sidecar.wait_metric("expiry_kills_total", 1, signal="SIGKILL")
        if "--events" in args:
            sidecar.wait_metric("expiry_events_total", 1, result="recorded")
        after = series(sidecar), procfs.rss_bytes(pid)
        sidecar.stop()
        return label, before[0], after[0], before[1], after[1]
    finally:
        pod.close()


def everything(workdir: Path) -> list[str]:
    return ["--events", "--stack-dumps", str(workdir / "dumps"), "--state-file", str(workdir / "state.json")]


def main() -> None:
    api = KubeApi()
    workdir = Path(tempfile.mkdtemp(prefix="expiry-observability-"))
    os.environ.update(
        KUBECONFIG=str(api.kubeconfig(workdir / "kubeconfig")),
        EXPIRY_POD_NAME="trainer-0",
        EXPIRY_POD_NAMESPACE="bench",
        EXPIRY_DUMP_DIR=str(workdir / "dumps"),
    )
    try:
        rows = [measure(workdir / "plain", "plain")]
        os.environ["EXPIRY_POD_UID"] = "0b5e1f4c-5d1e-4c3a-9d7e-3f0c2a9b8e11"
        rows.append(measure(workdir / "all", "everything on", *everything(workdir / "all")))
        del os.environ["EXPIRY_POD_UID"]
        rows.append(measure(workdir / "nouid", "... no pod uid", *everything(workdir / "nouid")))
    finally:
        api.close()
    print(f"{'sidecar':<16}{'series idle':>12}{'after kill':>12}{'RSS idle MB':>13}{'after kill MB':>15}")
    for label, series_idle, series_kill, rss_idle, rss_kill in rows:
        print(
            f"{label:<16}{series_idle:>12}{series_kill:>12}{rss_idle / 2**20:>13.1f}{rss_kill / 2**20:>15.1f}"
        )
    print(
        "everything on: --events (EXPIRY_POD_UID given), --stack-dumps, --state-file;"
        " '... no pod uid': the same, the uid read from the API (the core API client's cost)"
    )


if __name__ == "__main__":
    main()
