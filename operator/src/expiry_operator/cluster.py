"""What the operator needs to know about the cluster: does it run native sidecars?"""

from __future__ import annotations

import re
from collections.abc import Mapping

NATIVE_SIDECARS_SINCE = (1, 29)
"""SidecarContainers is beta and on by default from Kubernetes 1.29 (alpha, off by default, in 1.28)."""

_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int]:
    """``"1.29"``, ``"v1.30.2-eks-1234"`` -> (1, 29), (1, 30); raises ValueError on anything else."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes version such as 1.29 or v1.30.2")
    return int(match.group(1)), int(match.group(2))


def server_version(version_info: Mapping[str, object]) -> tuple[int, int]:
    """The version from the API server's ``/version`` document (gitVersion, or major/minor like "29+")."""
    git_version = version_info.get("gitVersion")
    if isinstance(git_version, str) and _VERSION.match(git_version):
        return parse_version(git_version)
    major, minor = str(version_info.get("major", "")), str(version_info.get("minor", ""))
    return parse_version(f"{major.rstrip('+')}.{minor.rstrip('+')}")


def supports_native_sidecars(version: tuple[int, int]) -> bool:
    return version >= NATIVE_SIDECARS_SINCE
