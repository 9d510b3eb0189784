"""The install commands of docs/install.md and docs/quickstart.md work as written (rendered with
`helm template` instead; tests/cluster runs the quickstart's for real)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Helm

DOCS = [Path(__file__).resolve().parents[2] / "docs" / page for page in ("install.md", "quickstart.md")]
# `helm install` options that only matter against a live cluster.
CLUSTER_ONLY = {"--wait", "--create-namespace"}


def documented_installs() -> list[str]:
    """Every `helm install ...` command in the doc's shell blocks, continuation lines joined."""
    blocks = [b for doc in DOCS for b in re.findall(r"```sh\n(.*?)```", doc.read_text(), flags=re.DOTALL)]
    commands = [c.strip() for block in blocks for c in block.replace("\\\n", " ").splitlines()]
    return [c for c in commands if c.startswith("helm install ")]


def test_the_doc_has_install_commands() -> None:
    assert len(documented_installs()) >= 4


@pytest.mark.parametrize("command", documented_installs())
def test_documented_install_renders(helm: Helm, command: str, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text(helm.byo_ca_pem)  # what --set-file reads in the BYO example
    args = [a for a in shlex.split(command)[2:] if a not in CLUSTER_ONLY]
    args = [str(helm.chart) if a == "charts/expiry" else a for a in args]
    apis = [f"--api-versions={api}" for api in (*helm.monitoring_apis, *helm.cert_manager_apis)]
    result = helm.run("template", *args, *apis, cwd=tmp_path)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    assert "kind: MutatingWebhookConfiguration" in result.stdout
