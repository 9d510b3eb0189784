"""One version everywhere: the three packages, the chart (SemVer spelling of the same version), its
appVersion (the image tag the chart installs) and the operator's default sidecar image; and it is
not a version CHANGELOG.md lists as released."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import expiry
import expiry_operator
import expiry_sidecar
from expiry_operator.settings import SidecarSettings

ROOT = Path(__file__).resolve().parents[1]


def semver(pep440: str) -> str:
    """0.2.0.dev0 -> 0.2.0-dev.0, 0.2.0rc1 -> 0.2.0-rc.1, 0.2.0 -> 0.2.0."""
    match = re.fullmatch(r"(\d+\.\d+\.\d+)(?:\.?(dev|rc|a|b)(\d+))?", pep440)
    assert match, pep440
    release, kind, number = match.groups()
    return release if kind is None else f"{release}-{kind}.{number}"


def test_every_part_carries_the_one_version() -> None:
    versions = {
        part: tomllib.loads((ROOT / part / "pyproject.toml").read_text())["project"]["version"]
        for part in ("client", "sidecar", "operator")
    }
    (version,) = set(versions.values())
    assert expiry.__version__ == expiry_sidecar.__version__ == expiry_operator.__version__ == version
    chart = yaml.safe_load((ROOT / "charts" / "expiry" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert chart["version"] == semver(version)
    assert SidecarSettings().image.endswith(f":{version}")


def test_the_version_is_not_one_already_released() -> None:
    version = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]["version"]
    released = re.findall(r"^## (\d+\.\d+\.\d+) - ", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert released, "CHANGELOG.md lists no release"
    release = version.split(".dev")[0].split("rc")[0]
    assert release not in released, (
        f"{version} is a pre-release of {release}, which CHANGELOG.md lists as released"
    )
