"""``expiry-operator inject``: the preview CLI, run as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.injection_checks import check_injected, sidecars
from tests.operator.pod_corpus import DENIED_CASES, INJECTED_CASES, JOBSET_POD, SKIPPED_CASES

OPERATOR = str(Path(sys.executable).parent / "expiry-operator")
TEMPLATE = {"metadata": JOBSET_POD["metadata"], "spec": JOBSET_POD["spec"]}


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPERATOR, *args], check=False, input=stdin, capture_output=True, text=True, timeout=60
    )


def write(tmp_path: Path, *documents: Any) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


WORKLOADS = {
    "Job": {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"template": TEMPLATE},
    },
    "Deployment": {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": TEMPLATE},
    },
    "StatefulSet": {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "s"},
        "spec": {"serviceName": "s", "selector": {"matchLabels": {"a": "b"}}, "template": TEMPLATE},
    },
    "CronJob": {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": TEMPLATE}}},
    },
}


def template_pod(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        obj = obj[key]
    return {"apiVersion": "v1", "kind": "Pod", **obj}


def test_a_pod_prints_as_admission_would_make_it(tmp_path: Path) -> None:
    result = run("inject", "-f", str(write(tmp_path, INJECTED_CASES["pytorchjob-worker"])))
    assert result.returncode == 0, result.stderr
    check_injected(INJECTED_CASES["pytorchjob-worker"], yaml.safe_load(result.stdout))


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_workload_templates_are_injected(tmp_path: Path, kind: str) -> None:
    result = run("inject", "-f", str(write(tmp_path, WORKLOADS[kind])), "-o", "json")
    assert result.returncode == 0, result.stderr
    path = ("spec", "jobTemplate", "spec", "template") if kind == "CronJob" else ("spec", "template")
    check_injected(
        template_pod(WORKLOADS[kind], path) | {"metadata": TEMPLATE["metadata"]},
        template_pod(json.loads(result.stdout), path),
    )


def test_pytorchjob_replica_templates_are_injected(tmp_path: Path) -> None:
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "mnist"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, "template": TEMPLATE},
                "Worker": {"replicas": 3, "template": TEMPLATE},
            }
        },
    }
    result = run("inject", "-f", str(write(tmp_path, job)))
    assert result.returncode == 0, result.stderr
    for replica in ("Master", "Worker"):
        injected = yaml.safe_load(result.stdout)["spec"]["pytorchReplicaSpecs"][replica]["template"]
        assert len(sidecars({"spec": injected["spec"]})) == 1


def test_multi_document_files_keep_their_order_and_unknown_kinds(tmp_path: Path) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc"},
        "spec": {"ports": [{"port": 80}]},
    }
    documents = [INJECTED_CASES["jobset"], service, SKIPPED_CASES["not-annotated"]]
    result = run("inject", "-f", "-", stdin=yaml.safe_dump_all(documents))
    assert result.returncode == 0, result.stderr
    out = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in out] == ["Pod", "Service", "Pod"]
    assert out[1:] == documents[1:]
    assert len(sidecars(out[0])) == 1


def test_preview_output_fed_back_is_unchanged(tmp_path: Path) -> None:
    once = run("inject", "-f", str(write(tmp_path, INJECTED_CASES["volcano"]))).stdout
    assert run("inject", "-f", "-", stdin=once).stdout == once


def test_old_cluster_version_gives_a_regular_sidecar(tmp_path: Path) -> None:
    result = run(
        "inject", "-f", str(write(tmp_path, INJECTED_CASES["jobset"])), "--kubernetes-version", "1.27"
    )
    assert sidecars(yaml.safe_load(result.stdout))[0][0] == "containers"


@pytest.mark.parametrize("name", ["host-pid", "bad-signal", "uids-disagree"])
def test_a_denial_exits_2_with_one_line(tmp_path: Path, name: str) -> None:
    pod, words = DENIED_CASES[name]
    result = run("inject", "-f", str(write(tmp_path, pod)))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and all(word in result.stderr for word in words)
    assert "Pod/" in result.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [("a: [unclosed", "not valid YAML"), ("- just\n- a list\n", "not a Kubernetes object")],
)
def test_unreadable_manifests_exit_2_with_one_line(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run("inject", "-f", str(path))
    assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1


def test_a_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run("inject", "-f", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr and result.stderr.count("\n") == 1


def test_a_bad_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("sidecar:\n  nativeSidecar: sometimes\n")
    result = run("inject", "-f", str(write(tmp_path, JOBSET_POD)), "--config", str(config))
    assert result.returncode == 2 and "sidecar.nativeSidecar" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_run_with_a_bad_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("webhook:\n  port: many\n")
    result = run("run", "--config", str(config))
    assert result.returncode == 2 and "webhook.port" in result.stderr and result.stderr.count("\n") == 1


def test_a_character_beyond_u_ffff_escaped_as_json_does_is_that_character(tmp_path: Path) -> None:
    """json.dumps writes 😀 as the escape pair \\ud83d\\ude00; PyYAML read it as two lone surrogates,
    which made inject end in a TypeError from orjson (found by scripts/fuzz)."""
    pod = json.loads(json.dumps(JOBSET_POD))
    pod["spec"]["containers"][0]["name"] = "trainer-\U0001f600"  # the injection record names it
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(pod))  # ensure_ascii: the pairs, escaped
    assert "\\ud83d\\ude00" in path.read_text()
    result = run("inject", "-f", str(path))
    assert result.returncode == 0, result.stderr
    injected = yaml.safe_load(result.stdout)
    assert injected["spec"]["containers"][0]["name"] == "trainer-\U0001f600"
    assert "trainer-\U0001f600" in injected["metadata"]["annotations"]["expiry.io/injection"]


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ('{"kind": "Pod", "metadata": {"name": "p\\ud800"}}', "document 1: metadata.name:"),
        ('{"kind": "Pod", "metadata": {"labels": {"\\udc00": "x"}}}', "document 1: metadata.labels:"),
    ],
)
def test_an_unpaired_surrogate_exits_2_naming_the_field(tmp_path: Path, document: str, where: str) -> None:
    path = tmp_path / "pod.json"
    path.write_text(document)
    result = run("inject", "-f", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert f"{where} a lone UTF-16 surrogate" in result.stderr


def test_a_config_file_with_an_unpaired_surrogate_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text('sidecar: {image: "expiry\\ud800"}\n')
    result = run("inject", "-f", str(write(tmp_path, JOBSET_POD)), "--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert "sidecar.image: a lone UTF-16 surrogate" in result.stderr
