"""The image rules, checked on the parsed Dockerfiles: a pinned python:3.11 slim base, a numeric non-root
USER, an exec-form ENTRYPOINT that is the console script. The images themselves are built and run in
test_image_contents.py and test_pod.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"sidecar": "expiry-sidecar", "operator": "expiry-operator"}
PINNED_PYTHON = re.compile(
    r"^python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?$|^python:3\.11[^@]*@sha256:[0-9a-f]{64}$"
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def stages(dockerfile: Path) -> list[list[Instruction]]:
    """The build stages, each a list of its instructions (comments dropped, ARGs substituted in FROM)."""
    parser = DockerfileParser(str(dockerfile))
    bases = iter(parser.parent_images)
    result: list[list[Instruction]] = []
    for item in parser.structure:
        keyword, value = item["instruction"], item["value"]
        if keyword == "FROM":
            result.append([Instruction(keyword, next(bases))])
        elif keyword not in ("COMMENT", "ARG") and result:
            result[-1].append(Instruction(keyword, value))
    return result


def exec_form(instruction: Instruction) -> list[str]:
    words = json.loads(instruction.value)
    assert isinstance(words, list), f"{instruction.keyword} must be in exec form (a JSON list)"
    return [str(w) for w in words]


def final_value(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


@pytest.fixture(params=sorted(IMAGES), ids=sorted(IMAGES))
def part(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_base_is_a_pinned_python_3_11_slim(part: str) -> None:
    for stage in stages(REPO / part / "Dockerfile"):
        base = stage[0].value
        assert PINNED_PYTHON.match(base), (
            f"{part}/Dockerfile: base {base!r} is not an exact python:3.11 slim tag"
        )


def test_final_stage_runs_as_a_numeric_non_root_user(part: str) -> None:
    user = final_value(stages(REPO / part / "Dockerfile")[-1], "USER").value
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric UID lets Kubernetes enforce runAsNonRoot"
    assert int(uid) != 0


def test_entrypoint_is_the_console_script(part: str) -> None:
    assert exec_form(final_value(stages(REPO / part / "Dockerfile")[-1], "ENTRYPOINT")) == [IMAGES[part]]
