#!/usr/bin/env python3
"""Write docs/settings.md: every flag of ``expiry-sidecar serve``, with the annotation, chart value and
operator config key that set it, its default and when the operator passes it.

The flags and their defaults come from the sidecar's own argument parser; what sets each one is the
``ROWS`` table below, which must name every flag (a flag without a row is an error, so a new flag
cannot ship undocumented). tests/operator/test_settings_table.py holds the table to the code: each
annotation is one options.py accepts, each config key one settings.py reads, each chart value one
values.yaml has, and each annotation really changes the flag in the injected pod.

    scripts/settings_doc.py            rewrite docs/settings.md
    scripts/settings_doc.py --check    exit 1 if docs/settings.md is not what the code says
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from expiry_sidecar import cli

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "settings.md"
VALUES = ROOT / "charts" / "expiry" / "values.yaml"


@dataclass(frozen=True)
class Row:
    flag: str
    passed: str
    """When the operator passes it."""
    annotation: str = ""
    example: str = ""
    """An annotation value that is not the default (the test injects a pod with it)."""
    chart: str = ""
    config: str = ""
    why_not: str = ""
    """Why there is no annotation or chart value, when there is none."""


ROWS = (
    Row(
        "--kill-signal",
        "when set (not empty)",
        "expiry.io/kill-signal",
        "TERM",
        "sidecar.killSignal",
        "sidecar.killSignal",
    ),
    Row(
        "--escalate-after",
        "always",
        "expiry.io/escalate-after",
        "30",
        "sidecar.escalateAfter",
        "sidecar.escalateAfter",
    ),
    Row("--mode", "when not `enforce`", "expiry.io/mode", "observe", "sidecar.mode", "sidecar.mode"),
    Row(
        "--deadlines",
        "when not `requested`",
        "expiry.io/deadlines",
        "adaptive",
        "sidecar.deadlines",
        "sidecar.deadlines",
    ),
    Row(
        "--adaptive-factor",
        "when not the default, whatever `--deadlines` is (the advisor and the over-adaptive count use it)",
        "expiry.io/adaptive-factor",
        "2.5",
        "sidecar.adaptiveFactor",
        "sidecar.adaptiveFactor",
    ),
    Row(
        "--adaptive-min-samples",
        "when not the default, whatever `--deadlines` is",
        "expiry.io/adaptive-min-samples",
        "50",
        "sidecar.adaptiveMinSamples",
        "sidecar.adaptiveMinSamples",
    ),
    Row(
        "--adaptive-floor",
        "when not the default, whatever `--deadlines` is",
        "expiry.io/adaptive-floor",
        "120",
        "sidecar.adaptiveFloor",
        "sidecar.adaptiveFloor",
    ),
    Row(
        "--false-kill-budget",
        "when not 3",
        "expiry.io/false-kill-budget",
        "5",
        "sidecar.falseKillBudget",
        "sidecar.falseKillBudget",
    ),
    Row(
        "--deadline-profile",
        "when profiles are on and the pod belongs to a workload: `<kind>-<name>` of that workload",
        why_not="named by the operator from the pod's workload; on per pod with `expiry.io/deadline-profile`,"
        " per cluster with `deadlineProfiles.enabled` (config `sidecar.deadlineProfile`)",
    ),
    Row(
        "--profile-owner",
        "with `--deadline-profile`, when the workload's uid is known",
        why_not="the workload that owns the profile (its garbage collection), read from the pod",
    ),
    Row("--events", "when true", "expiry.io/events", "no", "sidecar.events", "sidecar.events"),
    Row(
        "--pod-condition",
        "when true",
        "expiry.io/pod-condition",
        "Yes",
        "podCondition.enabled",
        "sidecar.podCondition",
    ),
    Row(
        "--scope-metrics",
        "when true",
        "expiry.io/scope-metrics",
        "true",
        "sidecar.scopeMetrics",
        "sidecar.scopeMetrics",
    ),
    Row(
        "--stack-dumps",
        "when not `off`: the directory /var/run/expiry/dumps",
        "expiry.io/stack-dumps",
        "client",
        "sidecar.stackDumps",
        "sidecar.stackDumps",
    ),
    Row(
        "--metrics-port",
        "always",
        chart="sidecar.metricsPort",
        config="sidecar.metricsPort",
        why_not="no annotation: one port for every pod, so the PodMonitor and network policies can name it",
    ),
    Row(
        "--exit-when-alone",
        "when the sidecar is a regular container (not native) of a pod that does not restart",
        why_not="follows from `expiry.io/native-sidecar` (`sidecar.nativeSidecar`) and restartPolicy",
    ),
    Row(
        "--fifo",
        "always: /var/run/expiry/timer.fifo",
        why_not="fixed: the client finds it through `TORCHELASTIC_TIMER_FILE`, which the operator sets",
    ),
    Row(
        "--state-file",
        "always: /var/run/expiry/sidecar-state.json",
        why_not="fixed: on the pod's shared volume, where a restarted sidecar finds it",
    ),
    Row(
        "--metrics-host",
        "never",
        why_not="the probes and Prometheus reach the pod's IP; only the default (all addresses) serves them",
    ),
    Row(
        "--alone-grace",
        "never",
        why_not="the default covers torchrun's gap between a killed worker and its successor",
    ),
    Row(
        "--log-format",
        "never",
        why_not="JSON lines are what log pipelines parse; `text` is for `expiry-sidecar run` at a desk",
    ),
    Row(
        "--log-level",
        "never",
        why_not="`info` logs each kill and each API outage once; `debug` is for working on the sidecar",
    ),
)


class Missing(Exception):
    """The table and the sidecar's flags disagree."""


