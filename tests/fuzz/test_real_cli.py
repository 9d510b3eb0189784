"""A few of the fuzzers' inputs through the real installed commands, as a user runs them: exit status
and one line on stderr, never a traceback (the fuzzers call the same ``main()`` in-process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
OPERATOR, SIDECAR = str(BIN / "expiry-operator"), str(BIN / "expiry-sidecar")

MANIFESTS = {
    "metadata-a-string": (b"apiVersion: v1\nkind: Pod\nmetadata: x\nspec: {containers: [{name: a}]}\n", 2),
    "spec-true": (b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: true\n", 2),
    "env-a-number": (
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {expiry.io/enabled: 'true'}}\n"
        b"spec: {containers: [{name: a, env: [7]}]}\n",
        2,
    ),
    "not-utf8": (b"kind: Pod\nmetadata: \xc3\x28\n", 2),
    "nested-too-deep": (b"[" * 5000, 2),
    "not-yaml": (b"a: [unclosed\n", 2),
    "a-list-not-an-object": (b"- just\n- a list\n", 2),
    "pytorchjob-replicas-a-list": (b"kind: PyTorchJob\nspec: {pytorchReplicaSpecs: [1, a]}\n", 0),
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_inject_answers_a_hostile_manifest_in_one_line(name: str, tmp_path: Path) -> None:
    data, status = MANIFESTS[name]
    path = tmp_path / "manifest.yaml"
    path.write_bytes(data)
    ways: list[tuple[list[str], bytes | None]] = [([OPERATOR, "inject", "-f", str(path)], None)]
    if name == "not-utf8":  # stdin is read as bytes too
        ways.append(([OPERATOR, "inject", "-f", "-"], data))
    for argv, stdin in ways:
        run = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
        assert run.returncode == status, run
        assert "Traceback" not in run.stderr.decode(errors="replace")
        assert len(run.stderr.splitlines()) == (status != 0), run.stderr


def test_a_hostile_state_file_is_one_line_for_advise(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        '{"expiry_state": 1, "boot_id": "x"}\n["blocks", 1, {"s": [1, ' + "9" * 400 + ", 1, 1, {}]}]\n"
    )
    run = subprocess.run(
        [SIDECAR, "advise", "--state-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run
    assert run.stderr.startswith(f"expiry-sidecar advise: cannot read {path}")


def test_a_config_file_nested_too_deep_is_one_line(tmp_path: Path) -> None:
    config, manifest = tmp_path / "operator.yaml", tmp_path / "pod.yaml"
    config.write_text("sidecar: " + "[" * 5000)
    manifest.write_text("kind: Pod\n")
    run = subprocess.run(
        [OPERATOR, "inject", "-f", str(manifest), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and run.stderr.splitlines() == [
        f"expiry-operator: config file {config} is nested too deeply"
    ], run


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([SIDECAR, "serve", "--metrics-port", "x"], "argument --metrics-port: not a TCP port"),
        ([SIDECAR, "serve", "--adaptive-factor", "nan"], "argument --adaptive-factor:"),
        ([SIDECAR, "advise"], "one of the arguments --url --state-file is required"),
        ([SIDECAR, "run"], "run needs a command"),
        ([OPERATOR, "inject"], "the following arguments are required: -f/--filename"),
        ([OPERATOR, "inject", "-f", "-", "-o", "toml"], "argument -o/--output: invalid choice: 'toml'"),
        ([OPERATOR, "run", "--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    ],
)
def test_a_refused_flag_is_exit_2_and_one_line_naming_it(argv: list[str], names: str) -> None:
    run = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL
    )
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run
    assert names in run.stderr and run.stdout == ""
