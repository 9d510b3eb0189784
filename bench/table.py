"""Rows built from numbers, and the table they print as (Markdown, so the page can quote it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from bench.context import Row


def compare(
    figure: str,
    unit: str,
    values: Mapping[str, float | str],
    fmt: Callable[[float], str],
    *,
    higher_is_better: bool = False,
    goal: str = "",
    met: Callable[[float], bool] | None = None,
    min_ratio: float | None = None,
) -> Row:
    """A row from each peer's number (or a string saying why there is none).

    The ratio is how many times better expiry does: torch / expiry for costs, the inverse for rates.
    """
    results = {name: value if isinstance(value, str) else fmt(value) for name, value in values.items()}
    mine, theirs = values.get("expiry"), values.get("torch")
    ratio, times = "", None
    if isinstance(mine, float | int) and isinstance(theirs, float | int) and mine > 0 and theirs > 0:
        times = mine / theirs if higher_is_better else theirs / mine
        ratio = f"{times:.3g}x" if times < 1000 else f"{times:,.0f}x"
    elif not higher_is_better and mine == 0 and isinstance(theirs, float | int) and theirs > 0:
        ratio = "∞"
    verdict = met(mine) if met is not None and isinstance(mine, float | int) else None
    if min_ratio is not None and times is not None:
        verdict = times >= min_ratio
    return Row(figure, unit, results, ratio, goal, verdict)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 1 else f"{seconds * 1e3:,.0f}"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.3g}" if seconds < 1e-3 else f"{seconds * 1e6:,.0f}"


def count(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def mb(value: float) -> str:
    return f"{value / 2**20:.1f}"


def render(rows: Sequence[Row], peers: Sequence[str]) -> str:
    header = ["figure", "unit", *peers, "expiry better by", "goal", "met"]
    lines = [_line(header), _line(["---"] * len(header))]
    for row in rows:
        verdict = "" if row.met is None else ("yes" if row.met else "**NO**")
        cells = [row.figure, row.unit, *(row.results.get(p, "") for p in peers), row.ratio, row.goal, verdict]
        lines.append(_line(cells))
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
