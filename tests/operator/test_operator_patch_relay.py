"""patch_relay: each admission request gets exactly the operations its own handler supplied."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from expiry_operator import patch_relay


def response(allowed: bool) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"allowed": allowed}}


def test_concurrent_requests_keep_their_own_operations() -> None:
    async def serve(name: str) -> dict[str, Any]:
        with patch_relay.collecting() as operations:
            await asyncio.sleep(0)  # the other request runs its handler in between
            patch_relay.supply([{"op": "add", "path": f"/metadata/labels/{name}", "value": name}])
            await asyncio.sleep(0)
            return patch_relay.attach(response(allowed=True), operations)

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(serve("a"), serve("b")))

    for name, answer in zip("ab", asyncio.run(both()), strict=True):
        payload = answer["response"]
        assert payload["patchType"] == "JSONPatch"
        assert json.loads(base64.b64decode(payload["patch"])) == [
            {"op": "add", "path": f"/metadata/labels/{name}", "value": name}
        ]


def test_a_denied_or_unchanged_request_carries_no_patch() -> None:
    with patch_relay.collecting() as operations:
        patch_relay.supply([{"op": "add", "path": "/spec/shareProcessNamespace", "value": True}])
        assert "patch" not in patch_relay.attach(response(allowed=False), operations)["response"]
    with patch_relay.collecting() as operations:
        assert "patch" not in patch_relay.attach(response(allowed=True), operations)["response"]


def test_supplying_outside_a_request_is_an_error_not_a_lost_patch() -> None:
    with pytest.raises(RuntimeError, match="ExpiryWebhookServer"):
        patch_relay.supply([{"op": "add", "path": "/spec/shareProcessNamespace", "value": True}])
