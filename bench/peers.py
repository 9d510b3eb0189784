"""The two timer servers under test, each in a process of its own, behind one interface.

- ``expiry``: ``expiry-sidecar serve`` as the operator runs it (metrics over HTTP), counting requests
  in ``expiry_requests_total``;
- ``torch``: torch 2.13's ``FileTimerServer`` with ``max_interval=0.1`` (:mod:`bench.torch_server`),
  counting requests in its own ``_request_count``.

Each also names the client that goes with it, so a benchmark can be written once for both.
"""

from __future__ import annotations

import array
import fcntl
import os
import signal
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from tests.support.sidecar import free_port, serve_command


class Client(Protocol):
    def acquire(self, scope_id: str, expiration_time: float) -> None: ...

    def release(self, scope_id: str) -> None: ...


def torch_missing() -> str | None:
    """Why torch's timer cannot be benchmarked here, or None when it can."""
    try:
        import torch.distributed.elastic.timer  # noqa: F401
    except ImportError as exc:
        return f"torch not installed ({exc.name}): scripts/bootstrap dev installs it"
    return None


def wait_for(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        if time.monotonic() > give_up:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


class Peer(ABC):
    name: str
    process: subprocess.Popen[bytes]

    def __init__(self, workdir: Path) -> None:
        self.fifo = workdir / f"{self.name}.fifo"
        self.log_path = workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    @abstractmethod
    def client(self) -> Client:
        """A new client of this server (call it in the process that will use it)."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(requests received so far, timers armed now), as the server itself counts them."""

    def requests_seen(self) -> int:
        return self.counts()[0]

    def caught_up(self, expected: int) -> bool:
        """Has the server consumed all requests sent, ``expected`` in all? Cheap to ask often."""
        return self.requests_seen() >= expected

    def wait_armed(self, timers: int, timeout: float = 300.0) -> None:
        wait_for(lambda: self.counts()[1] >= timers, f"{self.name} to arm {timers} timers", timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ExpiryPeer(Peer):
    name = "expiry"

    def __init__(self, workdir: Path, *args: str) -> None:
        """``args``: more options for ``expiry-sidecar serve``."""
        super().__init__(workdir)
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *serve_command(self.fifo, self.port),
                    "--log-format",
                    "text",
                    "--log-level",
                    "warning",
                    "--state-file",  # as the operator runs it: every change journaled
                    str(workdir / "expiry-state.json"),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, "expiry-sidecar's /readyz")
        self._pipe_probe = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        """An extra read end, never read from: FIONREAD on it says how much the server has not read yet."""

    def client(self) -> Client:
        from expiry import FileTimerClient

        return FileTimerClient(str(self.fifo))

    def scrape(self) -> dict[str, float]:
        """Every sample of /metrics: ``name{label="value",...}`` (labels sorted) -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def counts(self) -> tuple[int, int]:
        samples = self.scrape()
        requests = (
            samples['expiry_requests_total{kind="acquire"}']
            + samples['expiry_requests_total{kind="release"}']
        )
        return int(requests), int(samples["expiry_timers_active"])

    def caught_up(self, expected: int) -> bool:
        """The FIFO is empty: the sidecar has read everything (the last chunk takes it < 1 ms more)."""
        unread = array.array("i", [0])
        fcntl.ioctl(self._pipe_probe, termios.FIONREAD, unread)
        return unread[0] == 0

    def stop(self) -> None:
        super().stop()
        os.close(self._pipe_probe)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"expiry-sidecar exited ({self.process.returncode}); see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False


class TorchPeer(Peer):
    name = "torch"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.torch_server", str(self.fifo)],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=Path(__file__).parent.parent,
            )
        assert self.process.stdout is not None
        self._replies = self.process.stdout
        line = self._replies.readline()
        if line.strip() != b"ready":
            self.process.wait()
            raise RuntimeError(f"torch's FileTimerServer did not start; see {self.log_path}")

    def client(self) -> Client:
        from torch.distributed.elastic.timer.file_based_local_timer import FileTimerClient

        client: Client = FileTimerClient(str(self.fifo))
        return client

    def counts(self) -> tuple[int, int]:
        self.process.send_signal(signal.SIGUSR1)
        requests, timers = self._replies.readline().split()
        return int(requests), int(timers)


PEERS: dict[str, type[Peer]] = {"expiry": ExpiryPeer, "torch": TorchPeer}
