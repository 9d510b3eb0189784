"""charts/expiry/README.md's values table is what values.yaml's ``# --`` comments say
(scripts/chart_readme.py), covering every value; docs/install.md links to it instead of its own table."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import Helm

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "chart_readme.py"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def check(chart: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--chart", str(chart), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_committed_readme_is_up_to_date(helm: Helm) -> None:
    result = check(helm.chart, "--check")
    assert result.returncode == 0, result.stderr


def test_a_changed_default_makes_the_readme_stale_until_regenerated(helm: Helm, tmp_path: Path) -> None:
    chart = tmp_path / "expiry"
    shutil.copytree(helm.chart, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("  replicas: 2\n", "  replicas: 3\n", 1))
    stale = check(chart, "--check")
    assert stale.returncode == 1
    assert "README.md is out of date" in stale.stderr
    assert check(chart).returncode == 0
    assert check(chart, "--check").returncode == 0
    assert "| `operator.replicas` | int | `3` |" in (chart / "README.md").read_text()


def test_comments_attach_to_the_key_below_with_their_continuation_lines(generator: ModuleType) -> None:
    text = (
        "# Section comment: not a value's description.\n"
        "a:\n"
        "  # -- First line\n"
        "  # second line.\n"
        "  b: 1\n"
        "  c:\n"
        "    # -- Deep.\n"
        "    d: x\n"
        "# -- Lost: a blank line follows.\n"
        "\n"
        "e: 2\n"
        "# -- A whole map.\n"
        "f: {g: 1}\n"
    )
    assert generator.documented_keys(text) == {
        "a.b": "First line second line.",
        "a.c.d": "Deep.",
        "f": "A whole map.",
    }


def leaves(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        return [leaf for key, value in values.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_the_table_covers_every_value(helm: Helm, generator: ModuleType) -> None:
    documented = {value.path for value in generator.documented_values(helm.chart / "values.yaml")}
    values = yaml.safe_load((helm.chart / "values.yaml").read_text())
    uncovered = [
        leaf
        for leaf in leaves(values)
        if not any(leaf == path or leaf.startswith(path + ".") for path in documented)
    ]
    assert uncovered == [], "values without a '# --' comment on themselves or a parent"


def test_install_doc_links_to_the_generated_table_instead_of_its_own() -> None:
    install = (ROOT / "docs" / "install.md").read_text()
    assert "charts/expiry/README.md#values" in install
    assert "| value | default |" not in install
