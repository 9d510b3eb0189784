"""Kubernetes resource quantities ("10m", "64Mi", "1.5G", "2e3"): parsing and comparison.

Written out here rather than imported from the ``kubernetes`` package, whose import pulls in the
whole generated API client for one small function.
"""

import functools
import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
ACCEPTED = "a Kubernetes quantity such as 10m, 0.5, 64Mi or 1G"


class QuantityError(ValueError):
    pass


@functools.lru_cache(maxsize=1024)  # every admission parses the same few ("10m", "64Mi", the pods' limits)
def parse_quantity(text: str) -> Decimal:
    """The quantity's value in base units (cores, bytes); raises QuantityError naming the text."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise QuantityError(f"{text!r} is not {ACCEPTED}")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number + (exponent or ""))
    except InvalidOperation as e:  # pragma: no cover - the regex admits only valid numbers
        raise QuantityError(f"{text!r} is not {ACCEPTED}") from e
    if value < 0:
        raise QuantityError(f"{text!r} is negative; expected {ACCEPTED}")
    if suffix in _BINARY:
        return value * (Decimal(1024) ** _BINARY[suffix])
    return value.scaleb(_DECIMAL[suffix or ""])
