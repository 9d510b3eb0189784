"""The operator's logs (JSON by default, kopf's lines included, like the sidecar's) and build info."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from expiry_operator import __version__
from expiry_operator.logs import JsonFormatter
from tests.operator.operator_harness import KubeApi, OperatorProcess, make_tls


def test_every_line_is_json_with_the_sidecars_keys_and_kopf_speaks_it_too(tmp_path: Path) -> None:
    with KubeApi() as api, OperatorProcess(api, make_tls(tmp_path / "tls"), tmp_path / "op") as operator:
        metrics = operator.metrics()
    entries = [json.loads(line) for line in operator.log().splitlines()]
    assert entries, "the operator logged nothing"
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    loggers = {entry["logger"] for entry in entries}
    assert any(name.startswith("kopf") for name in loggers), loggers
    assert any(name.startswith("expiry_operator") for name in loggers), loggers
    assert f'expiry_build_info{{component="operator",version="{__version__}"}} 1.0' in metrics
    assert "_created" not in metrics, "prometheus_client's _created series are exported"


def test_text_format_for_a_terminal(tmp_path: Path) -> None:
    with (
        KubeApi() as api,
        OperatorProcess(
            api, make_tls(tmp_path / "tls"), tmp_path / "op", extra_args=("--log-format", "text")
        ) as operator,
    ):
        pass
    lines = operator.log().splitlines()
    assert any(" INFO expiry_operator.webhook: serving the webhook on https://" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)


def test_kopfs_object_reference_becomes_one_field() -> None:
    record = logging.LogRecord("kopf.objects", logging.WARNING, __file__, 1, "Handler failed", None, None)
    record.k8s_ref = {"namespace": "ml", "name": "trainer-0", "uid": "u"}
    record.settings = object()  # kopf attaches its settings: not for the log
    entry = json.loads(JsonFormatter().format(record))
    assert entry["object"] == "ml/trainer-0"
    assert "settings" not in entry and "k8s_ref" not in entry
