"""Text PyYAML read from a JSON escape, made whole: the operator's manifests and config file.

JSON writes a character beyond U+FFFF as a pair of escapes (``"\\ud83d\\ude00"`` for 😀; ``json.dumps``
does so by default), and JSON is YAML, so PyYAML reads such files, but it reads the pair as two lone
surrogates instead of one character. Nothing downstream can write those out again (orjson, which
also refuses them in the webhook's bodies, raises ``TypeError``), so a manifest with an emoji in an
annotation ended ``inject`` in a traceback. ``joined`` puts each pair back together and refuses an
unpaired surrogate, naming where it is.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


class LoneSurrogate(ValueError):
    """A string holds half of a UTF-16 surrogate pair: not a character."""


def joined(document: Any) -> Any:
    """``document`` (parsed YAML) with every surrogate pair in its strings, keys included, made the
    character it stands for; in place where it can be. Raises LoneSurrogate naming the field."""
    if isinstance(document, str):
        return _text(document, "the document")
    stack: list[tuple[Any, str]] = [(document, "")]
    seen: set[int] = set()  # YAML aliases can share a node, or make one contain itself
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict | list) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            items = []
            for key, value in node.items():
                name = _text(key, where or "a key") if isinstance(key, str) else key
                path = f"{where}.{name}" if where else str(name)
                items.append((name, _text(value, path) if isinstance(value, str) else value))
                stack.append((items[-1][1], path))
            if any(new is not old for (new, _), old in zip(items, node, strict=True)):
                node.clear()  # a key changed: the same order, the new keys
            node.update(items)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                path = f"{where}[{index}]"
                if isinstance(value, str):
                    node[index] = _text(value, path)
                stack.append((node[index], path))
    return document


def _text(value: str, where: str) -> str:
    found = _SURROGATE.search(value)
    if found is None:
        return value
    try:
        return value.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise LoneSurrogate(
            f"{where}: a lone UTF-16 surrogate (\\u{ord(found.group()):04x}), not a character"
        ) from None
