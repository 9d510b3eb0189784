"""A worker's latest collective, read from torch's flight-recorder dump. PURE.

The dump (``torch._C._distributed_c10d._dump_fr_trace_json``, what the client's debug channel sends)
lists ``entries``, one per collective the process scheduled, oldest first, each with ``record_id``
(one counter across process groups), ``process_group`` ([name, description]), ``collective_seq_id``,
``profiling_name`` (``backend:op``, e.g. ``gloo:all_reduce``) and ``state`` (``scheduled``,
``started``, ``completed``) and ``retired`` (the work is done). gloo in torch 2.13 never moves
``state`` past ``scheduled`` (only NCCL's watchdog discovers starts and completions), but retires
each collective as it completes: a retired entry counts as ``completed``. The kill's ``collective``
is the newest entry, as ``{"group", "seq", "op", "state"}`` (docs/architecture.md, "Collective state
in kills"), or None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATES = ("scheduled", "started", "completed")
UNNAMED = ("", "undefined")
"""Descriptions torch gives a group nobody named: the group's name (its number) is used instead."""


def latest(recorder: object) -> dict[str, object] | None:
    """The newest collective in a flight-recorder dump, or None (no dump, no entries, unreadable)."""
    if not isinstance(recorder, Mapping):
        return None
    entries = recorder.get("entries")
    if not isinstance(entries, list):
        return None
    found = [c for c in (collective(entry) for entry in entries if isinstance(entry, Mapping)) if c]
    if not found:
        return None
    return max(found, key=lambda pair: pair[0])[1]


def collective(entry: Mapping[str, Any]) -> tuple[int, dict[str, object]] | None:
    """(record id, the kill's ``collective``) of one entry, or None when the entry is not one."""
    seq, record, state = entry.get("collective_seq_id"), entry.get("record_id"), entry.get("state")
    if entry.get("is_p2p") or not isinstance(seq, int) or not isinstance(record, int) or state not in STATES:
        return None
    if isinstance(seq, bool) or isinstance(record, bool):
        return None
    return record, {
        "group": group_name(entry.get("process_group")),
        "seq": seq,
        "op": str(entry.get("profiling_name", "")).rpartition(":")[2] or "?",
        "state": "completed" if entry.get("retired") is True else state,
    }


def group_name(process_group: object) -> str:
    """``default_pg`` for torch's ["0", "default_pg"], the number for a group without a description."""
    if isinstance(process_group, list | tuple) and process_group:
        name = str(process_group[0])
        description = str(process_group[1]) if len(process_group) > 1 else ""
        return name if description in UNNAMED else description
    return str(process_group) if process_group is not None else "?"
