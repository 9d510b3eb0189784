"""What the built images hold: exactly the locked dependencies, and nothing of the build machine.

The images' root file systems are mounted from buildah storage and compared with their base image and
with the lock (uv.lock, exported per image by scripts/lock into <part>/requirements.txt).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from email.parser import HeaderParser
from pathlib import Path

import pytest

from tests.images.conftest import REPO, Images, base_of, mounted

pytestmark = pytest.mark.timeout(1200)  # the first test may build the images (scripts/build-images)

PARTS = ("sidecar", "operator")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path, top: str) -> dict[str, str]:
    """Every entry under ``root/top``: relative path -> what it is (file content hash, link target, dir)."""
    entries: dict[str, str] = {}
    for directory, dirs, files in os.walk(root / top.lstrip("/")):
        for name in dirs + files:
            path = Path(directory) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                entries[key] = "dir"
            else:
                entries[key] = digest(path)
    return entries


@pytest.fixture(scope="module", params=PARTS)
def part(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def rootfs(images: Images, part: str) -> Iterator[Path]:
    with mounted(images.of(part)) as root:
        yield root


@pytest.fixture(scope="module")
def base_rootfs(images: Images, part: str) -> Iterator[Path]:
    with mounted(base_of(images.of(part))) as root:
        yield root


def locked(part: str) -> dict[str, str]:
    """name -> version, as the image should have it: the exported lock plus the local packages."""
    pins = dict(
        re.findall(
            r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)",
            (REPO / part / "requirements.txt").read_text(),
            re.M,
        )
    )
    for local in ("client", part):
        project = tomllib.loads((REPO / local / "pyproject.toml").read_text())["project"]
        pins[project["name"]] = project["version"]
    return {canonical(name): version for name, version in pins.items()}


def installed(root: Path) -> dict[str, str]:
    """name -> version of every distribution in the image's /opt/expiry virtualenv."""
    found = {}
    for metadata in root.glob("opt/expiry/lib/python3*/site-packages/*.dist-info/METADATA"):
        headers = HeaderParser().parsestr(metadata.read_text(errors="replace"))
        found[canonical(headers["Name"])] = headers["Version"]
    return found


def test_the_image_holds_exactly_the_locked_versions(rootfs: Path, part: str) -> None:
    have = installed(rootfs)  # the Dockerfile removes the virtualenv's own pip and setuptools
    want = locked(part)
    assert have, "no distributions found in /opt/expiry"
    assert have == want, {
        "not in the lock": sorted(set(have) - set(want)),
        "locked but missing": sorted(set(want) - set(have)),
        "other version": {n: (have[n], want[n]) for n in set(have) & set(want) if have[n] != want[n]},
    }


def test_the_lock_and_its_exports_are_current() -> None:
    """uv.lock satisfies every pyproject.toml and each image's requirements.txt is its export (offline)."""
    uv = Path(sys.executable).with_name("uv")
    result = subprocess.run(
        [str(REPO / "scripts/lock"), "--check"],
        capture_output=True, text=True, check=False, env={**os.environ, "UV": str(uv)}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_no_host_certificates_test_files_or_caches(rootfs: Path, base_rootfs: Path) -> None:
    # /etc is the base's, to the byte: the host's /etc/ssl/certs was mounted into RUN steps only.
    assert tree(rootfs, "/etc") == tree(base_rootfs, "/etc")
    assert sorted(os.listdir(rootfs / "tmp")) == sorted(os.listdir(base_rootfs / "tmp"))
    assert sorted(os.listdir(rootfs / "root")) == sorted(os.listdir(base_rootfs / "root"))
    assert not (rootfs / "src").exists(), "the build stage's sources shipped"
    repo_tests = {digest(p) for p in (REPO / "tests").rglob("*") if p.is_file() and p.stat().st_size > 0}
    host_bundle = digest(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.exists() else None
    added = tree(rootfs, "/opt")
    assert added, "/opt is empty"
    for path, what in added.items():
        assert what != host_bundle, f"{path} is the build machine's CA bundle"
        assert what not in repo_tests, f"{path} is one of the repository's test files"
        parts = Path(path).parts
        assert not {".cache", ".pytest_cache", ".mypy_cache", ".ruff_cache"} & set(parts), path
        assert not path.endswith((".whl", ".tar.gz")), f"{path}: a downloaded package left behind"
