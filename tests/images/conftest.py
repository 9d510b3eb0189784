"""The images, really built (scripts/build-images: buildah, daemonless; a no-op when up to date) and their
root file systems, mounted from local buildah storage."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VERSION = str(yaml.safe_load((REPO / "charts/expiry/Chart.yaml").read_text())["appVersion"])
VALUES = yaml.safe_load((REPO / "charts/expiry/values.yaml").read_text())


@dataclass(frozen=True)
class Images:
    sidecar: str
    operator: str
    trainer: str

    def of(self, part: str) -> str:
        image: str = getattr(self, part)
        return image


@pytest.fixture(scope="session")
def images() -> Images:
    """Both images under the chart's default names, and the test trainer image, built from this tree."""
    built = subprocess.run(
        [str(REPO / "scripts/build-images")], capture_output=True, text=True, check=False, timeout=1200
    )
    assert built.returncode == 0, f"scripts/build-images failed:\n{built.stdout}\n{built.stderr[-5000:]}"
    return Images(
        sidecar=f"{VALUES['sidecar']['image']['repository']}:{VERSION}",
        operator=f"{VALUES['operator']['image']['repository']}:{VERSION}",
        trainer=f"localhost/expiry-test-trainer:{VERSION}",
    )


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The image's root file system (a fresh working container's, removed afterwards)."""
    container = buildah("from", "--pull=never", image)
    try:
        yield Path(buildah("mount", container))
    finally:
        buildah("rm", container)


def base_of(image: str) -> str:
    """The base the image was built on (scripts/build-images labels it)."""
    return buildah(
        "inspect", "--type", "image", "--format", '{{index .OCIv1.Config.Labels "io.expiry.base"}}', image
    )
