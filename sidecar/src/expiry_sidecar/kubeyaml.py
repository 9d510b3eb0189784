"""The part of YAML that kubeconfig files use, for the kubeconfig of :mod:`.kubecreds` (the sidecar
stays free of a YAML library: the ``kubernetes`` package and PyYAML cost every training pod ~24 MB).

Read: JSON; block mappings and sequences (``key: value``, ``- item``, a mapping that starts on a
sequence item's line); flow collections (``[{name: a, cluster: {server: 'https://x'}}]``); plain,
single- and double-quoted scalars; ``true``/``false``/``null``; comments; a leading ``---``. Anything
else (anchors, tags, block scalars ``|`` ``>``, multi-line flow) is a :class:`YamlError` naming the
line, never a wrong answer: kubectl, kind and client-go write nothing else into a kubeconfig. PURE.
"""

from __future__ import annotations

import json
import re
from typing import Any

_UNSUPPORTED = ("&", "*", "!", "|", ">", "%", "@", "`")
_PLAIN_SCALARS: dict[str, Any] = {"true": True, "false": False, "null": None, "~": None}


class YamlError(ValueError):
    """Not the YAML subset a kubeconfig uses."""


def load(text: str) -> Any:
    """The document in ``text``, as JSON would give it (every non-keyword scalar is a string)."""
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError:
            pass
    lines: list[tuple[int, int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        content = _strip_comment(raw).rstrip()
        if not content.strip() or content.strip() == "---":
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlError(f"line {number}: a tab in the indentation")
        lines.append((number, len(content) - len(content.lstrip()), content.strip()))
    if not lines:
        return None
    value, end = _node(lines, 0, lines[0][1])
    if end != len(lines):
        raise YamlError(f"line {lines[end][0]}: unexpected indentation")
    return value


def _node(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][2] == "-" or lines[i][2].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][1] == indent and (lines[i][2] == "-" or lines[i][2].startswith("- ")):
        number, _, content = lines[i]
        rest = content[1:].lstrip()
        if not rest:
            if i + 1 < len(lines) and lines[i + 1][1] > indent:
                item, i = _node(lines, i + 1, lines[i + 1][1])
            else:
                item, i = None, i + 1
        elif _key_split(rest) is not None:
            # "- key: value" opens a mapping whose further keys are indented like "key"
            inner = indent + len(content) - len(rest)
            lines[i] = (number, inner, rest)
            item, i = _mapping(lines, i, inner)
        else:
            item, i = _scalar(rest, number), i + 1
        items.append(item)
    return items, i


def _mapping(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        split = _key_split(content)
        if split is None:
            raise YamlError(f"line {number}: expected 'key: value', got {content!r}")
        key, rest = split
        i += 1
        if rest:
            mapping[key] = _scalar(rest, number)
        elif i < len(lines) and (
            lines[i][1] > indent or (lines[i][1] == indent and lines[i][2].startswith("- "))
        ):
            mapping[key], i = _node(lines, i, lines[i][1])
        else:
            mapping[key] = None
    return mapping, i


_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^'"\s#\[\]{},][^:]*?)\s*:(?:\s+(.*))?$""")


def _key_split(content: str) -> tuple[str, str] | None:
    match = _KEY.match(content)
    if match is None:
        return None
    key = match.group(1)
    return (_unquote(key, 0) if key[0] in "'\"" else key), (match.group(2) or "").strip()


def _scalar(text: str, number: int) -> Any:
    if text[0] in "[{":
        value, end = _flow(text, 0, number)
        if text[end:].strip():
            raise YamlError(f"line {number}: unexpected {text[end:].strip()!r} after a flow collection")
        return value
    if text[0] in "'\"":
        return _unquote(text, number)
    if text[0] in _UNSUPPORTED:
        raise YamlError(f"line {number}: {text[0]!r} (anchors, tags, block scalars) is not supported")
    return _PLAIN_SCALARS.get(text, text)


def _unquote(text: str, number: int) -> str:
    if text[0] == '"':
        try:
            value: str = json.loads(text)
        except ValueError:
            raise YamlError(f"line {number}: a double-quoted string JSON cannot read: {text}") from None
        return value
    if len(text) < 2 or not text.endswith("'"):
        raise YamlError(f"line {number}: an unterminated quoted string: {text}")
    return text[1:-1].replace("''", "'")


def _flow(text: str, at: int, number: int) -> tuple[Any, int]:
    """A flow collection or scalar starting at ``at``; the value and where it ends."""
    at = _skip_spaces(text, at)
    if at >= len(text):
        raise YamlError(f"line {number}: a flow collection ends early (multi-line ones are not supported)")
    opening = text[at]
    if opening in "[{":
        closing = "]" if opening == "[" else "}"
        items: list[Any] = []
        mapping: dict[str, Any] = {}
        at = _skip_spaces(text, at + 1)
        while at < len(text) and text[at] != closing:
            if opening == "{":
                key, at = _flow(text, at, number)
                at = _skip_spaces(text, at)
                if at >= len(text) or text[at] != ":":
                    raise YamlError(f"line {number}: expected ':' after {key!r} in a flow mapping")
                mapping[str(key)], at = _flow(text, at + 1, number)
            else:
                item, at = _flow(text, at, number)
                items.append(item)
            at = _skip_spaces(text, at)
            if at < len(text) and text[at] == ",":
                at = _skip_spaces(text, at + 1)
        if at >= len(text):
            raise YamlError(f"line {number}: {opening!r} is not closed on its line")
        return (mapping if opening == "{" else items), at + 1
    if opening in "'\"":
        end = _quoted_end(text, at, number)
        return _unquote(text[at:end], number), end
    match = re.compile(r"(?:[^,\[\]{}:]|:(?!\s|$|[,\]}]))+").match(text, at)
    if match is None:
        raise YamlError(f"line {number}: unexpected {text[at]!r} in a flow collection")
    return _scalar(match.group().strip(), number), match.end()


def _quoted_end(text: str, at: int, number: int) -> int:
    quote, i = text[at], at + 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1 : i + 2] == "'":
                i += 2
                continue
            return i + 1
        i += 1
    raise YamlError(f"line {number}: an unterminated quoted string")


def _skip_spaces(text: str, at: int) -> int:
    while at < len(text) and text[at] == " ":
        at += 1
    return at


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes or a word stays)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line
