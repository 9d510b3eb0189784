"""The sidecar's YAML subset reads kubeconfigs as PyYAML does, and refuses the rest by line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expiry_sidecar import kubeyaml
from tests.support.kubeapi import write_kubeconfig

KUBECTL = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
    server: https://127.0.0.1:6443
  name: local
contexts:
- context:
    cluster: local
    namespace: default
    user: admin
  name: admin@local
current-context: admin@local
kind: Config
preferences: {}
users:
- name: admin
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
"""

COMMENTED_AND_QUOTED = """\
---
# written by hand
apiVersion: "v1"
kind: 'Config'
clusters:
  - name: "with: colon"   # a comment
    cluster:
      server: 'https://[::1]:6443'
      insecure-skip-tls-verify: true
      tls-server-name: "it's"
users:
  - name: x
    user:
      token: 'don''t # keep'
      tokenFile: null
contexts:
  -
    name: only
    context: {cluster: "with: colon", user: x, namespace: ~}
empty:
list: [a, 'b, c', "d", [e], {}]
"""


@pytest.mark.parametrize("text", [KUBECTL, COMMENTED_AND_QUOTED, '{"apiVersion": "v1", "users": []}'])
def test_kubeconfigs_read_as_pyyaml_reads_them(text: str) -> None:
    assert kubeyaml.load(text) == yaml.safe_load(text)


def test_the_test_suites_flow_style_kubeconfig(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:8080")
    assert kubeyaml.load(path.read_text()) == yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a: &anchor x\nb: *anchor\n", "line 1"),
        ("cert: |\n  line\n", "line 1"),
        ("a: [b, c\n", "not closed"),
        ("a: b\n  c: d\n", "line 2"),
        ("just a scalar line\n", "expected 'key: value'"),
        ("a: 'open\n", "unterminated"),
        ("a:\n\t- b\n", "tab"),
    ],
)
def test_what_it_does_not_read_it_names(text: str, says: str) -> None:
    with pytest.raises(kubeyaml.YamlError, match=says):
        kubeyaml.load(text)
