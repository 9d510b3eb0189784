"""The CI-sized fuzz run: every input surface, a few dozen generated inputs each (``scripts/fuzz``
runs the same surfaces at any size). A failure is a broken contract: hypothesis shrinks the input
and prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from tests.fuzz.harness import CI, Notes
from tests.fuzz.surfaces import SURFACES

EXAMPLES = {  # per surface, scaled to what one input costs (about 35 s for all on a quiet 2-core machine)
    "inject": 200,
    "webhook": 450,  # 9 of them big bodies (one in BIG_SHARE), each of the nine kinds once
    "config": 200,
    "annotations": 750,
    "sidecar-flags": 750,
    "state-file": 500,
    "advise-blocks": 400,
    "fifo": 750,
}


def test_every_surface_has_a_ci_size() -> None:
    assert set(EXAMPLES) == set(SURFACES)


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surface_keeps_its_contract(name: str, tmp_path: Path) -> None:
    surface = SURFACES[name]
    notes: Notes = {}
    with surface.session(tmp_path, notes) as check:

        @settings(CI, max_examples=EXAMPLES[name])
        @given(surface.inputs)
        def contract(value: Any) -> None:
            check(value)

        contract()
