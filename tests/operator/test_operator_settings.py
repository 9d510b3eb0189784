"""The operator's config file: defaults, camelCase keys, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from expiry_operator.settings import ConfigError, Settings, load_settings


def test_every_key_is_optional(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert load_settings(tmp_path / "empty.yaml") == Settings() == load_settings(None)


def test_the_contract_defaults() -> None:
    settings = Settings()
    assert settings.sidecar.image == "ghcr.io/expiry-io/expiry-sidecar:0.2.0.dev0"
    assert settings.sidecar.resources == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }
    assert (settings.webhook.port, settings.health.port, settings.metrics.port) == (8443, 8080, 9465)
    assert (settings.sidecar.native_sidecar, settings.sidecar.stack_dumps, settings.sidecar.events) == (
        "auto",
        "off",
        True,
    )
    assert settings.sidecar.pod_condition is False
    assert settings.sidecar.env == ()
    assert settings.shutdown.drain_seconds == 0  # a direct run stops at once; the chart sets a drain


def test_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(
        "sidecar:\n  image: reg/sidecar:1\n  nativeSidecar: false\n  escalateAfter: 3\n"
        "  mode: observe\n  deadlines: adaptive\n  adaptiveFactor: 3\n  adaptiveMinSamples: 50\n"
        "  adaptiveFloor: 2.5\n"
        "  resources: {requests: {cpu: 20m}}\n  podCondition: true\n"
        "  env: [{name: HTTPS_PROXY, value: 'http://p:3128'},\n"
        "        {name: T, valueFrom: {fieldRef: {fieldPath: x}}}]\n"
        "webhook: {certFile: /c, keyFile: /k}\n"
        "unprotectedPods: {watch: false}\n"
        "shutdown: {drainSeconds: 12.5}\n"
    )
    settings = load_settings(path)
    assert settings.sidecar.image == "reg/sidecar:1"
    assert settings.sidecar.native_sidecar == "false"  # YAML's unquoted false is accepted
    assert settings.sidecar.escalate_after == 3
    assert (settings.sidecar.mode, settings.sidecar.deadlines) == ("observe", "adaptive")
    assert (
        settings.sidecar.adaptive_factor,
        settings.sidecar.adaptive_min_samples,
        settings.sidecar.adaptive_floor,
    ) == (3, 50, 2.5)
    assert settings.sidecar.resources == {"requests": {"cpu": "20m"}}
    assert settings.sidecar.pod_condition is True
    assert (settings.webhook.cert_file, settings.webhook.key_file) == ("/c", "/k")
    assert settings.unprotected_pods.watch is False
    assert settings.shutdown.drain_seconds == 12.5
    assert settings.sidecar.env == (
        {"name": "HTTPS_PROXY", "value": "http://p:3128"},
        {"name": "T", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("sidecar: {imagePullPolcy: Always}", "sidecar: unknown key(s) imagePullPolcy"),
        ("webhook: {port: 70000}", "webhook.port"),
        ("sidecar: {stackDumps: always}", "sidecar.stackDumps"),
        ("sidecar: {podCondition: maybe}", "sidecar.podCondition"),
        ("sidecar: {escalateAfter: -1}", "sidecar.escalateAfter"),
        ("sidecar: {mode: audit}", "sidecar.mode must be one of enforce, observe"),
        ("sidecar: {deadlines: learned}", "sidecar.deadlines must be one of requested, adaptive"),
        ("sidecar: {adaptiveFactor: 0}", "sidecar.adaptiveFactor must be a finite number > 0"),
        ("sidecar: {adaptiveFloor: .inf}", "sidecar.adaptiveFloor"),
        ("sidecar: {adaptiveMinSamples: 2.5}", "sidecar.adaptiveMinSamples must be a whole number"),
        ("sidecar: {resources: {requests: {memory: lots}}}", "sidecar.resources.requests.memory"),
        ("sidecar: [1]", "sidecar must be a mapping"),
        ("health: {port: 8080}\nextra: 1", "unknown key(s) extra"),
        ("a: [", "not valid YAML"),
        ("shutdown: {drainSeconds: -1}", "shutdown.drainSeconds"),
        ("shutdown: {drain: 1}", "shutdown: unknown key(s) drain"),
        ("sidecar: {env: {A: b}}", "sidecar.env must be a list"),
        ("sidecar: {env: [{value: b}]}", "sidecar.env[0] must be a mapping with a non-empty name"),
        ("sidecar: {env: [{name: EXPIRY_POD_NAME, value: b}]}", "EXPIRY_POD_NAME is the sidecar's own"),
        (
            "sidecar: {env: [{name: A}]}",
            "sidecar.env[0] must have exactly name and one of value or valueFrom",
        ),
        ("sidecar: {env: [{name: A, value: b, valueFrom: {}}]}", "exactly name and one of value"),
        ("sidecar: {env: [{name: A, value: 1}]}", "sidecar.env[0].value must be a string"),
        ("sidecar: {env: [{name: A, valueFrom: x}]}", "sidecar.env[0].valueFrom must be a mapping"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert words in str(error.value)
