"""The DeadlineProfile's pure core: merging without double counting, bounded size, the object itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from expiry_sidecar import profile
from expiry_sidecar.apiwriter import ApiError, ApiWriter, Body, PodRef
from expiry_sidecar.blocks import BlockStats, ScopeStats, key, split
from expiry_sidecar.deadlines import Deadlines, Policy
from expiry_sidecar.profile_sync import ProfileSync

POLICY = Policy("adaptive", factor=5, min_samples=3, floor=1)


def learned(*durations: float, requested: float = 600) -> ScopeStats:
    stats = ScopeStats()
    for seconds in durations:
        stats.record(seconds, requested)
    return stats


def test_repeated_writes_of_one_sidecar_add_each_block_once() -> None:
    pod = {"step": learned(0.1, 0.2)}
    baseline: dict[str, ScopeStats] = {}
    stored: dict[str, ScopeStats] = {}
    for more in ([0.3], [], [0.4, 0.5]):
        for seconds in more:
            pod["step"].record(seconds, 600)
        delta = profile.difference(pod, baseline)
        stored = profile.merged(stored, delta)
        baseline = {scope: profile.copy(stats) for scope, stats in pod.items()}
    assert stored["step"].count == 5 and stored["step"].longest == 0.5
    assert stored["step"].total == pytest.approx(1.5)
    assert profile.difference(pod, baseline) == {}, "nothing new: nothing to write"


def test_pods_add_up_and_a_seed_is_never_given_back() -> None:
    first = {"step": learned(0.1, 0.1, 0.1)}
    stored = profile.merged({}, profile.difference(first, {}))
    seed = profile.scopes_of(profile_object(stored))
    second = {scope: profile.copy(stats) for scope, stats in seed.items()}  # a new pod, seeded
    baseline = {scope: profile.copy(stats) for scope, stats in seed.items()}
    second["step"].record(0.2, 600)
    stored = profile.merged(seed, profile.difference(second, baseline))
    assert stored["step"].count == 4 and stored["step"].longest == 0.2


def test_a_lost_state_under_counts_never_over_counts() -> None:
    baseline = {"step": learned(0.1, 0.1, 0.1)}
    assert profile.difference({"step": learned(0.1)}, baseline) == {}


def test_the_hold_travels_and_a_longer_block_anywhere_lifts_it() -> None:
    killed = learned(0.1, 0.1, 0.1)
    killed.killed(1.0)
    stored = profile.merged({}, profile.difference({"step": killed}, {}))
    assert stored["step"].held == 1.0
    stats = BlockStats()
    stats.load({scope: s.to_json() for scope, s in profile.scopes_of(profile_object(stored)).items()})
    assert Deadlines(POLICY, stats).arm("step", 0.0, 600.0)[0] == 600.0, "a new pod starts held"
    stored = profile.merged(stored, {"step": learned(1.5)})
    assert stored["step"].held == 0.0 and stored["step"].count == 4
    assert profile_object(stored)["status"]["scopes"][0]["suggestedSeconds"] == 7.5


def test_the_profile_is_bounded_whatever_the_number_of_scopes_and_pods() -> None:
    stored: dict[str, ScopeStats] = {}
    for pod in range(50):
        container = "c" * 63 if pod % 2 else ""  # the longest container name Kubernetes allows
        delta = {
            key(container, f"{pod}-{n}-{'x' * 400}"): learned(*[0.001 * 1.3**k for k in range(n % 40)])
            for n in range(40)
        }
        stored = profile.merged(stored, delta)
    assert len(stored) == profile.MAX_SCOPES
    assert all(len(split(learned_key)[1]) <= profile.MAX_SCOPE_LENGTH for learned_key in stored)
    size = len(json.dumps(profile_object(stored)))
    assert size < 165_000, size


def test_a_malformed_profile_is_refused() -> None:
    for status in ({"scopes": "x"}, {"scopes": [{"scope": "s", "blocks": 1}]}, "nope"):
        with pytest.raises(ValueError):
            profile.scopes_of({"status": status})
    assert profile.scopes_of({}) == {}


def test_the_owner_flag_is_parsed_or_refused_in_one_line() -> None:
    owner = profile.Owner.parse('{"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "u1"}')
    assert owner.reference() == {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "u1"}
    for bad in ("", "{}", '{"apiVersion": "batch/v1", "kind": "Job", "name": "train"}', "[1]"):
        with pytest.raises(ValueError, match="apiVersion, kind, name and uid"):
            profile.Owner.parse(bad)


def test_the_object_has_owner_figures_and_a_resource_version() -> None:
    owner = profile.Owner("batch/v1", "Job", "train", "u1")
    obj = profile.body(
        "job-train",
        "ml",
        owner,
        {"step": learned(2.0, 2.0, 2.4)},
        POLICY,
        writer="p",
        now="t",
        resource_version="7",
    )
    assert obj["apiVersion"] == "expiry.io/v1alpha1" and obj["kind"] == "DeadlineProfile"
    assert obj["metadata"] == {
        "name": "job-train",
        "namespace": "ml",
        "ownerReferences": [owner.reference()],
        "resourceVersion": "7",
    }
    (entry,) = obj["status"]["scopes"]
    assert entry["blocks"] == 3 and entry["suggestedSeconds"] == 12.0
    assert entry["explanation"] == "5 x 2.4 s longest of 3 blocks (floor 1 s)"
    assert obj["status"]["blocks"] == 3 and obj["status"]["heldScopes"] == 0


def profile_object(scopes: dict[str, ScopeStats]) -> dict[str, object]:
    return profile.body("p", "ml", None, scopes, POLICY, writer="pod", now="2026-01-01T00:00:00Z")


class RacingApi:
    """One stored profile with resourceVersions checked as the API server checks them; another pod's
    write lands between this sidecar's read and its patch, once."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] | None = None
        self.version = 0
        self.conflicts = 0
        self.gets = 0

    def request(self, method: str, path: str, body: Body | None = None, content_type: str = "") -> Body:
        if method == "GET":
            if self.stored is None:
                raise ApiError(404, "Not Found")
            found = json.loads(json.dumps(self.stored))
            self.gets += 1
            if self.gets == 2:  # the first read of a write (the first read is the seed's)
                self._store(profile_object(profile.merged(profile.scopes_of(found), {"step": learned(0.3)})))
            return found
        assert body is not None
        if method == "PATCH" and body["metadata"].get("resourceVersion") != str(self.version):
            self.conflicts += 1
            raise ApiError(409, "Conflict")
        self._store(body)
        return body

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}


