"""kopf's private API as the operator uses it: fails loudly, naming the symbol, when a kopf release moves it.

The operator imports a few things from ``kopf._cogs`` and ``kopf._core`` (kopf has no public API for
them), relies on kopf's embedding parameters, and filters two of kopf's log messages by their text.
operator/pyproject.toml bounds kopf to the versions tested; this is what to re-run before raising
the bound. Each check reads kopf's installed code: no mock, no network.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import api, auth, errors, scanning
from kopf._cogs.structs import credentials
from kopf._core.engines import admission
from kopf._core.reactor import running

from expiry_operator import handlers, leader_watch, runner


def keyword_parameters(function: Callable[..., Any]) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }


@pytest.mark.parametrize(
    ("where", "function", "needed"),
    [
        # webhook.py learns the cluster version through kopf's client and credentials
        ("kopf._cogs.clients.scanning.read_version", scanning.read_version, {"settings", "logger"}),
        # election.py reads and writes the Lease, one attempt per call
        (
            "kopf._cogs.clients.api.request",
            api.request,
            {"method", "url", "settings", "payload", "headers", "timeout", "backoffs", "logger"},
        ),
        # runner.py and leader_watch.py embed kopf: our own credentials vault, a stop flag in a thread
        (
            "kopf.operator",
            kopf.operator,
            {"registry", "settings", "clusterwide", "standalone", "vault", "stop_flag"},
        ),
        # webhook.py subclasses kopf's server
        (
            "kopf.WebhookServer",
            kopf.WebhookServer,
            {"addr", "port", "certfile", "pkeyfile", "file_check_interval"},
        ),
    ],
)
def test_the_functions_take_the_arguments_we_pass(
    where: str, function: Callable[..., Any], needed: set[str]
) -> None:
    missing = needed - keyword_parameters(function)
    assert not missing, f"{where} no longer takes {sorted(missing)}: kopf's private API moved"


def test_the_api_client_is_authenticated_through_the_vault_context_variable() -> None:
    # election.py sets auth.vault_var in its own task so api.request finds kopf's credentials.
    assert isinstance(auth.vault_var, contextvars.ContextVar)
    assert inspect.iscoroutinefunction(api.request)
    assert "vault_var" in inspect.getsource(auth.authenticated), "api calls no longer read auth.vault_var"
    vault = credentials.Vault()
    assert hasattr(vault, "extended") and hasattr(vault, "populate")


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("APIError", Exception),
        ("APINotFoundError", errors.APIError),
    ],
)
def test_the_api_errors_we_catch_exist(name: str, base: type) -> None:
    assert issubclass(getattr(errors, name), base), f"kopf._cogs.clients.errors.{name} moved"


def test_the_admission_errors_we_translate_exist() -> None:
    # webhook.py turns these into 404 and 400 instead of a 500
    assert issubclass(admission.UnknownResourceError, Exception)
    assert issubclass(admission.WebhookError, Exception)


def test_the_admission_engine_calls_our_server_as_we_call_it_back() -> None:
    # ExpiryWebhookServer calls kopf's webhookfn(review, webhook=..., sslpeer=..., headers=...)
    assert {"request", "webhook", "sslpeer", "headers"} <= keyword_parameters(
        admission.serve_admission_request
    )


def test_the_log_messages_we_filter_are_still_kopfs_words() -> None:
    # runner._DropExpectedDenials and leader_watch._QuietThreadNotice match kopf's text; if kopf
    # rewords it, denials flood the log as errors again, or every leadership term warns.
    assert "failed permanently" in inspect.getsource(kopf._core.actions.execution)
    assert "OS signals are ignored" in inspect.getsource(running)
    assert runner._DropExpectedDenials and leader_watch._QuietThreadNotice


def test_kopf_stops_every_task_of_its_loop_when_it_ends() -> None:
    # Why the leader-only operator runs on a thread of its own (leader_watch.py): if kopf stopped
    # cancelling all tasks of the loop, sharing one loop would become possible (and simpler).
    assert "all_tasks(ignored=ignored)" in inspect.getsource(running.run_tasks)


def test_the_leader_registry_holds_only_watch_and_lifecycle_handlers() -> None:
    from expiry_operator.settings import Settings

    registry = handlers.build_leader_registry(Settings())
    assert not registry._webhooks.get_all_handlers(), "the webhook must be served by every replica"
    assert registry._watching.get_all_handlers()
    assert asyncio.iscoroutinefunction(leader_watch.run_while_leading)
