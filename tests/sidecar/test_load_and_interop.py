"""Bursts from several processes, and both directions of interop with torch's timer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from expiry_sidecar import alone
from tests.support.pod import Pod
from tests.support.sidecar import Sidecar, Worker

StartSidecar = Callable[..., Sidecar]


def test_a_burst_of_80000_blocks_from_4_processes_loses_nothing(pod: Pod, sidecar: StartSidecar) -> None:
    """Scrapes run all along: reading the metrics while the loop changes them must never fail."""
    server = sidecar("--state-file", str(pod.workdir / "state.json"))
    statuses: list[int] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            statuses.append(requests.get(f"{server.url}/metrics", timeout=10).status_code)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [Worker(pod, server.fifo, "blocks", "--count", "20000", "--after", "600") for _ in range(4)]
    for worker in workers:
        worker.expect("done 20000")
        assert worker.wait(timeout=120) == 0, "a client failed under the burst"
    done.set()
    scraper.join()
    assert statuses and set(statuses) == {200}, f"scrapes failed during the burst: {set(statuses)}"
    metrics = server.wait_metric("expiry_requests_total", 80_000, timeout=60, kind="release")
    assert metrics("expiry_requests_total", kind="acquire") == 80_000
    assert metrics("expiry_malformed_requests_total") == 0
    assert metrics("expiry_timers_active") == 0
    assert metrics("expiry_kills_total", signal="SIGKILL") == 0


def test_scrapes_while_many_timers_are_released_always_succeed(pod: Pod, sidecar: StartSidecar) -> None:
    """Releasing leaves stale heap entries that finding the next deadline clears: a scrape asks for
    the next deadline too, and must never race the loop over the heap."""
    server = sidecar()
    holder = Worker(pod, server.fifo, "hold", "--count", "50000", "--after", "3600")
    holder.expect("armed")
    server.wait_metric("expiry_timers_active", 50_000, timeout=60)
    statuses: list[int] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            statuses.append(requests.get(f"{server.url}/metrics", timeout=10).status_code)

    scrapers = [threading.Thread(target=scrape) for _ in range(2)]
    for scraper in scrapers:
        scraper.start()
    holder.tell("release")
    holder.expect("released")
    server.wait_metric("expiry_timers_active", 0, timeout=60)
    done.set()
    for scraper in scrapers:
        scraper.join()
    holder.tell("exit")
    assert statuses and set(statuses) == {200}, f"scrapes failed: {sorted(set(statuses))}"
    assert server.process.poll() is None


TORCH_SERVER = """
import sys, time
from torch.distributed.elastic.timer import FileTimerServer
server = FileTimerServer(sys.argv[1], run_id="test", max_interval=0.1)
server.start()
print("ready", flush=True)
time.sleep(3600)
"""


@pytest.mark.torch
def test_expiry_clients_are_served_by_torch_s_own_server(tmp_path: Path) -> None:
    """torch's FileTimerServer kills a worker that used expiry's client (then, as torch does, itself)."""
    pytest.importorskip("torch")
    fifo = tmp_path / "torch.fifo"
    server = subprocess.Popen(
        [sys.executable, "-c", TORCH_SERVER, str(fifo)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        worker = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parents[1] / "support" / "worker.py"),
                "hang",
                "--after",
                "0.3",
            ],
            env={**os.environ, "TORCHELASTIC_TIMER_FILE": str(fifo), "TORCHELASTIC_ENABLE_FILE_TIMER": "1"},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        assert worker.stdout.readline().startswith("pid ")
        assert worker.stdout.readline().strip() == "armed"
        assert worker.wait(timeout=30) == -signal.SIGKILL
        worker.stdout.close()
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


def test_exit_when_alone_stays_while_a_trainer_runs_and_exits_once_it_is_gone(
    pod: Pod, sidecar: StartSidecar
) -> None:
    grace = 0.5
    server = sidecar("--exit-when-alone", "--alone-grace", str(grace))
    time.sleep(alone.CHECK_INTERVAL + grace)  # alone from the start: it waits for a trainer to appear first
    assert server.process.poll() is None, "exited before any trainer came"
    trainer = Worker(pod, server.fifo, "hold", "--after", "60")
    trainer.expect("armed")
    server.wait_metric("expiry_timers_active", 1)  # heard from: from now on only the scan keeps it
    trainer.tell("release")
    trainer.expect("released")
    # The trainer runs on, idle (no timer held): two scans and more than the grace pass meanwhile.
    time.sleep(2 * alone.CHECK_INTERVAL + 2 * grace)
    assert server.process.poll() is None, "exited while a trainer still ran (its process scan missed it)"
    trainer.tell("exit")
    assert trainer.wait() == 0
    assert server.process.wait(timeout=15) == 0
    assert any(entry["message"] == "alone in the pod: exiting" for entry in server.logs())