def serve_flags() -> dict[str, str]:
    """Flag -> its default, as ``expiry-sidecar serve --help`` has them."""
    top = cli.parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    flags = {}
    for action in serve._actions:
        long = [name for name in action.option_strings if name.startswith("--")]
        if not long or long[0] == "--help":
            continue
        default = action.default
        if isinstance(action, argparse._StoreTrueAction):
            default = False
        flags[long[0]] = _shown(default)
    return flags


def _shown(value: object) -> str:
    if value is None or value == "":
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def chart_default(path: str) -> str:
    node: object = yaml.safe_load(VALUES.read_text())
    for key in path.split("."):
        assert isinstance(node, dict), path
        node = node[key]
    return _shown(node)


def table(flags: dict[str, str], rows: tuple[Row, ...] = ROWS) -> str:
    by_flag = {row.flag: row for row in rows}
    missing = sorted(set(flags) - set(by_flag))
    if missing:
        raise Missing(f"sidecar flag(s) {', '.join(missing)} have no row in scripts/settings_doc.py")
    gone = sorted(set(by_flag) - set(flags))
    if gone:
        raise Missing(f"scripts/settings_doc.py names flag(s) the sidecar lacks: {', '.join(gone)}")
    lines = [
        "| sidecar flag | annotation | chart value | operator config key | sidecar default | chart default"
        " | passed by the operator |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:

        def cell(text: str) -> str:
            return f"`{text}`" if text else "—"

        passed = row.passed + (f" ({row.why_not})" if row.why_not else "")
        lines.append(
            f"| `{row.flag}` | {cell(row.annotation)} | {cell(row.chart)} | {cell(row.config)}"
            f" | {flags[row.flag]} | {chart_default(row.chart) if row.chart else '—'} | {passed} |"
        )
    return "\n".join(lines) + "\n"


HEAD = """# Settings

<!-- Generated by scripts/settings_doc.py from the sidecar's flags and the operator's options. -->

Every setting of the injected sidecar, and the three places that set it: a pod's `expiry.io/`
annotation (for that pod), the chart value (the default for every pod; the chart writes it into the
operator's config file under the config key), and the sidecar's own flag, which the operator passes.
A flag is passed only when it differs from the sidecar's own default, so a sidecar image older than
the flag still starts ([install.md](install.md#version-skew-what-works-with-what)).

Spelling rules, the same everywhere:

- booleans: `true`, `yes`, `on`, `1` and `false`, `no`, `off`, `0`, in lower, title or upper case (as
  for `expiry.io/enabled`);
- numbers: `2.5` or `"2.5"` (`helm --set sidecar.adaptiveFactor=2.5` passes a string);
- signals: `SIGTERM`, `TERM` or `term`.

"""


def page() -> str:
    return HEAD + table(serve_flags())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args()
    try:
        text = page()
    except Missing as exc:
        print(f"settings_doc: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run scripts/settings_doc.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
