"""kopf as the operator uses it: public API only, and what that API must still offer.

The operator imports nothing from kopf's private modules (``kopf._*``): its API calls go through its own
client (``apiclient``) on kopf's public login functions. What it does rely on is checked here against the
installed kopf, so a release that changes it fails loudly, naming the symbol, before anything else does;
operator/pyproject.toml allows the kopf releases these tests (and the operator's) pass on. Two of kopf's log
messages are filtered by their text: the last checks read kopf's code for those words (the only place the
private modules are read, and only by this test).
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest

from expiry_operator import handlers, leader_watch, runner

OPERATOR_SRC = Path(__file__).resolve().parents[2] / "operator" / "src" / "expiry_operator"


def keyword_parameters(function: Callable[..., Any]) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }


def private_kopf_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kopf._"):
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"import {alias.name}" for alias in node.names if alias.name.startswith("kopf._")]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "kopf"
            and node.attr.startswith("_")
        ):
            found.append(f"kopf.{node.attr}")
    return found


def test_the_private_import_finder_finds_them() -> None:
    source = "from kopf._cogs.clients import api\nimport kopf._core.engines\nx = kopf._cogs\nimport kopf\n"
    assert private_kopf_imports(source) == [
        "from kopf._cogs.clients import ...",
        "import kopf._core.engines",
        "kopf._cogs",
    ]


@pytest.mark.parametrize("path", sorted(OPERATOR_SRC.glob("*.py")), ids=lambda path: path.name)
def test_the_operator_uses_no_private_kopf_module(path: Path) -> None:
    assert not private_kopf_imports(path.read_text()), f"{path.name} reaches into kopf's private modules"


@pytest.mark.parametrize(
    ("where", "function", "needed"),
    [
        # runner.py: kopf.operator() in two halves, SIGTERM handled by drain.py in between
        (
            "kopf.spawn_tasks",
            kopf.spawn_tasks,
            {"registry", "settings", "clusterwide", "standalone", "stop_flag"},
        ),
        ("kopf.run_tasks", kopf.run_tasks, {"root_tasks", "ignored"}),
        # leader_watch.py: the leader-only operator in a thread, stopped by a flag
        ("kopf.operator", kopf.operator, {"registry", "settings", "clusterwide", "standalone", "stop_flag"}),
        # webhook.py subclasses kopf's server
        (
            "kopf.WebhookServer",
            kopf.WebhookServer,
            {"addr", "port", "certfile", "pkeyfile", "file_check_interval"},
        ),
        # apiclient.py and handlers.py log in with kopf's own minimal logins
        ("kopf.login_with_service_account", kopf.login_with_service_account, {"settings"}),
        ("kopf.login_with_kubeconfig", kopf.login_with_kubeconfig, {"settings"}),
    ],
)
def test_the_functions_take_the_arguments_we_pass(
    where: str, function: Callable[..., Any], needed: set[str]
) -> None:
    takes_anything = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
    missing = (
        set() if takes_anything and where.startswith("kopf.login") else needed - keyword_parameters(function)
    )
    assert not missing, f"{where} no longer takes {sorted(missing)}"


def test_connection_info_makes_the_tls_context_and_the_authorization_header(tmp_path: Path) -> None:
    """apiclient.py builds its session from these two public methods."""
    info = kopf.ConnectionInfo(server="https://127.0.0.1:6443", token="abc")
    assert info.as_http_headers() == {"Authorization": "Bearer abc"}
    assert info.as_ssl_context().verify_mode.name == "CERT_REQUIRED"
    insecure = kopf.ConnectionInfo(server="https://127.0.0.1:6443", insecure=True)
    assert insecure.as_ssl_context().check_hostname is False


def test_the_admission_engine_calls_our_server_as_we_call_it_back() -> None:
    # ExpiryWebhookServer calls kopf's webhookfn(review, webhook=..., sslpeer=..., headers=...), as
    # kopf's own WebhookServer does.
    source = inspect.getsource(kopf.WebhookServer)
    assert "fn(data, webhook=webhook, sslpeer=sslpeer, headers=headers)" in source


def test_kopf_stops_every_task_of_its_loop_when_it_ends() -> None:
    # Why the leader-only operator runs on a thread of its own (leader_watch.py): if kopf stopped
    # cancelling all tasks of the loop, sharing one loop would become possible (and simpler).
    assert "all_tasks(ignored=ignored)" in inspect.getsource(kopf.run_tasks)


def test_the_log_messages_we_filter_are_still_kopfs_words() -> None:
    # runner._DropExpectedDenials and leader_watch._QuietThreadNotice match kopf's text; if kopf
    # rewords it, denials flood the log as errors again, or every leadership term warns.
    execution = importlib.import_module("kopf._core.actions.execution")
    running = importlib.import_module(leader_watch.KOPF_RUNNING_LOGGER)
    assert "failed permanently" in inspect.getsource(execution)
    assert "OS signals are ignored" in inspect.getsource(running)
    assert runner._DropExpectedDenials and leader_watch._QuietThreadNotice


def test_the_leader_registry_holds_only_watch_and_lifecycle_handlers() -> None:
    from expiry_operator.settings import Settings

    registry = handlers.build_leader_registry(Settings())
    assert not registry._webhooks.get_all_handlers(), "the webhook must be served by every replica"
    assert registry._watching.get_all_handlers()
    assert asyncio.iscoroutinefunction(leader_watch.run_while_leading)
