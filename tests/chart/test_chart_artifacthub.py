"""What Artifact Hub and `helm show readme` show of the packaged chart: its annotations and a README whose
links work outside the repository (absolute, and pointing at files and headings that exist)."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.chart.conftest import Helm

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = "https://github.com/expiry-io/expiry/"
LINK = re.compile(r"\]\(([^)\s]+)\)")
CHANGE_KINDS = {"added", "changed", "deprecated", "removed", "fixed", "security"}


def chart_yaml() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "charts/expiry/Chart.yaml").read_text())
    return document


def annotation(name: str) -> Any:
    return yaml.safe_load(chart_yaml()["annotations"][f"artifacthub.io/{name}"])


@pytest.fixture(scope="module")
def packaged(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("package")
    result = helm.run("package", str(helm.chart), "--destination", str(out))
    assert result.returncode == 0, result.stderr
    (chart,) = out.glob("expiry-*.tgz")
    return chart


def test_the_images_annotation_names_the_images_the_chart_deploys(helm: Helm) -> None:
    rendered = helm.render()
    config = yaml.safe_load(rendered.one("ConfigMap", "expiry")["data"]["operator.yaml"])
    deployed = {
        rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        config["sidecar"]["image"],
    }
    assert {image["image"] for image in annotation("images")} == deployed
    assert {image["name"] for image in annotation("images")} == {"expiry-operator", "expiry-sidecar"}


def test_links_changes_and_icon_are_well_formed() -> None:
    assert all(link["name"] and link["url"].startswith("https://") for link in annotation("links"))
    changes = annotation("changes")
    assert changes and all(change["kind"] in CHANGE_KINDS and change["description"] for change in changes)
    assert chart_yaml()["icon"].startswith("https://")


def repository_file(url: str) -> Path | None:
    """The file of the repository an absolute link to its main branch points at (None: another site)."""
    for kind in ("blob/main/", "tree/main/"):
        if url.startswith(REPOSITORY + kind):
            return ROOT / url.removeprefix(REPOSITORY + kind).split("#")[0]
    prefix = "https://raw.githubusercontent.com/expiry-io/expiry/main/"
    return ROOT / url.removeprefix(prefix) if url.startswith(prefix) else None


def github_anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_icon_and_the_links_point_at_files_that_exist() -> None:
    urls = [chart_yaml()["icon"], *(link["url"] for link in annotation("links"))]
    for url in urls:
        path = repository_file(url)
        assert path is not None and path.exists(), url


def test_the_packaged_readme_has_only_absolute_links_that_resolve(helm: Helm, packaged: Path) -> None:
    result = helm.run("show", "readme", str(packaged))
    assert result.returncode == 0, result.stderr
    links = LINK.findall(result.stdout)
    assert links, "no links found: the pattern no longer matches the README"
    for url in links:
        assert url.startswith(("https://", "#")), f"{url} does not work outside the repository"
        path = repository_file(url)
        if path is None:
            continue
        assert path.exists(), f"{url}: no such file in the repository"
        if "#" in url and path.suffix == ".md":
            assert url.split("#")[1] in github_anchors(path.read_text()), f"{url}: no such heading"


def test_the_package_carries_the_readme_and_the_schema(packaged: Path) -> None:
    with tarfile.open(packaged) as archive:
        members = set(archive.getnames())
    assert {"expiry/README.md", "expiry/values.schema.json", "expiry/Chart.yaml"} <= members
