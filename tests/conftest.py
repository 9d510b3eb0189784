from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.pod import Pod, can_make_pods
from tests.support.sidecar import Sidecar


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    reason = can_make_pods()
    if reason:
        pytest.skip(reason)
    made = Pod(tmp_path)
    yield made
    made.close()


@pytest.fixture
def sidecar(pod: Pod) -> Iterator[Callable[..., Sidecar]]:
    """Start a real ``expiry-sidecar serve`` in the pod: ``sidecar(*extra_args)``."""
    started: list[Sidecar] = []

    def start(*args: str, fifo: Path | None = None, user: int | None = None) -> Sidecar:
        made = Sidecar(pod, *args, fifo=fifo, user=user)
        started.append(made)
        return made

    yield start
    for made in started:
        if made.process.poll() is None:
            made.process.kill()
