"""values.yaml documents every value, and values.schema.json (plus the chart's own checks) turns bad values
into a failed `helm lint` / `helm template` whose message names the value."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Helm

# (values, what the error message must contain)
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"operator": {"replicas": 0}}, "/operator/replicas"),
    ({"operator": {"replicaz": 2}}, "replicaz"),
    ({"operator": {"image": {"digest": "md5:abc"}}}, "/operator/image/digest"),
    ({"operator": {"ports": {"webhook": 70000}}}, "/operator/ports/webhook"),
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 60}}, "/webhook/timeoutSeconds"),
    ({"webhook": {"filter": "label"}}, "/webhook/filter"),
    ({"webhook": {"excludeNamespaces": ["Not_A_Namespace"]}}, "/webhook/excludeNamespaces/0"),
    ({"webhook": {"namespaceSelectorExpressions": [{"key": "team", "operator": "Equals"}]}}, "operator"),
    ({"tls": {"mode": "acme"}}, "/tls/mode"),
    ({"tls": {"mode": "secret"}}, "/tls"),
    ({"tls": {"mode": "secret", "secret": {"name": "my-tls"}}}, "caBundle"),
    ({"tls": {"secret": {"caBundle": "not a certificate"}}}, "/tls/secret/caBundle"),
    ({"tls": {"certManager": {"duration": "90 days"}}}, "/tls/certManager/duration"),
    ({"tls": {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}, "name"),
    ({"sidecar": {"stackDumps": "maybe"}}, "/sidecar/stackDumps"),
    ({"sidecar": {"nativeSidecar": True}}, "/sidecar/nativeSidecar"),
    ({"sidecar": {"killSignal": "SIG-TERM"}}, "/sidecar/killSignal"),
    ({"sidecar": {"adaptiveFactor": "2.5x"}}, "/sidecar/adaptiveFactor"),
    ({"sidecar": {"escalateAfter": -1}}, "/sidecar/escalateAfter"),
    ({"sidecar": {"events": "yes"}}, "/sidecar/events"),
    ({"sidecar": {"mode": "audit"}}, "/sidecar/mode"),
    ({"sidecar": {"deadlines": "learned"}}, "/sidecar/deadlines"),
    ({"sidecar": {"adaptiveFactor": 0}}, "/sidecar/adaptiveFactor"),
    ({"sidecar": {"adaptiveMinSamples": 2.5}}, "/sidecar/adaptiveMinSamples"),
    ({"sidecar": {"adaptiveFloor": -1}}, "/sidecar/adaptiveFloor"),
    ({"sidecar": {"resources": {"requests": {"cpu": "lots"}}}}, "/sidecar/resources/requests/cpu"),
    ({"sidecar": {"resources": {"requestz": {}}}}, "requestz"),
    ({"sidecar": {"image": {"repository": ""}}}, "/sidecar/image/repository"),
    ({"sidecarEvents": {"bindings": [{"namespace": "ml"}]}}, "serviceAccount"),
    ({"podCondition": {"enabled": "yes"}}, "/podCondition/enabled"),
    (
        {"podCondition": {"bindings": [{"namespace": "ML", "serviceAccount": "x"}]}},
        "/podCondition/bindings/0/namespace",
    ),
    ({"monitoring": {"podMonitor": {"interval": "often"}}}, "/monitoring/podMonitor/interval"),
    ({"commonLabels": {"bad key!": "x"}}, "bad key!"),
    ({"namespaceOverride": "Not_A_Namespace"}, "/namespaceOverride"),
    ({"networkPolicy": {"webhookFrom": [{"cidr": "10.0.0.0/8"}]}}, "/networkPolicy/webhookFrom/0"),
    ({"helmTest": {"namespace": "Not_A_Namespace"}}, "/helmTest/namespace"),
    ({"helmTest": {"enabled": "yes"}}, "/helmTest/enabled"),
    (
        {"monitoring": {"prometheusRule": {"sidecarSelector": "{container=x}"}}},
        "/monitoring/prometheusRule/sidecarSelector",
    ),
    (
        {"monitoring": {"prometheusRule": {"operatorSelector": ""}}},
        "/monitoring/prometheusRule/operatorSelector",
    ),
    (
        {"monitoring": {"prometheusRule": {"operatorDownAlert": "sometimes"}}},
        "/monitoring/prometheusRule/operatorDownAlert",
    ),
    ({"monitoring": {"prometheusRule": {"additionalRuleLabels": {"bad key!": "x"}}}}, "bad key!"),
    # A PodDisruptionBudget over a single replica would block every node drain.
    ({"operator": {"replicas": 1}}, "/operator/replicas"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_fail_template_and_lint_naming_the_value(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    template = helm.template(values, check=False)
    assert template.returncode != 0, f"helm template accepted {values}"
    assert message in template.stderr, template.stderr
    lint = helm.lint(values)
    assert lint.returncode != 0, f"helm lint accepted {values}"
    assert message in lint.stdout + lint.stderr


def test_pdb_that_no_eviction_could_meet_fails_the_render(helm: Helm) -> None:
    # Not expressible in the schema (it compares two values): the chart's own check, which helm lint
    # reports only as information, so only helm template is asserted.
    result = helm.template({"operator": {"replicas": 2}, "pdb": {"minAvailable": 2}}, check=False)
    assert result.returncode != 0
    assert "pdb.minAvailable (2) must be below operator.replicas (2)" in result.stderr


def test_good_values_are_accepted(helm: Helm) -> None:
    values = {
        "sidecar": {
            "nativeSidecar": "false",
            "killSignal": "SIGUSR1",
            "escalateAfter": 2.5,
            "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}, "limits": {"memory": 2e9}},
        },
        "operator": {"replicas": 1},
        "pdb": {"enabled": False},
        "tls": {"certManager": {"duration": "720h30m"}},
    }
    helm.template(values)


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


def undocumented_values(text: str) -> list[str]:
    """Leaf keys of a values file with no comment on the line above them nor above any of their parents."""
    undocumented: list[str] = []
    # Open keys as (indent, path, documented).
    stack: list[tuple[int, str, bool]] = []
    previous = ""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if match:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([*(p for _, p, _ in stack), match["key"]])
            documented = previous.lstrip().startswith("#") or any(d for _, _, d in stack)
            after = (n for n in lines[number + 1 :] if n.strip() and not n.lstrip().startswith("#"))
            following = next(after, "")
            is_leaf = match["rest"].strip() != "" or len(following) - len(following.lstrip()) <= indent
            if is_leaf and not documented:
                undocumented.append(path)
            stack.append((indent, match["key"], documented))
        if line.strip():
            previous = line
    return undocumented


def test_every_value_is_commented(helm: Helm) -> None:
    assert undocumented_values((helm.chart / "values.yaml").read_text()) == []


def test_the_comment_check_finds_an_undocumented_value() -> None:
    text = "a:\n  # -- documented\n  b: 1\n  c: 2\n# -- a block\nd:\n  e: 3\n"
    assert undocumented_values(text) == ["a.c"]
