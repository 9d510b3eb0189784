"""Inputs the fuzzers found (tests/fuzz), each pinned: the state file and ``advise``'s /blocks document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from expiry_sidecar import advice
from expiry_sidecar.blocks import BlockStats
from expiry_sidecar.deadlines import Deadlines, Policy
from expiry_sidecar.state import StateFile, boot_id

HEADER = json.dumps({"expiry_state": 1, "boot_id": boot_id()})
ARMED = json.dumps(["arm", 5, 7, "a", 12.5, 9])


def test_a_torn_last_line_cut_inside_a_utf8_character_keeps_the_timers(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    torn = json.dumps(["arm", 6, 8, "ü", 1.0, 9], ensure_ascii=False).encode()
    path.write_bytes(f"{HEADER}\n{ARMED}\n".encode() + torn[: torn.index("ü".encode()) + 1])
    state = StateFile(path)
    assert [(t.pid, t.scope_id) for t in state.load()] == [(5, "a")]
    assert state.errors == 0


@pytest.mark.parametrize(
    "entry",
    [
        f'["arm", 5, 1, "s", {10**400}, 9]',  # no float holds it
        f'["arm", {10**400}, 1, "s", 1.0, 9]',
        '["arm", 5, 1, "s", NaN, 9]',  # a timer that never fires, or breaks the heap
        '["arm", 5, 1, "s", Infinity, 9]',
        '["arm", 0, 1, "s", 1.0, 9]',  # what kill(0) would reach: the sidecar's own group
        '["arm", 5, 1, "s", 1.0, 100000]',  # no such signal
        "[" * 5000 + "]" * 5000,  # deeper than the recursion limit
    ],
    ids=["huge-deadline", "huge-pid", "nan", "infinity", "pid-0", "signal", "deep"],
)
def test_hostile_entries_set_the_file_aside_and_count_it(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(f"{HEADER}\n{ARMED}\n{entry}\n")
    state = StateFile(path)
    assert state.load() == []
    assert state.errors == 1
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def test_statistics_too_large_for_a_float_cost_only_the_statistics(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(f'{HEADER}\n{ARMED}\n["blocks", 1, {{"s": [1, {10**400}, 1, 1, {{"3": 1}}]}}]\n')
    state = StateFile(path)
    assert [t.pid for t in state.load()] == [5]
    state.load_blocks(BlockStats())
    assert state.errors == 1


def _document() -> dict[str, Any]:
    stats = BlockStats()
    stats.record("train.py#1", 2.0, 60.0)
    return advice.document(Deadlines(Policy(), stats))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("policy"), "policy"),
        (lambda d: d["policy"].update(adaptive_factor="5"), "policy.adaptive_factor"),
        (lambda d: d["policy"].update(adaptive_min_samples=0), "policy.adaptive_min_samples"),
        (lambda d: d["scopes"][0].update(longest=10**400), "scopes[0].longest"),
        (lambda d: d["scopes"][0].update(blocks=True), "scopes[0].blocks"),
        (lambda d: d.update(scopes={}), "scopes"),
        (lambda d: d["pooled"].pop("p99"), "pooled.p99"),
    ],
)
def test_a_document_that_is_not_blocks_is_refused_naming_the_field(change: Any, field: str) -> None:
    document = _document()
    advice.check_document(document)
    change(document)
    with pytest.raises(advice.DocumentError, match=rf"^{__import__('re').escape(field)} must be"):
        advice.check_document(document)
