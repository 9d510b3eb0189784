"""The sidecar's side of its workload's DeadlineProfile (see profile.py): read once at start, written
at most every ``INTERVAL`` seconds and once more on shutdown, all through the one ApiWriter.

- A new pod starts from the profile: when the state file held no statistics (a fresh pod, not a
  restarted sidecar: then the local file rules), the profile is read, for at most ``SEED_TIMEOUT``
  seconds, and loaded into the statistics the deadline policy consults. Its own pod's blocks then
  add to it, and a longer block always teaches (the longest is a maximum), so the profile is never
  trusted more than what the pod observes; the requested deadline stays the upper bound.
- Only what this sidecar learned since its last write goes out (profile.difference against a
  baseline). The baseline is moved before the write and kept in a file beside the state file
  (``<state-file>.profile``), so a sidecar SIGKILLed after a write never adds the same blocks twice;
  a write that fails gives its blocks back for the next one. A crash between moving the baseline
  and the write loses one interval's counts, never doubles them.
- With the API server down nothing waits on it: the read gives up after SEED_TIMEOUT, writes fail
  in the writer's bounded queue (said once per outage), and the state file keeps ruling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from expiry_sidecar import profile
from expiry_sidecar.apiwriter import ApiWriter, Client
from expiry_sidecar.blocks import BlockStats, ScopeStats
from expiry_sidecar.deadlines import Policy
from expiry_sidecar.kubeclient import ApiError

log = logging.getLogger("expiry.sidecar")

INTERVAL = 60.0
"""Seconds between writes at most (and only when something was learned)."""
SEED_TIMEOUT = 10.0
"""Seconds a new pod waits for its profile at start (the writer loads its client first; before the sidecar
is ready, so no deadline waits on it). The API server down: refused at once, or this long when silent."""
CONFLICT_ATTEMPTS = 3
WHAT = "write the DeadlineProfile"
PERMISSION = f"get, create and patch {profile.API_VERSION.split('/')[0]} deadlineprofiles"
MERGE_PATCH = "application/merge-patch+json"


class ProfileSync:
    def __init__(
        self,
        writer: ApiWriter,
        *,
        name: str,
        owner: profile.Owner | None,
        stats: BlockStats,
        policy: Policy,
        baseline_file: Path | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer = writer
        self.name = name
        self.owner = owner
        self.stats = stats
        self.policy = policy
        self.baseline_file = baseline_file
        self.clock = clock
        self.baseline: dict[str, ScopeStats] = {}
        self.seeded = 0
        """Blocks the profile gave this pod at start."""
        self.results: Counter[str] = Counter()
        """Writes by result (``written``, ``failed``), for the metrics."""
        self._lock = threading.Lock()
        self._unsent: dict[str, ScopeStats] = {}
        """What failed writes gave back, for the next write."""

    @property
    def namespace(self) -> str:
        return self.writer.pod.namespace if self.writer.pod else ""

    def start(self) -> None:
        """Take the baseline a previous sidecar of this pod left, or seed a fresh pod from the profile."""
        if self.baseline_file is not None and self.baseline_file.exists():
            try:
                data = json.loads(self.baseline_file.read_text())
                self.baseline = {scope: ScopeStats.from_json(raw) for scope, raw in data["baseline"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("profile baseline unusable, starting it afresh: %s", exc)
            else:
                return
        if self.stats.scopes or self.stats.pooled.count:
            return  # a restarted sidecar: its own state file rules
        seed = self._read()
        if seed:
            self.stats.load({scope: stats.to_json() for scope, stats in seed.items()})
            self.baseline = {scope: profile.copy(stats) for scope, stats in seed.items()}
            self.seeded = sum(stats.count for stats in seed.values())
            self._save_baseline()
            log.info(
                "started from the workload's deadline profile",
                extra={"profile": self.name, "scopes": len(seed), "blocks": self.seeded},
            )

    def _read(self) -> dict[str, ScopeStats]:
        def get(client: Client) -> dict[str, ScopeStats]:
            try:
                found = client.request("GET", profile.path(self.namespace, self.name))
            except ApiError as exc:
                if exc.status == 404:
                    return {}
                raise
            return profile.scopes_of(found)

        future = self.writer.submit(f"read the DeadlineProfile {self.name}", PERMISSION, get, urgent=True)
        try:
            return future.result(timeout=SEED_TIMEOUT)
        except FutureTimeout:
            log.warning("the deadline profile was not read within %gs; starting without it", SEED_TIMEOUT)
        except Exception as exc:  # no API, no permission, a malformed profile: start without it
            log.warning("starting without the deadline profile: %s", exc, extra={"profile": self.name})
        return {}

    def due(self) -> None:
        """On the loop (periodically, and at shutdown): write what was learned since the last write."""
        current = dict(self.stats.scopes)
        delta = profile.difference(current, self.baseline)
        with self._lock:
            profile.add(delta, self._unsent)
            self._unsent = {}
        if not delta:
            return
        self.baseline = {scope: profile.copy(stats) for scope, stats in current.items()}
        self._save_baseline()
        future = self.writer.submit(WHAT, PERMISSION, lambda client: self._write(client, delta))
        future.add_done_callback(lambda done: self._done(done, delta))

    def _done(self, future: Future[None], delta: dict[str, ScopeStats]) -> None:
        with self._lock:
            if future.exception() is None:
                self.results["written"] += 1
            else:
                self.results["failed"] += 1
                profile.add(self._unsent, delta)

    def _write(self, client: Client, delta: dict[str, ScopeStats]) -> None:
        """On the writer thread: read, add, write back; a conflict (another pod wrote since the read:
        the patch carries the resourceVersion read, which the API server checks) reads again."""
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                found: dict[str, Any] | None = client.request("GET", profile.path(self.namespace, self.name))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                found = None
            existing: dict[str, ScopeStats] = {}
            if found is not None:
                try:
                    existing = profile.scopes_of(found)
                except ValueError as exc:
                    log.warning("replacing a malformed profile %s: %s", self.name, exc)
            version = (found or {}).get("metadata", {}).get("resourceVersion")
            obj = profile.body(
                self.name,
                self.namespace,
                self.owner,
                profile.merged(existing, delta),
                self.policy,
                writer=self.writer.pod.name if self.writer.pod else "",
                now=datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                resource_version=version,
            )
            try:
                if found is None:
                    client.request("POST", profile.path(self.namespace), obj)
                else:  # the whole object, as a merge patch: lists and the resourceVersion are replaced
                    client.request("PATCH", profile.path(self.namespace, self.name), obj, MERGE_PATCH)
                return
            except ApiError as exc:
                if exc.status != 409 or attempt + 1 == CONFLICT_ATTEMPTS:
                    raise

    def _save_baseline(self) -> None:
        if self.baseline_file is None:
            return
        data = json.dumps(
            {"profile": self.name, "baseline": {scope: s.to_json() for scope, s in self.baseline.items()}}
        )
        tmp = self.baseline_file.with_name(f".{self.baseline_file.name}.tmp")
        try:
            with open(tmp, "w") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.baseline_file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("cannot keep the profile baseline (%s): a restart may count blocks twice", exc)
