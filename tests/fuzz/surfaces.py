"""Every input surface, by name, in the order ``scripts/fuzz`` runs them."""

from __future__ import annotations

from tests.fuzz import operator_surfaces, sidecar_surfaces
from tests.fuzz.harness import Surface

SURFACES: dict[str, Surface] = {
    surface.name: surface for surface in (*operator_surfaces.SURFACES, *sidecar_surfaces.SURFACES)
}
