"""Type-confusing mutations of JSON-like documents, as hypothesis strategies.

A mutation picks a place anywhere in a real document (a key's value, a list item, the document
itself) and puts something of the wrong kind there: a string where an object belongs, a number where
a list does, ``null``, a boolean, an integer too large for a float, NaN, a deep nest, a long string;
or it deletes a field, or adds an unknown one. One to three mutations per document: what a person
mistyping a manifest, or someone crafting one, produces.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

Path = tuple[str | int, ...]

HUGE_INT = 10**400  # larger than any float: float() raises OverflowError
DEEP = 2000  # deeper than Python's recursion limit


def nested(depth: int, leaf: Any = 1) -> Any:
    """``[[[...leaf...]]]``, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


NASTY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "true",
        "1",
        "-1",
        "0x10",
        "1e309",
        "nan",
        "NaN",
        "inf",
        "-0",
        "☃",
        "\u202e",
        "a" * 5000,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, HUGE_INT]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    NASTY_STRINGS,
)
HOSTILE = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    st.sampled_from([20, 100]).map(nested),
    st.sampled_from([20, 100]).map(lambda depth: nested(depth, {"a": 1})),
)
"""Nests deeper than the recursion limit are fed by each surface's own raw inputs: parsing them is
slow (PyYAML's scanner is quadratic in the depth), so here they would crowd out everything else."""


def paths(document: Any) -> Iterator[Path]:
    """Every place in ``document`` (the root first), iteratively."""
    stack: list[tuple[Any, Path]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        yield path
        if len(path) > 40:  # inside a nest a mutation made: deep enough
            continue
        if isinstance(value, dict):
            stack.extend((item, (*path, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))


def _replace(document: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    holder = document
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return document


def _at(document: Any, path: Path) -> Any:
    for key in path:
        document = document[key]
    return document


@st.composite
def mutation(draw: st.DrawFn, document: Any) -> Any:
    """``document`` (a copy) with one thing of the wrong kind somewhere."""
    place = draw(st.sampled_from(list(paths(document))))  # paths() is deterministic: no need to sort
    current = _at(document, place)
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "wrap", "stringify"]))
    if action == "delete" and place:
        holder = _at(document, place[:-1])
        del holder[place[-1]]
        return document
    if action == "add" and isinstance(current, dict):
        current[draw(st.text(max_size=8))] = draw(HOSTILE)
        return document
    if action == "wrap":
        return _replace(document, place, [current])
    if action == "stringify":  # what a YAML author gets by quoting a block
        text = (
            f"<{type(current).__name__} of {len(current)}>"
            if isinstance(current, dict | list)
            else repr(current)
        )
        return _replace(document, place, text[:200])
    return _replace(document, place, draw(HOSTILE))


@st.composite
def mutated(draw: st.DrawFn, bases: st.SearchStrategy[Any], most: int = 3) -> Any:
    """A document from ``bases``, mutated one to ``most`` times."""
    document = copy.deepcopy(draw(bases))
    for _ in range(draw(st.integers(min_value=1, max_value=most))):
        document = draw(mutation(document))
    return document
