"""A real ``expiry-sidecar serve`` in a pod, its metrics scraped over HTTP, and workers to guard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.pod import Pod

SIDECAR = str(Path(sys.executable).with_name("expiry-sidecar"))
WORKER = str(Path(__file__).with_name("worker.py"))
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def serve_command(fifo: Path, port: int, *args: str) -> list[str]:
    """``expiry-sidecar serve`` on ``fifo``, its HTTP endpoints on 127.0.0.1:``port``."""
    return [
        SIDECAR,
        "serve",
        "--fifo",
        str(fifo),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(port),
        *args,
    ]


def as_user(uid: int | None) -> list[str]:
    """The command prefix that runs a process as ``uid`` with no capabilities (none: as root)."""
    return [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def raw_write(fifo: Path, data: bytes) -> None:
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def request(pid: int, scope: str, expiration_time: float, sig: int = 9) -> bytes:
    line = {"version": 1, "pid": pid, "scope_id": scope, "expiration_time": expiration_time, "signal": sig}
    return json.dumps(line).encode() + b"\n"


class Metrics:
    """One scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


class Sidecar:
    def __init__(self, pod: Pod, *args: str, fifo: Path | None = None, user: int | None = None) -> None:
        self.pod = pod
        self.fifo = fifo or pod.workdir / "timer.fifo"
        self.port = free_port()
        self.log_path = pod.workdir / f"sidecar-{self.port}.log"
        self._log = self.log_path.open("w")
        self.args = args
        self.process = pod.start(
            [*as_user(user), *serve_command(self.fifo, self.port, *args)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.ready, what="the sidecar's /readyz")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the sidecar exited with {self.process.returncode}:\n{self.logs_text()}")
        try:
            return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def metrics(self) -> Metrics:
        response = requests.get(f"{self.url}/metrics", timeout=5)
        response.raise_for_status()
        return Metrics(response.text)

    def wait_metric(self, name: str, value: float, timeout: float = 10.0, **labels: str) -> Metrics:
        return wait_for(
            lambda: (m := self.metrics())(name, **labels) == value and m,
            timeout,
            what=f"{name}{labels or ''} == {value}",
        )

    def logs_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs_text().splitlines() if line.startswith("{")]

    @property
    def pid(self) -> int:
        """The sidecar's pid in the pod, as its "serving" log line gives it."""
        serving = wait_for(lambda: next((e for e in self.logs() if e["message"] == "serving"), None))
        return int(serving["pid"])

    def rss_kib(self) -> int:
        """The sidecar's resident memory, read from /proc on the host (nsenter's child is the sidecar)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def signal(self, sig: int) -> None:
        assert self.pod.start(["kill", f"-{sig}", str(self.pid)]).wait() == 0

    def stop(self) -> int:
        self.signal(15)
        status = self.process.wait(timeout=10)
        self._log.close()
        return status


def hang_together(workers: list[Worker], after: float = 1.0) -> float:
    """Arm one block in each of ``workers`` (started with ``hang --at-from-stdin``) with one deadline,
    ``after`` seconds from now; returns that deadline (epoch seconds)."""
    for worker in workers:
        worker.expect("ready")
    deadline = time.time() + after
    for worker in workers:
        worker.tell(repr(deadline))
    for worker in workers:
        worker.expect("armed")
    if time.time() >= deadline:
        raise AssertionError("arming the workers took longer than the deadline allowed")
    return deadline


class Worker:
    """A test worker (``tests/support/worker.py``) in the pod, talking to ``fifo``."""

    def __init__(
        self,
        pod: Pod,
        fifo: Path,
        action: str,
        *args: str,
        user: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.pod = pod
        environment = {**os.environ, "TORCHELASTIC_TIMER_FILE": str(fifo), **(env or {})}
        self.process = pod.start(
            [*as_user(user), sys.executable, WORKER, action, *args], env=environment, stdin=subprocess.PIPE
        )
        first = self.readline()
        assert first.startswith("pid "), first
        self.pid = int(first.split()[1])

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def expect(self, line: str) -> None:
        got = self.readline()
        assert got == line, f"worker said {got!r}, expected {line!r}"

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self, sig: int = 9) -> None:
        """Signal the worker itself (killing the Popen would only kill nsenter)."""
        assert self.pod.start(["kill", f"-{sig}", str(self.pid)]).wait() == 0

    def alive(self) -> bool:
        return self.process.poll() is None
