"""Each Dockerfile installs a working program, checked without a docker engine.

The Dockerfile's own `pip install` steps are read (through its WORKDIR and COPY lines, mapped back to the
build context = the repository root) and run for real into a fresh virtualenv, then its ENTRYPOINT (and
its CMD's subcommand) must answer --help. The image rules are checked on the parsed file: a pinned
python:3.11 base, a non-root USER, an exec-form ENTRYPOINT.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import subprocess
import sys
import venv
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


def pip_installs(stage: list[Instruction]) -> list[list[str]]:
    """The arguments of every `pip install` in a stage, local paths mapped back to the build context."""
    workdir = "/"
    copied: dict[str, str] = {}  # path in the image -> path in the build context
    installs: list[list[str]] = []
    for instruction in stage:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.value)
        elif instruction.keyword == "COPY" and not instruction.value.startswith("--from"):
            *sources, dest = shlex.split(instruction.value)
            for source in sources:
                copied[posixpath.normpath(posixpath.join(workdir, dest))] = source
        elif instruction.keyword == "RUN":
            words = shlex.split(instruction.value)
            for i, word in enumerate(words[:-1]):
                if (word == "pip" or word.endswith("/pip")) and words[i + 1] == "install":
                    args = []
                    for arg in words[i + 2 :]:
                        if arg in ("&&", ";", "||"):
                            break
                        args.append(from_context(arg, workdir, copied))
                    installs.append(args)
    return installs


def from_context(arg: str, workdir: str, copied: dict[str, str]) -> str:
    """A pip argument as it reads on the build context: ./sidecar[events] -> /repo/sidecar[events]."""
    if not arg.startswith(("./", "/", "../")):
        return arg  # an option or a requirement from the index
    match = re.fullmatch(r"([^\[]+)(\[.*\])?", arg)
    assert match, f"cannot read the pip argument {arg!r}"
    path, extras = match.groups()
    in_image = posixpath.normpath(posixpath.join(workdir, path))
    assert in_image in copied, f"pip installs {arg}, which no COPY put at {in_image}"
    return str(REPO / copied[in_image]) + (extras or "")


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


def test_the_install_step_reads_the_repository_layout() -> None:
    stage = [
        Instruction("WORKDIR", "/src"),
        Instruction("COPY", "client ./client"),
        Instruction("COPY", "sidecar sidecar/"),
        Instruction("RUN", '/venv/bin/pip install --no-deps ./client "./sidecar[events]" && rm -rf /src'),
    ]
    assert pip_installs(stage) == [["--no-deps", str(REPO / "client"), str(REPO / "sidecar") + "[events]"]]
    with pytest.raises(AssertionError, match="no COPY"):
        pip_installs([Instruction("RUN", "pip install ./operator")])


def test_installed_entrypoint_answers_help(part: str, tmp_path: Path) -> None:
    """A real pip install of the local packages, as the Dockerfile does it, into a fresh virtualenv."""
    stage = stages(REPO / part / "Dockerfile")[0]  # the build stage
    installs = pip_installs(stage)
    assert installs, f"{part}/Dockerfile installs nothing with pip"
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    for args in installs:
        result = subprocess.run(
            [str(env / "bin" / "pip"), "install", "--quiet", *args],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, f"pip install {' '.join(args)}:\n{result.stderr[-3000:]}"
    final = stages(REPO / part / "Dockerfile")[-1]
    program = env / "bin" / exec_form(final_value(final, "ENTRYPOINT"))[0]
    assert program.exists(), f"the install did not provide {program.name}"
    for argv in ([], exec_form(final_value(final, "CMD"))[:1]):
        result = subprocess.run(
            [str(program), *argv, "--help"], capture_output=True, text=True, check=False, timeout=120
        )
        assert result.returncode == 0, f"{program.name} {' '.join(argv)} --help:\n{result.stderr}"
        assert "usage" in result.stdout.lower()
    # The program must come from the fresh install, not from the development tree.
    module = "expiry_sidecar" if part == "sidecar" else "expiry_operator"
    where = subprocess.run(
        [str(env / "bin" / "python"), "-c", f"import {module}; print({module}.__file__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert str(env) in where.stdout, where.stdout
    assert sys.prefix not in where.stdout
