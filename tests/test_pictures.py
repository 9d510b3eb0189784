"""docs/pictures: each SVG is what graphviz makes of its committed .dot source (scripts/pictures)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PICTURES = ROOT / "docs" / "pictures"
SOURCES = sorted(PICTURES.glob("*.dot"))


def test_there_are_pictures() -> None:
    assert {source.stem for source in SOURCES} >= {"pod", "kill-sequence"}


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_each_svg_is_current(source: Path, tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.fail("graphviz's dot is not installed: run scripts/bootstrap dev")
    copy = tmp_path / "docs" / "pictures"
    copy.mkdir(parents=True)
    shutil.copy(source, copy)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "pictures", tmp_path / "scripts")
    subprocess.run([str(tmp_path / "scripts" / "pictures")], check=True, timeout=60)
    svg = source.with_suffix(".svg")
    assert svg.is_file(), f"{svg.name} is missing: run scripts/pictures"
    assert (copy / svg.name).read_text() == svg.read_text(), f"{svg.name} is stale: run scripts/pictures"
