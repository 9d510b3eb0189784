"""`helm upgrade --reuse-values` from every earlier chart: today's templates and schema with the values of
each earlier values.yaml in this repository's history.

With --reuse-values, helm renders the new templates with the *previous release's* values (the old
chart's values.yaml merged with what the user set), not the new chart's defaults (helm's
action/upgrade.go, reuseValues), and checks them against the new schema. So every value added since
must be read with a default (`dig`, `default`), and the schema must not require it. The real upgrade
against an API server (install, then upgrade with --reuse-values, namespace flag included, as
docs/install.md says) is for the real-cluster suite; this renders exactly what that upgrade renders.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from expiry_operator.settings import settings_from_dict

if TYPE_CHECKING:
    from conftest import Helm

REPO = Path(__file__).resolve().parents[2]
VALUES = "charts/expiry/values.yaml"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def earlier_values() -> list[tuple[str, str]]:
    """(commit, values.yaml) for every commit that changed values.yaml, oldest first."""
    commits = git("log", "--reverse", "--format=%h", "--", VALUES).split()
    if len(commits) < 2:
        pytest.fail(f"git history of {VALUES} has {len(commits)} commit(s): the tests need a full clone")
    return [(commit, git("show", f"{commit}:{VALUES}")) for commit in commits]


EARLIER = earlier_values()


@pytest.mark.parametrize(("commit", "values"), EARLIER, ids=[commit for commit, _ in EARLIER])
@pytest.mark.parametrize("kube", ["old", "new"])
def test_todays_templates_render_with_the_values_of_an_earlier_chart(
    helm: Helm, tmp_path: Path, commit: str, values: str, kube: str
) -> None:
    chart = tmp_path / "expiry"
    shutil.copytree(helm.chart, chart)
    (chart / "values.yaml").write_text(values)
    apis = [
        flag for api in (*helm.monitoring_apis, *helm.cert_manager_apis) for flag in ("--api-versions", api)
    ]
    result = helm.run(
        "template",
        helm.release,
        str(chart),
        "--namespace",
        helm.namespace,
        "--kube-version",
        helm.old_kube if kube == "old" else helm.new_kube,
        *apis,
    )
    assert result.returncode == 0, f"values.yaml of {commit}:\n{result.stderr}"
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and "operator.yaml" in o.get("data", {}))
    settings_from_dict(yaml.safe_load(config_map["data"]["operator.yaml"]))  # the operator starts with it


def test_the_history_reaches_back_before_the_latest_values() -> None:
    """The check above means something only while the history holds values.yaml versions that lack
    values today's chart has (e.g. podCondition, added after the first chart)."""
    first = yaml.safe_load(EARLIER[0][1])
    today = yaml.safe_load((REPO / VALUES).read_text())
    assert set(today) - set(first), "the first values.yaml already had every top-level key of today's"
