"""The one rule for ``expiry.io/enabled``: which values opt a pod in, which opt it out, which are errors.

The same rule holds in three places: the chart's CEL ``matchConditions`` (which pods reach the webhook),
admission (inject, leave alone, or deny), and the unprotected-pod report. The usual boolean spellings
are accepted in lower, title and upper case, so a manifest templated by a tool that writes ``True``
or ``yes`` is protected rather than silently skipped; anything else (a typo such as ``ture``, or
``" true"`` with a space) is denied at admission with the accepted values named, never ignored.
The chart sends every pod that carries the annotation with a value outside ``OFF`` to the webhook,
so a misspelling reaches the operator and is refused there.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from expiry import names


def _cased(*words: str) -> tuple[str, ...]:
    return tuple(spelling for word in words for spelling in (word, word.title(), word.upper()) if spelling)


ON: tuple[str, ...] = (*_cased("true", "yes", "on"), "1")
OFF: tuple[str, ...] = (*_cased("false", "no", "off"), "0")


class OptIn(enum.Enum):
    ABSENT = "absent"
    ON = "on"
    OFF = "off"
    INVALID = "invalid"


def opt_in(annotations: Mapping[str, str]) -> OptIn:
    value = annotations.get(names.ENABLED_ANNOTATION)
    if value is None:
        return OptIn.ABSENT
    if value in ON:
        return OptIn.ON
    if value in OFF:
        return OptIn.OFF
    return OptIn.INVALID


def is_enabled(annotations: Mapping[str, str]) -> bool:
    return opt_in(annotations) is OptIn.ON


def wants_expiry(annotations: Mapping[str, str]) -> bool:
    """Opted in, or tried to (a value that is no opt-out): the pods the webhook must see."""
    return opt_in(annotations) in (OptIn.ON, OptIn.INVALID)


def invalid_message(value: str) -> str:
    return (
        f"annotation {names.ENABLED_ANNOTATION}: {value!r} is not accepted; "
        f"expected {' | '.join(ON)} (opt in) or {' | '.join(OFF)} (opt out)"
    )
