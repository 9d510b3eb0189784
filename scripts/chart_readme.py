#!/usr/bin/env python3
"""Write the values table of charts/expiry/README.md from the ``# --`` comments of values.yaml.

The helm-docs convention (helm-docs itself is a Go binary, not installable from PyPI here): a comment
starting with ``# --`` documents the key right below it, further ``#`` lines continue it, and the key's
default is what values.yaml sets. The table goes between the README's BEGIN/END markers; the rest of the
README is hand-written.

    scripts/chart_readme.py            rewrite the README
    scripts/chart_readme.py --check    exit 1 if the README is not what values.yaml says (for tests and CI)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "expiry"
BEGIN = "<!-- BEGIN VALUES (scripts/chart_readme.py writes this table from values.yaml) -->"
END = "<!-- END VALUES -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(\s|$)")


@dataclass(frozen=True)
class Value:
    path: str
    description: str
    default: Any


def documented_keys(text: str) -> dict[str, str]:
    """Dotted key path -> its ``# --`` description, in file order."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    description: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            description = [stripped[4:].strip()]
        elif stripped.startswith("#"):
            if description is not None:
                description.append(stripped[1:].strip())
        elif match := KEY.match(line):
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            if description is not None:
                found[".".join(key for _, key in stack)] = " ".join(description).strip()
            description = None
        elif not stripped:
            description = None
    return found


def lookup(values: Any, path: str) -> Any:
    for key in path.split("."):
        values = values[key]
    return values


def documented_values(values_file: Path) -> list[Value]:
    text = values_file.read_text()
    values = yaml.safe_load(text)
    return [Value(path, text, lookup(values, path)) for path, text in documented_keys(text).items()]


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(values: list[Value]) -> str:
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for value in values:
        default = json.dumps(value.default, separators=(", ", ": "))
        rows.append(
            f"| `{value.path}` | {type_name(value.default)} | `{cell(default)}` | {cell(value.description)} |"
        )
    return "\n".join(rows) + "\n"


def render(readme: str, values: list[Value]) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"the README lacks the markers {BEGIN!r} and {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(values)}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory (default: charts/expiry)")
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args(argv)
    readme_path: Path = args.chart / "README.md"
    current = readme_path.read_text()
    wanted = render(current, documented_values(args.chart / "values.yaml"))
    if args.check:
        if current != wanted:
            print(f"{readme_path} is out of date: run scripts/chart_readme.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
