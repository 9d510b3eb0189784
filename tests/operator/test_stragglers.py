"""The hang report names the rank that broke the collective, from each kill's flight-recorder
collective: behind, mismatched, outside any collective; frames when no worker had a recorder."""

from __future__ import annotations

import json
from typing import Any

from expiry_operator.hang_report import report
from expiry_operator.incidents import IncidentTracker
from expiry_operator.kill_events import Collective, KillEvent, parse_kill_event
from expiry_operator.owners import Workload
from tests.operator.operator_harness import kill, kill_event

JOB = Workload("batch/v1", "Job", "ml", "train", "u")
WAIT = ["c10d.py:2050 in all_reduce"]
STUCK = ["data.py:10 in load"]


def ranked(rank: int, collective: dict[str, Any] | None, frames: list[str] = WAIT) -> dict[str, Any]:
    return {**kill(rank, "train.py#40", frames, deadline=100.0 + rank), "collective": collective}


def on_node(node: str | None, kills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kills as a sidecar on ``node`` writes them (None: an older sidecar, without the key)."""
    return [kill if node is None else {**kill, "node": node} for kill in kills]


def at(seq: int, state: str = "started", op: str = "all_reduce", group: str = "default_pg") -> dict[str, Any]:
    return {"group": group, "seq": seq, "op": op, "state": state}


def told(*pods: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    tracker = IncidentTracker(window=1, max_span=10)
    for index, kills in enumerate(pods):
        parsed = parse_kill_event(kill_event({"metadata": {"name": f"p-{index}", "namespace": "ml"}}, kills))
        assert isinstance(parsed, KillEvent)
        tracker.add(JOB, parsed, now=0)
    (incident,) = tracker.pop_due(5)
    hang = report(incident)
    return hang.message(), json.loads(hang.details_json())


def test_the_kills_collective_is_read_and_a_malformed_one_is_none() -> None:
    kills = [ranked(0, at(7)), ranked(1, {"group": "g", "seq": "7", "state": "started"}), ranked(2, None)]
    parsed = parse_kill_event(kill_event({"metadata": {"name": "p", "namespace": "ml"}}, kills))
    assert parsed is not None
    assert [k.collective for k in parsed.kills] == [
        Collective("default_pg", 7, "all_reduce", "started"),
        None,
        None,
    ]


def test_the_rank_that_never_entered_the_collective_is_named_across_pods() -> None:
    """Rank 5 completed #1041 and never entered #1042, which the 15 others wait in."""
    pods = [
        on_node(
            f"gpu-{p}",
            [ranked(r, at(1042) if r != 5 else at(1041, "completed")) for r in range(p * 8, p * 8 + 8)],
        )
        for p in (0, 1)
    ]
    message, details = told(*pods)
    assert (
        "rank 5 (pod p-0, node gpu-0) never entered all_reduce #1042 of default_pg; 15 ranks wait in it."
        in message
    )
    assert "Odd ones out" not in message, "the collective replaces the frames in the message"
    found = details["collectives"]
    assert found["waitedIn"] == [{"group": "default_pg", "seq": 1042, "op": "all_reduce", "workers": 15}]
    assert found["behind"] == [
        {
            "pod": "p-0",
            "node": "gpu-0",
            "rank": 5,
            "collective": {"group": "default_pg", "seq": 1041, "op": "all_reduce", "state": "completed"},
        }
    ]
    assert found["mismatched"] == found["outside"] == []


def test_a_kill_without_a_node_names_the_pod_only() -> None:
    """From a sidecar older than EXPIRY_NODE_NAME, or one whose pod had no node: no node is made up."""
    message, details = told(on_node(None, [ranked(0, at(9)), ranked(1, at(8, "completed"))]))
    assert "rank 1 (pod p-0) never entered all_reduce #9 of default_pg" in message
    assert details["collectives"]["behind"][0]["node"] is None
    assert details["first"] == {"pod": "p-0", "node": None, "rank": 0, "scope": "train.py#40"}


def test_a_rank_in_another_collective_is_a_mismatch() -> None:
    message, details = told([ranked(0, at(9)), ranked(1, at(9)), ranked(2, at(9, op="broadcast"))])
    assert (
        "Mismatch: rank 2 (pod p-0) is in broadcast #9 of default_pg (started); 2 ranks wait in all_reduce #9"
        in message
    )
    assert [odd["rank"] for odd in details["collectives"]["mismatched"]] == [2]
    assert details["collectives"]["behind"] == []


def test_a_rank_without_any_collective_is_outside_any_collective() -> None:
    """Hung in data loading before its first collective: the others wait in #1."""
    message, details = told([ranked(0, at(1)), ranked(1, None, STUCK)])
    assert "rank 1 (pod p-0) is outside any collective." in message
    assert "never entered" not in message
    assert [odd["rank"] for odd in details["collectives"]["outside"]] == [1]


def test_every_rank_waiting_in_the_same_collective_names_nobody() -> None:
    message, details = told([ranked(0, at(3)), ranked(1, at(3, "scheduled"))])
    assert "2 ranks wait in all_reduce #3 of default_pg; none of its ranks is behind." in message
    assert details["collectives"]["behind"] == details["collectives"]["mismatched"] == []


def test_process_groups_are_judged_apart() -> None:
    kills = [
        ranked(0, at(4, group="tp")),
        ranked(1, at(3, "completed", group="tp")),
        ranked(2, at(8, group="dp")),
    ]
    message, _ = told(kills)
    assert "rank 1 (pod p-0) never entered all_reduce #4 of tp; 1 rank waits in it." in message
    assert "1 rank waits in all_reduce #8 of dp; none of its ranks is behind." in message


def test_without_any_flight_recorder_the_frames_tell_it_as_before() -> None:
    message, details = told([ranked(0, None), ranked(1, None), ranked(2, None, STUCK)])
    assert "Odd ones out (1): rank 2 (pod p-0) in data.py:10 in load" in message
    assert details["collectives"] is None
