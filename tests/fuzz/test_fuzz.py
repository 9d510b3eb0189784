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

EXAMPLES = {  # per surface, scaled to what one input costs (about 40 s for all on a loaded 2-core machine)
    "inject": 40,
    "webhook": 80,
    "config": 40,
    "annotations": 150,
    "sidecar-flags": 150,
    "state-file": 100,
    "advise-blocks": 80,
    "fifo": 150,
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
