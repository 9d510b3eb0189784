"""A training pod as the operator injects it, running real torchrun: the harness of the torchrun e2e tests.

A realistic PyTorchJob worker pod goes through the injection code; its sidecar container's args, env
and user are run as the kubelet would run them, in a fresh PID namespace (the pod's shared process
namespace) whose ``/var/run/expiry`` is an empty tmpfs (the emptyDir). The trainer container's
injected env is given to torchrun, which starts the workers of ``examples/torchrun_trainer.py``;
their checkpoint is a file on a second tmpfs. Pods of one job share the host's loopback network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, TextIO

import requests

from expiry.names import RUN_DIR, SIDECAR_CONTAINER
from expiry_operator.settings import SidecarSettings, StackDumpMode
from tests.support.injected import container, inject, resolve_env
from tests.support.pod import Pod
from tests.support.sidecar import SIDECAR, Metrics, as_user, free_port, wait_for

TRAINER = str(Path(__file__).parents[2] / "examples" / "torchrun_trainer.py")
CHECKPOINTS = "/var/run/expiry-e2e-checkpoints"
KILLED = "killed a stuck worker"
LATE = 1.0
"""Seconds a kill may come after its deadline: the bound of the single-worker tests."""
RUN_TIMEOUT = 240.0
CODE = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
"""This checkout's packages, as the images would hold them (a worktree's, under the shared venv)."""


def manifest(name: str) -> dict[str, Any]:
    """A Kubeflow PyTorchJob worker pod, opted in, its image's user (root) running the trainer.

    (Not a non-root uid: this machine's interpreter lies under /root, which another uid may exec
    directly but not from a subprocess, as torchrun starts its workers.)
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"9d1c6f3e-0000-4000-8000-{zlib.crc32(name.encode()):012d}",
            "annotations": {"expiry.io/enabled": "true"},
            "labels": {
                "training.kubeflow.org/job-name": "llm",
                "training.kubeflow.org/replica-type": "worker",
            },
        },
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [
                {
                    "name": "pytorch",
                    "image": "pytorch/pytorch:2.13.0-cpu",
                    "command": ["torchrun", "train.py"],
                    "volumeMounts": [{"name": "checkpoints", "mountPath": CHECKPOINTS}],
                }
            ],
            "volumes": [{"name": "checkpoints", "emptyDir": {"medium": "Memory"}}],
        },
    }


class TorchrunPod:
    def __init__(
        self, workdir: Path, name: str, *, stack_dumps: StackDumpMode = "off", node: str = "localhost"
    ) -> None:
        """``node``: the node the pod is bound to (as the scheduler would: after admission)."""
        self.name = name
        self.node = node
        self.workdir = workdir
        self.port = free_port()
        self.spec = inject(manifest(name), SidecarSettings(metrics_port=self.port, stack_dumps=stack_dumps))
        self.spec["spec"]["nodeName"] = node
        sidecar, trainer = container(self.spec, SIDECAR_CONTAINER), container(self.spec, "pytorch")
        self.uid: int | None = sidecar.get("securityContext", {}).get("runAsUser")
        self.pod = Pod(workdir, volumes=[RUN_DIR, CHECKPOINTS])
        self.sidecar_log = workdir / f"{name}-sidecar.log"
        self.trainer_log = workdir / f"{name}-trainer.log"
        self._logs: list[TextIO] = [self.sidecar_log.open("w"), self.trainer_log.open("w")]
        self.sidecar = self.pod.start(
            [*as_user(self.uid), SIDECAR, *sidecar["args"]],
            env={**resolve_env(self.spec, sidecar["env"]), **CODE},
            stdout=self._logs[0],
            stderr=subprocess.STDOUT,
        )
        wait_for(self._started, what=f"{name}'s sidecar startup probe")
        self.trainer_env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            **CODE,
            **resolve_env(self.spec, trainer["env"]),
        }

    def _started(self) -> bool:
        assert self.sidecar.poll() is None, self.sidecar_log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def torchrun(
        self, *args: str, launcher: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """``torchrun ARGS`` in the trainer container (after ``launcher``, e.g. a shell that sets env),
        with the container's env and ``env`` (e.g. the ``PET_*`` variables a PyTorchJob sets)."""
        argv = [*as_user(self.uid), *launcher, sys.executable, "-m", "torch.distributed.run", *args]
        return self.pod.start(
            argv, env={**self.trainer_env, **(env or {})}, stdout=self._logs[1], stderr=subprocess.STDOUT
        )

    def finish(self, run: subprocess.Popen[str]) -> int:
        try:
            return run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"torchrun in {self.name} did not finish:\n{self.tail()}") from None

    def output(self) -> str:
        return self.trainer_log.read_text()

    def tail(self) -> str:
        return "\n".join(self.output().splitlines()[-60:] + self.sidecar_log.read_text().splitlines()[-20:])

    def worker_pids(self, generation: int) -> set[int]:
        """The pids the workers of a generation printed (pids in the pod, as the sidecar sees them)."""
        return {int(pid) for pid in re.findall(rf"\[rank \d+ gen {generation}\] pid (\d+)", self.output())}

    def last_generation(self) -> int:
        return max(int(gen) for gen in re.findall(r"\[rank \d+ gen (\d+)\]", self.output()))

    def assert_resumed_and_finished(self, ranks: int = 2) -> None:
        """Generation 1 resumed from the checkpoint of the hung step; the last one (1, unless torchrun's
        own rendezvous needed another try) finished, on every local rank."""
        out, last = self.output(), self.last_generation()
        assert out.count("gen 1] resuming at step 1") == ranks, self.tail()
        assert out.count(f"gen {last}] finished") == ranks, self.tail()

    def sidecar_lines(self) -> list[dict[str, Any]]:
        text = self.sidecar_log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def kills(self) -> list[dict[str, Any]]:
        return [line for line in self.sidecar_lines() if line["message"] == KILLED]

    def metrics(self) -> Metrics:
        return Metrics(requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text)

    def assert_killed_on_time(self, pids: set[int]) -> None:
        """The sidecar killed exactly ``pids``, each once, each within LATE seconds of its deadline."""
        kills = self.kills()
        assert sorted(kill["pid"] for kill in kills) == sorted(pids), (kills, self.tail())
        for kill in kills:
            assert kill["outcome"] == "delivered" and kill["signal"] == "SIGKILL", kill
            assert 0 <= kill["late_seconds"] < LATE, kill
        assert self.metrics()("expiry_kills_total", signal="SIGKILL") == len(pids)

    def close(self) -> None:
        self.pod.close()
        for log in self._logs:
            log.close()