def test_a_conflicting_write_is_read_again_and_nothing_is_lost_or_counted_twice(tmp_path: Path) -> None:
    api = RacingApi()
    api.stored = profile_object({"step": learned(0.1, 0.1)}) | {"metadata": {"resourceVersion": "0"}}
    writer = ApiWriter(PodRef("train-1", "ml"), connect=lambda: api)
    stats = BlockStats()
    sync = ProfileSync(writer, name="p", owner=None, stats=stats, policy=POLICY, baseline_file=tmp_path / "b")
    sync.start()
    assert stats.scopes["step"].count == 2, "seeded"
    stats.record("step", 0.2, 600)
    sync.due()
    writer.close()
    assert sync.results == {"written": 1} and api.conflicts == 1
    assert api.stored is not None
    assert profile.scopes_of(api.stored)["step"].count == 4, "2 seeded + 1 from the other pod + 1 of ours"
    assert json.loads((tmp_path / "b").read_text())["baseline"]["step"][0] == 3


def test_containers_are_kept_apart_in_the_profile_and_read_back_as_written() -> None:
    stored = profile.merged(
        {},
        {
            key("trainer", "step"): learned(0.1, 0.1),
            key("evaluator", "step"): learned(3.0),
            "load": learned(0.5),  # a worker whose container the sidecar could not read
        },
    )
    obj = profile_object(stored)
    entries = {(e.get("container"), e["scope"]): e["blocks"] for e in obj["status"]["scopes"]}
    assert entries == {("trainer", "step"): 2, ("evaluator", "step"): 1, (None, "load"): 1}
    assert obj["status"]["scopeCount"] == 3
    back = profile.scopes_of(obj)
    assert {k: v.count for k, v in back.items()} == {k: v.count for k, v in stored.items()}
    assert back[key("evaluator", "step")].longest == 3.0


@pytest.mark.parametrize(
    ("container", "scope"),
    [
        ("", "train.py#12"),
        ("trainer", "train.py#12"),
        ("", "odd\x1fscope"),
        ("trainer", "odd\x1fscope"),
        ("", ""),
    ],
)
def test_a_key_splits_back_into_its_container_and_scope(container: str, scope: str) -> None:
    assert split(key(container, scope)) == (container, scope)
    assert (key(container, scope) == scope) == (not container and "\x1f" not in scope), "old keys stay"
